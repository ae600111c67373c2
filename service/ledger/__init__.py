"""The job ledger: drops, claims, control, worker heartbeats and checkpoints, in SQLite
(or PostgreSQL) through SQLAlchemy, with its schema migrated by Alembic.

Everything outside this package uses ``Ledger``, ``LedgerError`` and the records.
"""

from service.ledger.errors import LedgerError, LedgerFullError
from service.ledger.ledger import Ledger
from service.ledger.records import (
    ACTIVE_STATES,
    Control,
    DesiredState,
    FileRecord,
    FileState,
    LineProblem,
    WorkerState,
    WorkerStatus,
)

__all__ = [
    "ACTIVE_STATES",
    "Control",
    "DesiredState",
    "FileRecord",
    "FileState",
    "Ledger",
    "LedgerError",
    "LedgerFullError",
    "LineProblem",
    "WorkerState",
    "WorkerStatus",
]
