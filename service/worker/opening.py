"""Opening the configured lineage: the one way the worker and ``traind train`` call
``Trainer.open``, so the two cannot drift apart in what they take from the settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from service.config.settings import Settings
from service.ledger import FileState, Ledger
from trainer.loop import Trainer
from trainer.records.storage import DiskFullError


def open_trainer(
    settings: Settings,
    *,
    lock_wait_s: float = 0.0,
    on_disk_full: Callable[[DiskFullError], None] | None = None,
    init_from: Path | None = None,
    from_gold: bool = False,
    new_lineage: bool = False,
    expected_lineage: str | None = None,
    rollback_request: str | None = None,
    in_progress: dict | None = None,
    source_of: Callable[[str], Path | None] | None = None,
) -> Trainer:
    """Open (or start) the lineage the settings describe, and hold its lock.

    ``lock_wait_s``: how long to wait for another process's lineage lock; ``traind train``
    is refused at once beside a running daemon (0), while a worker waits for the one it
    replaces to finish stopping. ``source_of`` finds a finished drop's file by sha256, for
    a replay whose cache entry is gone (:func:`ledger_sources` in the daemon). The other
    options are :meth:`trainer.loop.Trainer.open`'s.
    """
    return Trainer.open(
        spec=settings.lineage_spec(),
        train=settings.train_config(),
        paths=settings.run_paths(),
        init_from=init_from,
        lock_wait_s=lock_wait_s,
        evaluation=settings.eval_config(),
        gold=settings.gold_config(),
        export=settings.export_config(),
        from_gold=from_gold,
        rollback_request=rollback_request,
        in_progress=in_progress,
        new_lineage=new_lineage,
        expected_lineage=expected_lineage,
        on_disk_full=on_disk_full,
        source_of=source_of,
        distributed=settings.dist_config(),
    )


def ledger_sources(ledger: Ledger) -> Callable[[str], Path | None]:
    """Finds a drop's file by content: the newest row of that sha256 whose file is still
    there (``accepted/`` keeps every trained drop)."""

    def source_of(sha256: str) -> Path | None:
        for record in reversed(ledger.find_by_sha(sha256)):
            if record.path and Path(record.path).is_file():
                return Path(record.path)
        return None

    return source_of


def expected_lineage(ledger: Ledger) -> str | None:
    """Why a lineage must exist, from the ledger (ARCHITECTURE.md rule 15), if it says so."""
    # A rolled-back file was trained too: its lineage exists, at gold.
    done, total = ledger.list_files(states=[FileState.DONE, FileState.ROLLED_BACK], limit=1)
    if not total:
        return None
    first = done[0]
    return (
        f"the ledger records {total} file(s) as trained (e.g. #{first.id} {first.name}, "
        f"steps {first.start_step}-{first.end_step})"
    )
