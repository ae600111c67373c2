"""How the ranks of a torchrun group write one checkpoint together.

A step checkpoint is sharded (``trainer.sharded``): every rank writes what it holds, as
Distributed Checkpoint files, inside rank 0's staging folder. ``gold`` stays whole, in
the single-process layout, so that everything that reads gold (the export, a rollback,
``traind eval``, serving) reads it as before: under FSDP the ranks first gather each
tensor whole (a collective), then rank 0 alone writes. Every rank calls
:func:`write_for_group` at the same step boundary; it returns once the folder is
committed; :func:`begin_for_group` starts one in the background instead
(``train.async_checkpoints``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.checkpoint import CheckpointContent, write_checkpoint
from trainer.distributed import Group, full_tensor
from trainer.records.checkpoints import STEP_DIR
from trainer.sharded import begin_sharded, small_files, write_sharded


def write_for_group(
    root: Path,
    name: str,
    content: CheckpointContent,
    *,
    group: Group,
    names: tuple[str, ...],
    fault: Callable[[str], None],
) -> Path:
    """Write ``content`` as ``root/name`` with every rank of ``group``."""
    if STEP_DIR.match(name):
        return write_sharded(
            root / name, **_sharded(content, names=names), leader=group.leader, fault=fault
        )
    live = content.model.state_dict()
    whole = dataclasses.replace(
        content,
        model=None,
        tensors={n: full_tensor(live[n]).detach().cpu() for n in (content.names or names)},
        optimizer_state=_gathered(content.optimizer_state),
    )
    if group.leader:
        root.mkdir(parents=True, exist_ok=True)
        write_checkpoint(root, name, whole)
    group.barrier()
    return root / name


def begin_for_group(
    root: Path,
    name: str,
    content: CheckpointContent,
    *,
    group: Group,
    names: tuple[str, ...],
    fault: Callable[[str], None],
) -> Callable[[], Path]:
    """Start the step checkpoint ``root/name`` in the background with every rank of
    ``group`` (``trainer.sharded.begin_sharded``); returns what finishes it."""
    return begin_sharded(
        root / name,
        **_sharded(content, names=names),
        leader=group.leader,
        fault=fault,
        process_group=group.background,
    )


def _sharded(content: CheckpointContent, *, names: tuple[str, ...]) -> dict[str, Any]:
    """What a sharded write takes from ``content``: this rank's tensors (live: DCP copies
    or writes them at once), the optimizer state, and the small files as of now."""
    live = content.model.state_dict()
    return {
        "tensors": {n: live[n] for n in (content.names or names)},
        "optimizer_state": content.optimizer_state,
        "small": small_files(
            config=content.config,
            tokenizer_json=content.tokenizer_json,
            # A copy: a background write seals it after training has gone on.
            training_state=copy.deepcopy(content.training_state),
            tokenizer_config_json=content.tokenizer_config_json,
        ),
        "format_version": content.training_state.get("format_version", 1),
    }


def _gathered(value: Any) -> Any:
    """An optimizer state dict with every sharded moment gathered whole."""
    if isinstance(value, dict):
        return {key: _gathered(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_gathered(item) for item in value]
    return full_tensor(value)
