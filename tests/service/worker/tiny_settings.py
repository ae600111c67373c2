"""Settings of an in-process worker on the test model, and drops recorded in its ledger,
for the tests of this folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.config.settings import Settings, load_settings
from service.ledger import FileRecord, Ledger
from trainer.records.storage import file_sha256


def tiny_settings(root: Path, *, train: dict[str, Any] | None = None, **sections: Any) -> Settings:
    """The ``test`` preset on CPU, micro-batches of 4 without accumulation, with its folders
    under ``root``; ``train`` keys and whole other ``sections`` on top."""
    return load_settings(
        None,
        paths={"checkpoints": root / "ck", "state": root / "state", "inbox": root / "inbox"},
        model={"preset": "test"},
        train={"micro_batch_size": 4, "grad_accum_steps": 1, "device": "cpu", **(train or {})},
        **sections,
    )


def record_drop(ledger: Ledger, path: Path) -> FileRecord:
    """``path`` queued in ``ledger`` as the watcher records a text drop (it stays where it is)."""
    return ledger.record_file(
        name=path.name,
        path=str(path),
        sha256=file_sha256(path),
        size=path.stat().st_size,
        format="text",
        n_examples=40,
    )
