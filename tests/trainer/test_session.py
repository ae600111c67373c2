"""``training_complete`` ends a session with the lineage's final train and val losses."""

from __future__ import annotations

import json
from pathlib import Path

from trainer.records.events import EventLog
from trainer.records.state import CompletedFile, FileProgress, TrainingState
from trainer.session import Session


def finished(path: Path, state: TrainingState) -> dict:
    Session(state, events=EventLog(path)).finish()
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert record["event"] == "training_complete"
    return record


def done(name: str, end: int, mean_loss: float) -> CompletedFile:
    return CompletedFile(
        name=name,
        sha256=name * 8,
        start_step=end - 10,
        end_step=end,
        n_sequences=40,
        tokens=4000,
        mean_loss=mean_loss,
        duration_s=1.0,
    )


def test_the_last_file_and_the_last_eval_give_the_final_losses(tmp_path: Path) -> None:
    state = TrainingState(global_step=20)
    state.files_completed = [done("a", 10, 3.5), done("b", 20, 2.8765432)]
    state.eval_history = [
        {"step": 10, "val_loss": 3.6, "train_loss": 3.5, "sets": {}},
        {"step": 20, "val_loss": 2.9123456789, "train_loss": 2.9, "sets": {}},
    ]
    record = finished(tmp_path / "events.jsonl", state)
    assert record["train_loss"] == 2.876543
    assert (record["val_loss"], record["val_step"]) == (2.912346, 20)


def test_a_file_in_progress_gives_its_mean_and_no_eval_gives_null(tmp_path: Path) -> None:
    state = TrainingState(global_step=14)
    state.files_completed = [done("a", 10, 3.5)]
    state.current_file = FileProgress(
        name="b",
        sha256="b" * 64,
        n_sequences=40,
        steps_for_file=10,
        start_step=10,
        target_step=20,
        loss_sum=12.0,
        loss_steps=4,
    )
    record = finished(tmp_path / "events.jsonl", state)
    assert record["train_loss"] == 3.0
    assert (record["val_loss"], record["val_step"]) == (None, None)


def test_nothing_trained_yet_is_null(tmp_path: Path) -> None:
    state = TrainingState()
    state.eval_history = [{"step": 0, "val_loss": None, "train_loss": None, "sets": {}}]
    record = finished(tmp_path / "events.jsonl", state)
    assert (record["train_loss"], record["val_loss"], record["val_step"]) == (None, None, None)
