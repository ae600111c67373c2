"""Atomic, verifiable checkpoint folders (design rule 8, layout of design section 4).

A checkpoint is written into a staging folder on the same filesystem, every file is
fsynced, ``manifest.json`` (sizes and sha256 of every other file) is written last, the
folder is renamed into place and the parent is fsynced. A folder without a valid
manifest is not a checkpoint: loading verifies the manifest and falls back to the
previous checkpoint. Weights are safetensors; the optimizer is read back with
``torch.load(weights_only=True)`` (rule 12).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from trainer.faults import fault_point
from trainer.records.durable import fsync_path
from trainer.records.manifest import (
    CONFIG,
    EXPORT_FILES,
    FILES,
    MANIFEST,
    OPTIMIZER,
    STATE,
    STEP_DIR,
    TOKENIZER,
    WEIGHTS,
    verify,
    write_json,
    write_manifest,
)
from trainer.records.space import as_disk_full, ensure_space

log = logging.getLogger(__name__)

SLACK_BYTES = 1 << 20
"""Room for the small files of a checkpoint (config, tokenizer, state, manifest)."""
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, incomplete or fails its manifest."""


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state, each storage once: a tied weight is saved under its first name.

    Every registered parameter and persistent buffer is included, so modules added for
    training (adapters, extra heads, resized embeddings) are saved with the rest.
    """
    state = model.state_dict()
    return {
        name: state[name].detach().to("cpu").contiguous() for name in model_tensors_names(model)
    }


def tied_aliases(model: torch.nn.Module) -> set[str]:
    """State-dict names that share storage with an earlier name (e.g. ``lm_head.weight``)."""
    return set(model.state_dict()) - set(model_tensors_names(model))


def model_tensors_names(model: torch.nn.Module) -> list[str]:
    seen: set[tuple[int, int]] = set()
    names = []
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


def load_model_weights(
    model: torch.nn.Module, tensors: dict[str, torch.Tensor], *, strict: bool = True
) -> None:
    """Load saved tensors; tied aliases need not be in the file. ``strict`` demands the rest."""
    result = model.load_state_dict(tensors, strict=False)
    aliases = tied_aliases(model)
    missing = [k for k in result.missing_keys if k not in aliases]
    if strict and (missing or result.unexpected_keys):
        raise CheckpointError(
            f"weights do not match the model: missing {missing}, unexpected {result.unexpected_keys}"
        )


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


@dataclass(frozen=True, kw_only=True)
class CheckpointContent:
    """Everything a checkpoint holds, ready to be written."""

    model: torch.nn.Module
    """The bare model (not a DDP or compile wrapper): every trainable module is in it."""
    optimizer_state: dict[str, Any]
    """``optimizer.state_dict()``."""
    config: dict[str, Any]
    """Architecture only (``config.json``)."""
    tokenizer_json: str
    """The tokenizer, as Hugging Face ``tokenizer.json`` text."""
    training_state: dict[str, Any]
    """Progress, data position, RNG and hyper-parameters (``training_state.json``)."""


def content_bytes(content: CheckpointContent) -> int:
    """About how many bytes ``content`` takes on disk (weights and optimizer moments)."""
    tensors = list(model_tensors(content.model).values())
    for moments in content.optimizer_state.get("state", {}).values():
        tensors += [v for v in moments.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors) + SLACK_BYTES


def write_checkpoint(root: Path, name: str, content: CheckpointContent) -> Path:
    """Write ``root/name`` atomically; an existing valid folder of that name is replaced.

    DiskFullError (nothing written) when the filesystem cannot hold it, whether seen
    before writing (free space under the content's size) or while writing.
    """
    root.mkdir(parents=True, exist_ok=True)
    ensure_space(root, need=content_bytes(content), what=f"checkpoint {name}")
    staging = root / f"{STAGING_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        write_json(staging / CONFIG, content.config)
        save_file(model_tensors(content.model), str(staging / WEIGHTS), metadata={"format": "pt"})
        fault_point("checkpoint:after_weights")
        torch.save(content.optimizer_state, staging / OPTIMIZER)
        (staging / TOKENIZER).write_text(content.tokenizer_json, encoding="utf-8")
        write_json(staging / STATE, content.training_state)
        for fname in FILES:
            fsync_path(staging / fname)
        fault_point("checkpoint:before_manifest")
        write_manifest(
            staging,
            files=FILES,
            format_version=content.training_state.get("format_version", 1),
            name=name,
        )
        fault_point("checkpoint:before_rename")
        install_folder(staging, root / name)
        fault_point("checkpoint:after_rename")
        fsync_path(root)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        full = as_disk_full(exc, path=root, what=f"checkpoint {name}")
        if isinstance(exc, Exception) and full is not None:
            raise full from exc
        raise
    return root / name


def install_folder(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``, moving an existing ``target`` aside first.

    ``staging`` must be a complete folder on the same filesystem as ``target``; the
    caller fsyncs ``target.parent`` afterwards to make the renames durable.
    """
    if not target.exists():
        os.rename(staging, target)
        return
    trash = target.parent / f"{TRASH_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}"
    os.rename(target, trash)
    # A crash between these two renames leaves only the trash copy; recover_root() puts
    # it back at the next start, so a named checkpoint (gold) never silently vanishes.
    os.rename(staging, target)
    shutil.rmtree(trash, ignore_errors=True)


def _files_of(folder: Path) -> tuple[str, ...]:
    """The files a complete folder of this name holds (export has its own set)."""
    return EXPORT_FILES if folder.name == "export" else FILES


def recover_root(root: Path) -> None:
    """Clear half-written staging folders and restore a checkpoint a crash left in the trash."""
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(STAGING_PREFIX):
            log.info("removing incomplete checkpoint %s left by an interrupted write", entry.name)
            shutil.rmtree(entry, ignore_errors=True)
    for entry in sorted(root.iterdir()):
        if not entry.name.startswith(TRASH_PREFIX):
            continue
        original = root / entry.name[len(TRASH_PREFIX) :].rsplit("-", 1)[0]
        if not original.exists() and verify(entry, deep=False, files=_files_of(original)) is None:
            log.warning(
                "restoring %s from %s after an interrupted replace", original.name, entry.name
            )
            os.rename(entry, original)
        else:
            shutil.rmtree(entry, ignore_errors=True)
    fsync_path(root)


def step_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``step-*`` folders, newest first (by step number, not by time)."""
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = STEP_DIR.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found, reverse=True)


@dataclass(frozen=True, kw_only=True)
class LoadedCheckpoint:
    """A verified checkpoint, read lazily: weights and optimizer load on demand."""

    path: Path
    """The checkpoint folder."""
    config: dict[str, Any]
    """Architecture (``config.json``)."""
    tokenizer_json: str
    """``tokenizer.json`` text."""
    training_state: dict[str, Any]
    """``training_state.json``."""

    @property
    def step(self) -> int:
        return int(self.training_state["global_step"])

    def weights(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / WEIGHTS), device="cpu")

    def optimizer_state(self, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        return torch.load(self.path / OPTIMIZER, map_location=map_location, weights_only=True)


def read_checkpoint(path: Path) -> LoadedCheckpoint:
    """Verify and open one checkpoint folder; CheckpointError says what is wrong."""
    reason = verify(path)
    if reason is not None:
        raise CheckpointError(f"{path}: {reason}")
    try:
        return LoadedCheckpoint(
            path=path,
            config=json.loads((path / CONFIG).read_text()),
            tokenizer_json=(path / TOKENIZER).read_text(encoding="utf-8"),
            training_state=json.loads((path / STATE).read_text()),
        )
    except ValueError as exc:
        raise CheckpointError(f"{path}: unreadable JSON: {exc}") from exc


def latest_checkpoint(
    root: Path, *, on_skip: Callable[[Path, str], None] | None = None
) -> LoadedCheckpoint | None:
    """The newest valid ``step-*`` checkpoint, falling back past broken ones."""
    for _step, path in step_checkpoints(root):
        try:
            return read_checkpoint(path)
        except CheckpointError as exc:
            reason = str(exc).removeprefix(f"{path}: ")
            log.warning(
                "checkpoint %s is not usable (%s); falling back to the previous one",
                path.name,
                reason,
            )
            if on_skip is not None:
                on_skip(path, reason)
    return None


def resolve_checkpoint(path: Path) -> LoadedCheckpoint:
    """A checkpoint folder, or the newest checkpoint in a checkpoints root."""
    if (path / MANIFEST).exists() or (path / WEIGHTS).exists():
        return read_checkpoint(path)
    found = latest_checkpoint(path)
    if found is None:
        raise CheckpointError(
            f"{path}: neither a checkpoint folder nor a folder holding step-* checkpoints"
        )
    return found


def rotate(root: Path, *, keep: int, protect: tuple[Path, ...] = ()) -> list[Path]:
    """Delete all but the newest ``keep`` complete ``step-*`` checkpoints.

    Only folders that pass a quick verification count towards ``keep``, so a broken
    newest folder never causes the last good one to be deleted. ``gold`` and ``export``
    are not ``step-*`` folders and are never touched.
    """
    removed = []
    kept = 0
    for _step, path in step_checkpoints(root):
        if verify(path, deep=False) is not None:
            continue
        kept += 1
        if kept > keep and path not in protect:
            started = time.monotonic()
            shutil.rmtree(path)
            removed.append(path)
            log.debug("rotated out %s in %.2fs", path.name, time.monotonic() - started)
    if removed:
        fsync_path(root)
    return removed
