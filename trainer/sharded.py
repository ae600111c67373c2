"""Checkpoints of a torchrun group: Distributed Checkpoint shards in the atomic protocol.

A step checkpoint written by several ranks holds the model and optimizer state as
``torch.distributed.checkpoint`` (DCP) files under ``sharded/`` (one file per rank, each
rank writing what it holds: its FSDP shards, or under DDP a share of the replicated
tensors), beside the usual ``config.json``, ``tokenizer.json`` and
``training_state.json``. It keeps ARCHITECTURE.md rule 8: rank 0 makes the staging
folder and tells the others its name, every rank writes its shards into it (DCP's own
collective save; rank 0 writes DCP's ``.metadata`` after all have written), then rank 0
alone writes the small files and the manifest, last, and renames the folder into place;
a barrier lets no rank go on before that. A crash at any point leaves a staging folder
the next start removes, never a folder under a real name.

Reading needs no process group: :func:`read_sharded` gathers every shard into whole
tensors, so a checkpoint written at one world size resumes at any other (each rank then
takes what it holds) and every single-process reader (``traind eval``, the export, gold,
``init_from``) reads it like any checkpoint.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trainer.records.checkpoints import (
    CONFIG,
    SHARDED_DIR,
    SHARDED_METADATA,
    STATE,
    TOKENIZER,
    TOKENIZER_CONFIG,
)
from trainer.records.manifest import write_json, write_manifest
from trainer.records.staging import Stage, staged_folder

log = logging.getLogger(__name__)


def is_sharded(path: Path) -> bool:
    """Whether the checkpoint folder ``path`` holds DCP shards."""
    return (path / SHARDED_METADATA).is_file()


def write_sharded(
    target: Path,
    *,
    tensors: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    small: dict[str, str | dict[str, Any] | None],
    leader: bool,
    fault: Callable[[str], None],
    format_version: int,
) -> Path:
    """Write ``target`` as a sharded checkpoint; every rank of the group calls this at
    the same step boundary. ``tensors`` and ``optimizer_state`` are this rank's (DTensor
    shards under FSDP); ``small`` maps file names to their text or JSON (rank 0's)."""
    import torch.distributed.checkpoint as dcp

    if not leader:
        name = _broadcast_name(None)
        shards = target.parent / name / SHARDED_DIR
        dcp.save(_dcp_state(tensors, optimizer_state), checkpoint_id=shards)
        dist.barrier()
        return target
    with staged_folder(target, fault=fault) as stage:
        shards = stage.path / SHARDED_DIR
        shards.mkdir()
        _broadcast_name(stage.path.name)
        dcp.save(_dcp_state(tensors, optimizer_state), checkpoint_id=shards)
        fault("after_weights")
        _seal(stage, small=small, format_version=format_version)
    dist.barrier()
    return target


def begin_sharded(
    target: Path,
    *,
    tensors: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    small: dict[str, str | dict[str, Any] | None],
    leader: bool,
    fault: Callable[[str], None],
    format_version: int,
    process_group: Any,
) -> Callable[[], Path]:
    """Start writing ``target`` in the background with every rank (``train.async_checkpoints``
    in a group): DCP's ``async_save`` copies this rank's state to host memory now and
    writes it on a thread, over ``process_group`` (a gloo group of its own, so that its
    collectives never meet training's). Returns what finishes it, to run on a thread of
    the caller's: wait for every rank's shards, then on rank 0 the small files, the
    manifest last and the rename (rule 8). ``small`` must be rank 0's state as of now. A
    crash at any point leaves the previous checkpoint as it was."""
    import torch.distributed.checkpoint as dcp

    staging = staged_folder(target, fault=fault) if leader else None
    stage = staging.__enter__() if staging is not None else None
    if stage is not None:
        (stage.path / SHARDED_DIR).mkdir()
    name = _broadcast_name(stage.path.name if stage is not None else None)
    try:
        future = dcp.async_save(
            _dcp_state(tensors, optimizer_state),
            checkpoint_id=target.parent / name / SHARDED_DIR,
            process_group=process_group,
        )
    except BaseException:
        if staging is not None and not staging.__exit__(*sys.exc_info()):
            raise
        raise

    def finish() -> Path:
        if staging is None:
            future.result()
            return target
        try:
            future.result()
            fault("after_weights")
            _seal(stage, small=small, format_version=format_version)
        except BaseException:
            if not staging.__exit__(*sys.exc_info()):
                raise
        else:
            staging.__exit__(None, None, None)
        return target

    return finish


def _seal(stage: Stage, *, small: dict[str, str | dict[str, Any] | None], format_version: int):
    """Rank 0's part of a sharded checkpoint once every shard is written: the small
    files, and the manifest the stage writes last (over the shards too)."""
    shards = stage.path / SHARDED_DIR
    files = [f"{SHARDED_DIR}/{p.name}" for p in sorted(shards.iterdir()) if p.is_file()]
    for name, content in small.items():
        if content is None:
            continue
        if isinstance(content, str):
            (stage.path / name).write_text(content, encoding="utf-8")
        else:
            write_json(stage.path / name, content)
        files.append(name)
    stage.fsync_files = tuple(files)
    stage.write_manifest = functools.partial(
        write_manifest,
        files=stage.fsync_files,
        format_version=format_version,
        name=stage.target.name,
    )


def small_files(
    *,
    config: dict[str, Any],
    tokenizer_json: str,
    training_state: dict[str, Any],
    tokenizer_config_json: str | None,
) -> dict[str, str | dict[str, Any] | None]:
    """The small files of a checkpoint, by name."""
    return {
        CONFIG: config,
        TOKENIZER: tokenizer_json,
        TOKENIZER_CONFIG: tokenizer_config_json,
        STATE: training_state,
    }


def _broadcast_name(name: str | None) -> str:
    """Rank 0's staging folder name, for every rank."""
    box = [name]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _dcp_state(tensors: dict[str, torch.Tensor], optimizer_state: dict[str, Any]) -> dict:
    return {"model": dict(tensors), "optimizer": optimizer_state}


def read_sharded(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every shard of the checkpoint ``path`` as whole tensors on the CPU: (model
    tensors, optimizer ``state_dict``), read by this process alone."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    loaded: dict[str, Any] = {}
    _load_state_dict(
        loaded,
        storage_reader=dcp.FileSystemReader(str(path / SHARDED_DIR)),
        planner=_EmptyStateDictLoadPlanner(),
        no_dist=True,
    )
    optimizer = loaded["optimizer"]
    # DCP keys every nested dict by strings; an optimizer state_dict keys its state by
    # parameter index.
    # (An optimizer that has not stepped yet has no state, and DCP stores no empty dict.)
    optimizer["state"] = {int(k): dict(v) for k, v in optimizer.get("state", {}).items()}
    for group in optimizer["param_groups"]:
        group["params"] = [int(p) for p in group["params"]]
    return loaded["model"], optimizer
