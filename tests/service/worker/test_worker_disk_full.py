"""A full disk while the worker opens its lineage (at start, or reopening for new
settings) is waited out and reported like any other, though no trainer exists yet."""

from __future__ import annotations

import json

from service.signals import StopFlag
from service.worker.process import Worker
from tests.service.worker.tiny_settings import tiny_settings
from trainer.records.storage import DiskFullError


def test_a_full_disk_before_the_lineage_is_open_is_reported(tmp_path):
    settings = tiny_settings(tmp_path, worker={"disk_retry_s": 0.01})
    worker = Worker(settings, stop=StopFlag())
    assert worker.trainer is None
    worker.space(DiskFullError("no space left for the checkpoint", path=tmp_path / "ck"))
    events = [json.loads(line) for line in settings.run_paths().events.read_text().splitlines()]
    assert [e["event"] for e in events] == ["disk_full"]
    assert events[0]["path"] == str(tmp_path / "ck")
    assert worker.ledger.worker_status().state.value == "error"
