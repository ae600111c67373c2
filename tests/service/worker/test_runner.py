"""``traind train`` semantics, in-process: skip completed files, finish the interrupted
one first, keep going past a rejected file."""

import json
import logging
import shutil
from types import SimpleNamespace

import pytest

from service.signals import StopFlag
from service.worker.runner import EXIT_OK, EXIT_REJECTED, EXIT_USAGE, run_summary, train_files
from tests.service.worker.tiny_settings import tiny_settings
from trainer.checkpoint import latest_checkpoint


class StopAfter(StopFlag):
    """Asks to stop once ``checks`` step-boundary checks have passed."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.left = checks

    def __call__(self) -> bool:
        self.left -= 1
        if self.left < 0 and self.signum is None:
            self.signum = 15
        return super().__call__()


@pytest.fixture
def settings(tmp_path):
    return tiny_settings(
        tmp_path, train={"checkpoint_interval": 3, "warmup_steps": 2, "log_interval": 5}
    )


def completed(settings):
    state = latest_checkpoint(settings.run_paths().checkpoints).training_state
    return [(f["name"], f["end_step"] - f["start_step"]) for f in state["files_completed"]]


def events(settings, kind):
    path = settings.run_paths().events
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == kind]


def test_completed_files_and_repeated_content_are_skipped(tmp_path, drops, settings, caplog):
    a, b, c = drops
    assert train_files(settings, [a, b], stop=StopFlag()) == EXIT_OK
    first = completed(settings)
    copy = tmp_path / "renamed-a.jsonl"
    shutil.copy(a, copy)
    caplog.set_level(logging.INFO)
    assert train_files(settings, [a, b, copy, c], stop=StopFlag()) == EXIT_OK
    assert "skipping" in caplog.text and "already trained" in caplog.text
    assert completed(settings) == [*first, ("c.jsonl", completed(settings)[2][1])]
    assert len(events(settings, "file_complete")) == 3
    # The end-of-run summary names gold and the export (no eval set here: no gold).
    step = latest_checkpoint(settings.run_paths().checkpoints).training_state["global_step"]
    export = settings.run_paths().checkpoints / "export"
    assert (
        f"done: global step {step}; 3 files in the lineage; no gold yet; "
        f"export {export} at step {step}"
    ) in caplog.text


def test_interrupted_file_is_finished_first(drops, settings, caplog):
    a, b, c = drops
    # One check before the file starts, then one before each step: 3 steps are taken.
    assert train_files(settings, [a, b], stop=StopAfter(4)) == 128 + 15
    state = latest_checkpoint(settings.run_paths().checkpoints).training_state
    assert state["current_file"]["name"] == "a.jsonl" and state["global_step"] == 3
    # Leaving the interrupted file out is refused with the way forward.
    assert train_files(settings, [b], stop=StopFlag()) == EXIT_USAGE
    assert "in the middle of a.jsonl" in caplog.text and "pass that file" in caplog.text
    # Given in any order, it is finished before anything else starts.
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert train_files(settings, [c, a], stop=StopFlag()) == EXIT_OK
    assert "a.jsonl: resuming at step 3" in caplog.text
    assert [name for name, _ in completed(settings)] == ["a.jsonl", "c.jsonl"]


def test_a_rejected_file_is_reported_and_the_rest_train(tmp_path, drops, settings, caplog):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 7}\n')
    assert train_files(settings, [bad, drops[0]], stop=StopFlag()) == EXIT_REJECTED
    assert "bad.jsonl line 2" in caplog.text
    assert [name for name, _ in completed(settings)] == ["a.jsonl"]
    rejected = events(settings, "file_rejected")
    assert len(rejected) == 1 and "line 2" in rejected[0]["reason"]
    assert bad.exists()  # never deleted


def test_init_from_onto_an_existing_lineage_is_refused(tmp_path, drops, settings, caplog):
    assert train_files(settings, [drops[0]], stop=StopFlag()) == EXIT_OK
    code = train_files(
        settings, [drops[1]], init_from=settings.run_paths().checkpoints, stop=StopFlag()
    )
    assert code == EXIT_USAGE
    assert "already holds a lineage" in caplog.text


def test_a_world_size_without_torchrun_is_refused_clearly(drops, settings, caplog, monkeypatch):
    """WORLD_SIZE set by hand (no torchrun, so no rank or rendezvous): exit 2 saying how
    to train with several processes, instead of a wait for a group that never forms."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert train_files(settings, [drops[0]], stop=StopFlag()) == EXIT_USAGE
    assert "WORLD_SIZE=2 but RANK, MASTER_ADDR, MASTER_PORT not set" in caplog.text
    assert "--nproc-per-node" in caplog.text


def test_the_summary_names_gold_and_says_when_the_export_is_off_or_not_yet(tmp_path, settings):
    gold = {"step": 40, "val_loss": 2.34567, "train_loss": 2.2}
    state = SimpleNamespace(global_step=52, files_completed=[{}, {}], gold=gold)
    off = tiny_settings(tmp_path, export={"enabled": False})
    assert run_summary(off, state) == (
        "global step 52; 2 files in the lineage; gold at step 40 (val loss 2.3457); "
        "export off (export.enabled = false)"
    )
    assert run_summary(settings, state).endswith("; no export yet (export.from = 'latest')")
