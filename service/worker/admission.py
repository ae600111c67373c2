"""Between claiming a file and training it: is it to be trained now, and can it be?

A claimed file is not trained when the lineage already holds it (done), when the lineage
is in the middle of another file (the ledger changed under the worker), or when it is out
of attempts. Then it waits, if need be, until the watcher has moved it where the ledger
says, and is tokenized for the model: a file that cannot be is rejected
(:mod:`service.worker.refusal`) or, if it cannot even be read, failed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from service.ledger import FileRecord, Ledger
from service.worker.reconcile import complete
from service.worker.refusal import reject_after_intake
from trainer.data import TokenizedFile
from trainer.loop import Trainer
from trainer.records.formats import DataError
from trainer.records.storage import DiskFullError

log = logging.getLogger(__name__)


def admit(
    record: FileRecord, *, trainer: Trainer, ledger: Ledger, worker_id: str, max_attempts: int
) -> bool:
    """True if the lineage is to train the claimed ``record`` now; if not, the ledger says
    why (done, released, or failed)."""
    done = trainer.state.completed(record.sha256)
    if done is not None:
        complete(trainer, ledger, record, done)
        return False
    current = trainer.state.current_file
    if current is not None and current.sha256 != record.sha256:
        # The loop claims the lineage's own file first; this is a ledger changed under us.
        ledger.release(record.id, worker_id=worker_id)
        return False
    if record.attempts >= max_attempts:
        # The supervisor fails a file at its limit; this one reached it under a higher
        # setting (worker.max_attempts was lowered since).
        fail(
            record,
            trainer=trainer,
            ledger=ledger,
            reason=f"{record.name}: {record.error or 'it crashed the worker'} "
            f"({record.attempts} crashes, worker.max_attempts = {max_attempts})",
        )
        return False
    return True


def settled(record: FileRecord, *, ledger: Ledger, wait_s: float = 5.0) -> FileRecord:
    """The record once its file is where the ledger says.

    The watcher records a drop before moving it out of the inbox's top level (so a crash
    cannot lose a moved file); a claim in between sees the old path for a moment.
    """
    deadline = time.monotonic() + wait_s
    while not Path(record.path).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
        record = ledger.get_file(record.id) or record
    return record


def tokenize(
    record: FileRecord, *, trainer: Trainer, ledger: Ledger, inbox: Path
) -> TokenizedFile | None:
    """The file tokenized for the model; None if it was rejected or failed instead."""
    try:
        return trainer.prepare(Path(record.path), sha256=record.sha256)
    except DiskFullError:
        raise
    except DataError as exc:
        reject_after_intake(record, trainer=trainer, ledger=ledger, inbox=inbox, reason=str(exc))
    except OSError as exc:
        fail(record, trainer=trainer, ledger=ledger, reason=f"{record.name}: {exc}")
    return None


def fail(record: FileRecord, *, trainer: Trainer, ledger: Ledger, reason: str) -> None:
    """The file cannot be trained now: failed, with the reason; what the lineage holds of
    it is parked, so a retry continues it."""
    log.error("file #%d failed: %s", record.id, reason)
    ledger.fail(record.id, error=reason)
    trainer.events.emit("file_failed", id=record.id, file=record.name, reason=reason)
    current = trainer.state.current_file
    if current is not None and current.sha256 == record.sha256:
        trainer.park_current(reason=reason)
