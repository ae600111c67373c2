"""``Ledger``: the job ledger every traind process shares.

The watcher records drops, the worker claims and finishes them, the API reads and takes
the operator's cancel, retry and pause. Each method is one short transaction and returns
frozen records (``service.ledger.records``), never ORM objects. The methods live in
``files.py``, ``rollbacks.py``, ``claims.py``, ``status.py`` and ``restore.py``; this class
puts them together and adds opening and migrating.

Try it::

    from service.ledger import Ledger
    ledger = Ledger.open("sqlite:////tmp/traind/ledger.db")
    print(ledger.counts_by_state())
"""

from __future__ import annotations

import logging
from types import TracebackType

from service.ledger.claims import ClaimQueries
from service.ledger.files import FileQueries
from service.ledger.migrate import head_revision, revision_of, upgrade_connection
from service.ledger.restore import RestoreQueries
from service.ledger.rollbacks import RollbackQueries
from service.ledger.status import StatusQueries

log = logging.getLogger(__name__)


class Ledger(FileQueries, RollbackQueries, ClaimQueries, StatusQueries, RestoreQueries):
    """The ledger database at ``url`` (a SQLAlchemy URL: SQLite or PostgreSQL).

    ``busy_timeout_ms`` is how long SQLite waits for another process's write lock.
    The constructor does not migrate; ``Ledger.open`` does.
    """

    @classmethod
    def open(cls, url: str, *, busy_timeout_ms: int = 10_000, migrate: bool = True) -> Ledger:
        """Open the ledger, first migrating it to the newest schema unless told not to."""
        ledger = cls(url, busy_timeout_ms=busy_timeout_ms)
        if migrate:
            try:
                ledger.migrate()
            except BaseException:
                ledger.close()
                raise
        return ledger

    def migrate(self) -> None:
        """Upgrade the schema to head, in one transaction (a no-op when already there)."""
        with self.engine.begin() as connection:
            upgrade_connection(connection)

    def at_head(self) -> bool:
        """Whether the schema is at the newest revision this traind knows."""
        with self._read_engine.connect() as connection:
            return revision_of(connection) == head_revision()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({self.engine.url.render_as_string(hide_password=True)!r})"
