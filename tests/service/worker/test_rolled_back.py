"""The files a rollback to gold undid, in the worker: marked rolled_back right after it
serves the rollback, or at the next start when a crash came between; never marked again
once trained again; marked again when a second rollback undoes them again. In-process,
with the tiny test model on real files."""

from __future__ import annotations

import json

import pytest

from service.ledger import FileState
from service.signals import StopFlag
from service.worker import requests
from service.worker.control import Steering
from service.worker.process import Worker
from service.worker.reconcile import reconcile
from tests.corpus import make_drops
from tests.service.worker.tiny_settings import record_drop, tiny_settings


@pytest.fixture
def settings(tmp_path):
    # No evaluation (nothing held out, no sets): gold is written by the test, where it wants.
    return tiny_settings(
        tmp_path,
        train={"epochs_per_file": 0.5, "checkpoint_interval": 1000, "warmup_steps": 2},
        eval={"interval": 100_000, "holdout_fraction": 0.0},
    )


def start(settings) -> Worker:
    """A worker as ``Worker.run`` starts one: the lineage opened, the ledger reconciled."""
    worker = Worker(settings, stop=StopFlag())
    worker.trainer = worker.open_lineage()
    worker.steering = Steering(worker.ledger, stop=worker.stop)
    reconcile(
        worker.trainer,
        worker.ledger,
        checkpoints=settings.paths.checkpoints,
        finish_cancel=worker.cancel,
    )
    return worker


def stop(worker: Worker) -> None:
    worker.trainer.close()
    worker.ledger.close()


def events(settings, kind: str) -> list[dict]:
    lines = settings.run_paths().events.read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


def test_files_a_rollback_undid_are_rolled_back_once_per_rollback(settings, tmp_path) -> None:
    a, b, c = make_drops(tmp_path / "drops")
    worker = start(settings)
    ledger = worker.ledger
    first = record_drop(ledger, a)
    worker.turn(None)
    worker.trainer.checkpointer.save_gold()
    gold_step = worker.trainer.state.global_step
    later = [record_drop(ledger, b), record_drop(ledger, c)]
    worker.turn(None)
    worker.turn(None)
    trained = {
        r.id: (r.start_step, r.end_step) for r in map(ledger.get_file, (f.id for f in later))
    }
    assert all(start >= gold_step for start, _ in trained.values())

    # A crash between the rollback's commit and the marking: the ledger still says done...
    ledger.request_rollback()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(requests, "mark_rolled_back", lambda trainer, ledger: [])
        worker.turn(None)
    assert worker.trainer.state.global_step == gold_step
    assert [ledger.get_file(f.id).state for f in later] == [FileState.DONE] * 2
    stop(worker)
    # ...and the next start marks them, with the steps they had; never "lost".
    worker = start(settings)
    ledger = worker.ledger
    for record in later:
        now = ledger.get_file(record.id)
        assert now.state is FileState.ROLLED_BACK
        assert (now.start_step, now.end_step) == trained[record.id]
        assert now.error.startswith(f"rolled back to gold at step {gold_step}; it had been")
    assert ledger.get_file(first.id).state is FileState.DONE
    marked = events(settings, "file_rolled_back")
    assert [(e["id"], e["start_step"], e["end_step"], e["gold_step"]) for e in marked] == [
        (f.id, *trained[f.id], gold_step) for f in later
    ]
    assert marked[0]["file"] == "b.jsonl" and marked[0]["sha256"] == later[0].sha256
    assert events(settings, "file_reopened") == []

    # Queued again, they train on new steps past gold's; a restart leaves them done.
    assert [r.id for r in ledger.requeue_rolled_back()] == [f.id for f in later]
    worker.turn(None)
    worker.turn(None)
    again = [ledger.get_file(f.id) for f in later]
    assert [r.state for r in again] == [FileState.DONE] * 2
    assert again[0].start_step == gold_step and again[1].start_step == again[0].end_step
    stop(worker)
    worker = start(settings)
    ledger = worker.ledger
    assert [ledger.get_file(f.id).state for f in later] == [FileState.DONE] * 2
    assert len(events(settings, "file_rolled_back")) == 2

    # A second rollback to the same gold undoes them again: marked again, at once.
    ledger.request_rollback()
    worker.turn(None)
    for record in again:
        now = ledger.get_file(record.id)
        assert now.state is FileState.ROLLED_BACK
        assert (now.start_step, now.end_step) == (record.start_step, record.end_step)
    assert len(events(settings, "file_rolled_back")) == 4
    stop(worker)
