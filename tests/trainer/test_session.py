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


def progress_line(step: int) -> str:
    """A ``progress`` event as the trainer writes it (written here without an fsync each)."""
    record = {
        "event": "progress",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "step": step,
        "file": "b",
        "start_step": 10,
        "target_step": 10**9,
        "loss": 2.345678,
        "lr": 0.0003,
        "tokens_per_s": 12345.6,
        "tokens_processed": 1000 * step,
    }
    return json.dumps(record, separators=(",", ":")) + "\n"


def completions(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r["event"] == "file_complete"]


def test_a_long_file_s_progress_events_do_not_hide_the_last_completion(tmp_path: Path) -> None:
    """More progress events since the last file_complete than reconcile reads back (8 MiB)
    must not make it write that file_complete a second time."""
    path = tmp_path / "events.jsonl"
    state = TrainingState(global_step=50_000)
    state.files_completed = [done("a", 10, 3.5)]
    events = EventLog(path)
    Session(state, events=events).file_complete(state.files_completed[0])
    with path.open("a") as handle:
        handle.writelines(progress_line(step) for step in range(11, 50_000))
    assert path.stat().st_size > 9 * 2**20
    Session(state, events=events).reconcile_file_complete()
    assert len(completions(path)) == 1


def test_a_completion_a_crash_cut_off_is_still_written(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    state = TrainingState(global_step=10)
    state.files_completed = [done("a", 10, 3.5)]
    with path.open("a") as handle:
        handle.writelines(progress_line(step) for step in range(1, 11))  # up to its end
    Session(state, events=EventLog(path)).reconcile_file_complete()
    assert [(r["file"], r["end_step"]) for r in completions(path)] == [("a", 10)]


def test_another_lineage_s_progress_proves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    events = EventLog(path)
    with path.open("a") as handle:
        handle.writelines(progress_line(step) for step in range(100, 200))
    events.emit("lineage_retired", kept_in="checkpoints/retired/x")
    state = TrainingState(global_step=10)
    state.files_completed = [done("a", 10, 3.5)]
    Session(state, events=events).reconcile_file_complete()
    assert [(r["file"], r["end_step"]) for r in completions(path)] == [("a", 10)]
