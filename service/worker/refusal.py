"""A queued file the worker finds it cannot train: rejected after all, like at intake.

Intake checks what it can without the model: format, lines, sizes. Some problems show only
when the file is tokenized for this model (every trained part cut off by the context
length, no example long enough). Such a file is not failed (a retry would fail again) but
rejected, exactly as intake rejects: recorded ``rejected`` with the reason, moved to
``rejected/`` with its ``.reason.txt``, and a ``file_rejected`` event. Nothing is deleted.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from service.inbox.layout import InboxLayout, move_file, reason_path, write_text_atomic
from service.inbox.reasons import reason_text
from service.ledger import FileRecord, Ledger
from trainer.loop import Trainer

log = logging.getLogger(__name__)


def reject_after_intake(
    record: FileRecord, *, trainer: Trainer, ledger: Ledger, inbox: Path, reason: str
) -> FileRecord:
    """Reject a claimed file with ``reason``; its file moves to ``rejected/`` of ``inbox``."""
    rejected = ledger.reject(record.id, error=reason)
    layout = InboxLayout(inbox.absolute())
    source = Path(record.path)
    if source.exists():
        destination = layout.destination(rejected)
        layout.create()
        write_text_atomic(reason_path(destination), reason_text(rejected))
        target = move_file(source, destination)
        ledger.set_path(record.id, str(target))
        rejected = dataclasses.replace(rejected, path=str(target))
    log.warning("rejected %s (id %d): %s", record.name, record.id, reason)
    trainer.events.emit(
        "file_rejected", id=record.id, file=record.name, sha256=record.sha256, reason=reason
    )
    current = trainer.state.current_file
    if current is not None and current.sha256 == record.sha256:
        trainer.park_current(reason=reason)
    return rejected
