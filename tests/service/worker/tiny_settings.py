"""Settings of an in-process worker on the test model, for the tests of this folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.config.settings import Settings, load_settings


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
