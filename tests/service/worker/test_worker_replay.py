"""Replay in the worker: a finished drop whose tokenized cache was deleted is tokenized
again from its file in ``accepted/``, found through the ledger by its content, so the
replay keeps drawing from it. In-process, with the tiny test model on real files."""

from __future__ import annotations

import json
import shutil

from service.ledger import FileState
from service.signals import StopFlag
from service.worker.control import Steering
from service.worker.opening import ledger_sources
from service.worker.process import Worker
from tests.corpus import make_drops
from tests.service.worker.tiny_settings import record_drop, tiny_settings
from trainer.records.storage import file_sha256


def start(settings) -> Worker:
    worker = Worker(settings, stop=StopFlag())
    worker.trainer = worker.open_lineage()
    worker.steering = Steering(worker.ledger, stop=worker.stop)
    return worker


def test_a_deleted_cache_entry_is_rebuilt_from_the_ledgers_file(tmp_path) -> None:
    settings = tiny_settings(
        tmp_path,
        train={
            "replay_fraction": 0.5,
            "epochs_per_file": 0.5,
            "checkpoint_interval": 1000,
            "warmup_steps": 2,
        },
        eval={"interval": 100_000, "holdout_fraction": 0.2},
    )
    a, b, c = make_drops(tmp_path / "drops")
    worker = start(settings)
    for path in (a, b):
        record_drop(worker.ledger, path)
        worker.turn(None)
    assert worker.ledger.counts_by_state()[FileState.DONE] == 2
    assert ledger_sources(worker.ledger)(file_sha256(a)) == a
    assert ledger_sources(worker.ledger)("0" * 64) is None
    worker.trainer.close()
    worker.ledger.close()
    shutil.rmtree(settings.run_paths().cache)

    worker = start(settings)
    record_drop(worker.ledger, c)
    worker.turn(None)
    try:
        assert worker.ledger.counts_by_state()[FileState.DONE] == 3
        pool = worker.trainer.feed.pool
        assert [d.sha256 for d in pool.drops] == [file_sha256(p) for p in (a, b, c)]
        lines = settings.run_paths().events.read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert not [r for r in records if r["event"] == "replay_source_missing"]
        done = [r for r in records if r["event"] == "file_complete"]
        assert done[-1]["replayed_sequences"] > 0 and done[-1]["replay_fraction"] == 0.5
    finally:
        worker.trainer.close()
        worker.ledger.close()
