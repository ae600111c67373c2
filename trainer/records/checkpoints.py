"""What a checkpoints folder holds: the names of its folders and files, and how to read them.

A checkpoints root holds ``step-NNNNNNNN`` training checkpoints (the newest few), ``gold``
(the guarded best, never rotated), ``export`` (the half-precision copy for inference),
``rolled-back`` and ``retired`` (what rollbacks to gold and new lineages moved aside, never
deleted). The trainer writes them; the service, ``traind inspect`` and the API read them by
these very names.

The small JSON files in them may have been edited by hand, so the readers here never
raise on a missing, unreadable or odd file: they return None.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

MANIFEST = "manifest.json"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
"""The weights in one file; above ``train.shard_size_mb`` they are sharded instead."""
WEIGHTS_INDEX = "model.safetensors.index.json"
"""Which shard (``model-00001-of-00003.safetensors``, ...) holds each tensor, as
``save_pretrained`` writes it."""
ADAPTER_WEIGHTS = "adapter_model.safetensors"
"""An adapter-only export's weights (``export.adapter_only``), as peft names them."""
ADAPTER_CONFIG = "adapter_config.json"
"""An adapter-only export's settings, for ``PeftModel.from_pretrained``."""
OPTIMIZER = "optimizer.pt"
SHARDED_DIR = "sharded"
"""A checkpoint written by a torchrun group: model and optimizer state as Distributed
Checkpoint (``torch.distributed.checkpoint``) shards, one file per rank, instead of
``model.safetensors`` and ``optimizer.pt`` (``trainer.sharded``)."""
SHARDED_METADATA = f"{SHARDED_DIR}/.metadata"
"""The Distributed Checkpoint's index of every shard, written last by rank 0."""
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
"""The tokenizer's settings (chat template, end-of-text and pad tokens), where it has any."""
GENERATION_CONFIG = "generation_config.json"
"""An export's generation defaults (end-of-text and pad ids), for Hugging Face loaders."""
STATE = "training_state.json"
FILES = (CONFIG, OPTIMIZER, TOKENIZER, STATE)
"""The files every training checkpoint (``step-*``, ``gold``) holds, besides its weights
(``WEIGHTS``, or ``WEIGHTS_INDEX`` and its shards)."""
EXPORT_INFO = "export.json"
EXPORT_FILES = (CONFIG, TOKENIZER, EXPORT_INFO)
"""The files every export folder holds, besides its weights."""
STEP_DIR = re.compile(r"^step-(\d{8,})$")
GOLD_DIR = "gold"
"""The guarded best checkpoint, never rotated."""
EXPORT_DIR = "export"
"""The half-precision copy for inference."""
ROLLED_BACK_DIR = "rolled-back"
"""Checkpoints newer than gold that rollbacks to gold moved aside (never deleted)."""
RETIRED_DIR = "retired"
"""What an earlier lineage left when a new one was started on purpose (never deleted)."""

Kind = Literal["step", "gold", "export"]
"""The folders of a checkpoints root that hold a model."""


def step_folder(step: int) -> str:
    """The name of the training checkpoint of global step ``step``."""
    return f"step-{step:08d}"


def step_of(name: str) -> int | None:
    """The global step a ``step-*`` folder name says, or None for any other name."""
    match = STEP_DIR.match(name)
    return int(match.group(1)) if match else None


def kind_of(name: str) -> Kind | None:
    """What a folder of a checkpoints root is, by its name (None: not a model folder)."""
    if name in (GOLD_DIR, EXPORT_DIR):
        return name  # type: ignore[return-value]
    return "step" if STEP_DIR.match(name) else None


def step_folders(root: Path) -> list[tuple[int, Path]]:
    """The ``step-*`` folders under ``root`` with their steps, newest (highest step) first;
    none when ``root`` is not a folder. Whether each is complete is not checked."""
    if not root.is_dir():
        return []
    found = [(step, entry) for entry in root.iterdir() if (step := step_of(entry.name)) is not None]
    return sorted(((s, e) for s, e in found if e.is_dir()), key=lambda pair: pair[0], reverse=True)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None if it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def int_or_none(value: Any) -> int | None:
    """``value`` if it is an int (not a bool), else None: hand-edited files exist."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def float_or_none(value: Any) -> float | None:
    """``value`` as a float if it is a number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
