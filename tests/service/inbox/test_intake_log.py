"""What taking a drop in logs: one line per file."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config.sections import WatcherSection
from service.inbox.intake import Intake
from service.inbox.layout import InboxLayout
from service.ledger import Ledger
from trainer.records.events import EventLog

DROP = "".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(3))


@pytest.fixture
def intake(tmp_path: Path) -> Iterator[Intake]:
    layout = InboxLayout(tmp_path / "inbox")
    layout.create()
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield Intake(
        layout, ledger=ledger, settings=WatcherSection(), events=EventLog(tmp_path / "e.jsonl")
    )
    ledger.close()


def take(intake: Intake, name: str, text: str) -> None:
    path = intake.layout.root / name
    path.write_text(text, encoding="utf-8")
    verdict = intake.inspect(path)
    assert verdict is not None
    intake.commit_all([verdict])


def test_a_queued_file_and_a_duplicate_are_logged_once_each(
    intake: Intake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    take(intake, "day1.jsonl", DROP)
    take(intake, "again.jsonl", DROP)
    queued, duplicate = [r.getMessage() for r in caplog.records]
    assert "day1.jsonl" in queued and "queued" in queued
    assert "again.jsonl" in duplicate and "duplicate" in duplicate
