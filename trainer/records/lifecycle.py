"""Where a drop is in its life, as the ledger records it and every process reads it.

The watcher, the worker and the API change and show these states through the ledger
(``service.ledger``); the command line filters on them (``traind queue --state``). The
life itself is ARCHITECTURE.md section 4.
"""

from __future__ import annotations

import enum


class FileState(enum.StrEnum):
    """Where a drop is in its life."""

    QUEUED = "queued"
    TRAINING = "training"
    DONE = "done"
    FAILED = "failed"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"
    """Trained, then undone by a rollback to gold: the lineage no longer holds it (its
    steps are the ones it had); ``traind requeue --rolled-back`` trains it again."""
