"""Atomic, verifiable checkpoint folders (ARCHITECTURE.md rules 8, 9 and 12).

A checkpoint is a staged folder (``trainer.records.staging``): written beside its
destination, every file fsynced, ``manifest.json`` (sizes and sha256 of every other file)
written last, renamed into place, the parent fsynced. A folder without a valid manifest
is not a checkpoint: loading verifies the manifest and falls back to the previous
checkpoint. Weights are safetensors; the optimizer is read back with
``torch.load(weights_only=True)``. The RNG states an exact resume needs are captured
into the training state by ``trainer.rng``. Folder and file names:
``trainer.records.checkpoints``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.faults import fault_point
from trainer.records.checkpoints import (
    CONFIG,
    EXPORT_DIR,
    EXPORT_FILES,
    FILES,
    MANIFEST,
    OPTIMIZER,
    STATE,
    TOKENIZER,
    TOKENIZER_CONFIG,
    WEIGHTS,
    WEIGHTS_INDEX,
    step_folders,
)
from trainer.records.manifest import verify, write_json, write_manifest
from trainer.records.staging import STAGING_PREFIX, TRASH_PREFIX, staged_folder
from trainer.records.storage import as_disk_full, ensure_space, fsync_path
from trainer.sharded import is_sharded, read_sharded
from trainer.weights import (
    DEFAULT_SHARD_BYTES,
    WeightsError,
    load_weights_into,
    read_tensors,
    save_weights,
)

log = logging.getLogger(__name__)

SLACK_BYTES = 1 << 20
"""Room for the small files of a checkpoint (config, tokenizer, state, manifest)."""


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


@dataclass(frozen=True, kw_only=True)
class CheckpointContent:
    """Everything a checkpoint holds, ready to be written."""

    model: torch.nn.Module | None
    """The bare model (not a DDP or compile wrapper): every trainable module is in it. None
    in a host snapshot (``trainer.background``), which holds ``tensors`` instead."""
    optimizer_state: dict[str, Any]
    """``optimizer.state_dict()``."""
    config: dict[str, Any]
    """Architecture only (``config.json``)."""
    tokenizer_json: str
    """The tokenizer, as Hugging Face ``tokenizer.json`` text."""
    training_state: dict[str, Any]
    """Progress, data position, RNG and hyper-parameters (``training_state.json``)."""
    tokenizer_config_json: str | None = None
    """The tokenizer's settings (``tokenizer_config.json``: chat template, special tokens),
    where it has any."""
    shard_bytes: int = DEFAULT_SHARD_BYTES
    """Weights above this many bytes are written as shards with an index."""
    names: tuple[str, ...] | None = None
    """The model's tensors to save (a LoRA lineage's trainable ones), or None for all."""
    tensors: dict[str, torch.Tensor] | None = None
    """A host copy of the tensors to save, by name, written instead of reading ``model``
    (a snapshot taken at a step boundary, written while training goes on)."""


def saved_tensors(content: CheckpointContent) -> dict[str, torch.Tensor]:
    """The tensors ``content`` writes, by name, in order: its host copy, or the model's own
    as they are now (a tied one once; only ``names`` where given), not copied."""
    if content.tensors is not None:
        return content.tensors
    if content.model is None:
        raise ValueError("checkpoint content holds neither a model nor a copy of its tensors")
    state = content.model.state_dict()
    names = content.names if content.names is not None else model_tensors_names(content.model)
    return {name: state[name] for name in names}


def content_bytes(content: CheckpointContent) -> int:
    """About how many bytes ``content`` takes on disk (weights and optimizer moments)."""
    tensors = list(saved_tensors(content).values())
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
    try:
        with staged_folder(root / name, fault=fault_at("checkpoint")) as stage:
            write_json(stage.path / CONFIG, content.config)
            tensors = saved_tensors(content)
            files = [
                CONFIG,
                *save_weights(
                    stage.path, list(tensors), tensors.__getitem__, shard_bytes=content.shard_bytes
                ),
            ]
            fault_point("checkpoint:after_weights")
            torch.save(content.optimizer_state, stage.path / OPTIMIZER)
            (stage.path / TOKENIZER).write_text(content.tokenizer_json, encoding="utf-8")
            files += [OPTIMIZER, TOKENIZER]
            if content.tokenizer_config_json is not None:
                (stage.path / TOKENIZER_CONFIG).write_text(
                    content.tokenizer_config_json, encoding="utf-8"
                )
                files.append(TOKENIZER_CONFIG)
            write_json(stage.path / STATE, content.training_state)
            stage.fsync_files = (*files, STATE)
            stage.write_manifest = functools.partial(
                write_manifest,
                files=stage.fsync_files,
                format_version=content.training_state.get("format_version", 1),
                name=name,
            )
    except BaseException as exc:
        raise_disk_full(exc, path=root, what=f"checkpoint {name}")
        raise
    return root / name


def fault_at(writer: str) -> Callable[[str], None]:
    """The kill-test crash points of a staged write: ``<writer>:before_manifest``, ..."""
    return lambda point: fault_point(f"{writer}:{point}")


def raise_disk_full(exc: BaseException, *, path: Path, what: str) -> None:
    """Raise the DiskFullError a failed write really was (nothing if it was not one)."""
    full = as_disk_full(exc, path=path, what=what)
    if isinstance(exc, Exception) and full is not None:
        raise full from exc


def _files_of(folder: Path) -> tuple[str, ...]:
    """The files a complete folder of this name holds (export has its own set)."""
    return EXPORT_FILES if folder.name == EXPORT_DIR else FILES


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
    tokenizer_config_json: str | None = None
    """``tokenizer_config.json`` text, where the checkpoint has one."""

    @property
    def step(self) -> int:
        return int(self.training_state["global_step"])

    def weights(self) -> dict[str, torch.Tensor]:
        """Every tensor at once (small models, partial loads); see ``load_into``."""
        if is_sharded(self.path):
            return read_sharded(self.path)[0]
        try:
            return read_tensors(self.path)
        except WeightsError as exc:
            raise CheckpointError(str(exc)) from exc

    def load_into(self, model: torch.nn.Module, *, partial: bool = False) -> None:
        """Copy the weights into ``model`` one tensor at a time: never a second full copy.

        ``partial`` (a LoRA lineage's checkpoint): the file holds the tensors that train,
        and every one of ``model``'s trainable parameters must be among them."""
        if is_sharded(self.path):
            tensors = self.weights()
            load_model_weights(model, tensors, strict=not partial)
            missing = trainable_tensor_names(model) - set(tensors) if partial else set()
            if missing:
                raise CheckpointError(f"{self.path}: no saved tensor for {sorted(missing)}")
            return
        try:
            if partial:
                load_weights_into(model, self.path, required=trainable_tensor_names(model))
                return
            load_weights_into(model, self.path, aliases=tied_aliases(model))
        except WeightsError as exc:
            raise CheckpointError(str(exc)) from exc

    def optimizer_state(self, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        if is_sharded(self.path):
            return read_sharded(self.path)[1]  # on the CPU; load_state_dict moves it
        return torch.load(self.path / OPTIMIZER, map_location=map_location, weights_only=True)


def trainable_tensor_names(model: torch.nn.Module) -> set[str]:
    """State-dict names of the parameters that train (a shared one under each name)."""
    trainable = {p.untyped_storage().data_ptr() for p in model.parameters() if p.requires_grad}
    state = model.state_dict()
    names = set(model_tensors_names(model))
    return {n for n in names if state[n].untyped_storage().data_ptr() in trainable}


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
            tokenizer_config_json=optional_text(path / TOKENIZER_CONFIG),
        )
    except ValueError as exc:
        raise CheckpointError(f"{path}: unreadable JSON: {exc}") from exc


def optional_text(path: Path) -> str | None:
    """The text of ``path``, or None where there is no such file."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def latest_checkpoint(
    root: Path, *, on_skip: Callable[[Path, str], None] | None = None
) -> LoadedCheckpoint | None:
    """The newest valid ``step-*`` checkpoint, falling back past broken ones."""
    for _step, path in step_folders(root):
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


def is_checkpoint_folder(path: Path) -> bool:
    """Whether ``path`` looks like one checkpoint (it may still be broken), not a root."""
    return any((path / name).exists() for name in (MANIFEST, WEIGHTS, WEIGHTS_INDEX))


def resolve_checkpoint(path: Path) -> LoadedCheckpoint:
    """A checkpoint folder, or the newest checkpoint in a checkpoints root."""
    if is_checkpoint_folder(path):
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
    for _step, path in step_folders(root):
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
