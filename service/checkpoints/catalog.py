"""Read checkpoints without torch, for ``traind inspect``.

A path is a checkpoints root (``step-*``, ``gold/``, ``export/``), one checkpoint folder
or an export folder. Only JSON files and the safetensors header are read: no weights
are loaded and torch is never imported, so inspecting a lineage is fast and works on a
box without a GPU. Folders are named, checked and summarised by the trainer's own
torch-free records (``trainer.records``: ``checkpoints``, ``manifest``, ``summary``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trainer.records.checkpoints import (
    CONFIG,
    EXPORT_DIR,
    EXPORT_FILES,
    EXPORT_INFO,
    GOLD_DIR,
    MANIFEST,
    STATE,
    float_or_none,
    int_or_none,
    step_folders,
    step_of,
)
from trainer.records.checkpoints import FILES as CHECKPOINT_FILES
from trainer.records.manifest import verify
from trainer.records.summary import TrainingSummary, summarize_training

log = logging.getLogger(__name__)

_MAX_HEADER = 100 * 2**20  # safetensors refuses larger headers too

Kind = Literal["root", "step", "gold", "export", "checkpoint"]


class InspectionError(ValueError):
    """The path is not a checkpoint, an export folder or a checkpoints root."""


@dataclass(frozen=True, kw_only=True)
class CheckpointView:
    """One folder read in full: architecture, parameter count, training state."""

    name: str
    """Folder name."""
    kind: Kind
    """``step``, ``gold``, ``export`` or ``checkpoint`` (a checkpoint folder of another name)."""
    path: Path
    """The folder."""
    problem: str | None
    """Why its manifest does not vouch for it, or None when it does."""
    step: int | None
    """Global step it holds."""
    size_bytes: int
    """Total size of its files."""
    architecture: dict[str, Any]
    """``config.json``."""
    parameters: int | None
    """Parameters in the weights (tied weights are stored, so counted, once)."""
    dtypes: dict[str, int]
    """Parameters per safetensors dtype."""
    training: TrainingSummary | None
    """``training_state.json``, if the folder has a readable one."""
    export_info: dict[str, Any] | None
    """``export.json``, if present."""
    notes: tuple[str, ...] = ()
    """Other problems found while reading (unreadable files, gaps in the lineage)."""


@dataclass(frozen=True, kw_only=True)
class CheckpointEntry:
    """A folder of a checkpoints root, checked quickly (manifest sizes only)."""

    name: str
    """Folder name."""
    kind: Kind
    """``step``, ``gold`` or ``export``."""
    step: int | None
    """Its step (from the name, or its training state)."""
    problem: str | None
    """Why it is not a valid checkpoint, or None."""
    size_bytes: int
    """Total size of its files."""
    val_loss: float | None = None
    """Gold only: the validation loss that made it gold."""
    export_info: dict[str, Any] | None = None
    """Export only: its ``export.json``."""


@dataclass(frozen=True, kw_only=True)
class Inspection:
    """The answer of :func:`inspect_path`."""

    path: Path
    """The path inspected."""
    kind: Kind
    """``root`` for a checkpoints root, else the kind of the single folder."""
    checkpoint: CheckpointView | None
    """The folder shown in full: the newest valid ``step-*`` of a root, or the folder given."""
    checkpoints: tuple[CheckpointEntry, ...] = ()
    """Root only: the ``step-*`` folders, newest first."""
    gold: CheckpointEntry | None = None
    """Root only: ``gold/``."""
    export: CheckpointEntry | None = None
    """Root only: ``export/``."""
    warnings: tuple[str, ...] = ()
    """Checkpoints skipped on the way to the one shown, and why."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, for ``traind inspect --json``."""
        return _plain(self)


def inspect_path(path: Path, *, deep: bool = False) -> Inspection:
    """Inspect a checkpoints root, a checkpoint folder or an export folder.

    ``deep`` also checks every file's sha256 against its manifest (reads every byte).
    """
    path = Path(path)
    if not path.is_dir():
        raise InspectionError(f"{path}: {'not a folder' if path.exists() else 'no such folder'}")
    kind = _folder_kind(path)
    if kind is not None:
        return Inspection(path=path, kind=kind, checkpoint=read_folder(path, kind=kind, deep=deep))
    steps = step_folders(path)
    gold, export = path / GOLD_DIR, path / EXPORT_DIR
    if not steps and not gold.is_dir() and not export.is_dir():
        raise InspectionError(
            f"{path}: not a checkpoint, an export folder or a checkpoints root "
            "(no manifest.json, config.json, step-*, gold/ or export/ in it)"
        )
    entries: list[CheckpointEntry] = []
    warnings: list[str] = []
    chosen: Path | None = None
    for step, folder in steps:
        problem = check_manifest(folder, deep=deep)
        entries.append(
            CheckpointEntry(
                name=folder.name, kind="step", step=step, problem=problem, size_bytes=_size(folder)
            )
        )
        if chosen is None and problem is None:
            chosen = folder
        elif chosen is None:
            log.info("inspect: skipping %s (%s)", folder.name, problem)
            warnings.append(f"{folder.name} is not a valid checkpoint, skipped: {problem}")
    if steps and chosen is None:
        warnings.append("no valid step-* checkpoint in this folder")
    return Inspection(
        path=path,
        kind="root",
        checkpoint=read_folder(chosen, kind="step", deep=False) if chosen else None,
        checkpoints=tuple(entries),
        gold=_entry(gold, kind="gold", deep=deep) if gold.is_dir() else None,
        export=_entry(export, kind="export", deep=deep) if export.is_dir() else None,
        warnings=tuple(warnings),
    )


def check_manifest(
    folder: Path, *, required: tuple[str, ...] = CHECKPOINT_FILES, deep: bool = False
) -> str | None:
    """None if ``manifest.json`` vouches for the folder, else the reason it does not: the
    trainer's own check, applied also to any other file the manifest lists."""
    return verify(folder, deep=deep, files=required)


def read_weights_header(path: Path) -> dict[str, dict[str, Any]]:
    """The tensor entries of a safetensors header (name -> dtype, shape, data_offsets).

    The file starts with the header's length (u64, little-endian), then the header as
    JSON; ``__metadata__`` is not a tensor and is left out.
    """
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError("too short for a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > _MAX_HEADER:
            raise ValueError(f"header length {length} is not plausible")
        raw = handle.read(length)
    if len(raw) < length:
        raise ValueError("the header is cut short")
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return {name: entry for name, entry in header.items() if name != "__metadata__"}


def count_parameters(header: dict[str, dict[str, Any]]) -> tuple[int, dict[str, int]]:
    """Total elements of every tensor, and per dtype. The trainer saves tied weights once
    and no buffers (they are non-persistent), so this is the model's parameter count."""
    by_dtype: dict[str, int] = {}
    for entry in header.values():
        n = math.prod(int(d) for d in entry["shape"])
        by_dtype[str(entry["dtype"])] = by_dtype.get(str(entry["dtype"]), 0) + n
    return sum(by_dtype.values()), by_dtype


def read_folder(path: Path, *, kind: Kind, deep: bool = False) -> CheckpointView:
    """Read one checkpoint or export folder in full (never the weights' data)."""
    notes: list[str] = []
    problem = _problem(path, kind=kind, deep=deep)
    architecture = _json_file(path / CONFIG, notes=notes) or {}
    export_info = _json_file(path / EXPORT_INFO, notes=notes, optional=True)
    parameters, dtypes = None, {}
    weights = sorted(path.glob("*.safetensors"))  # an export may be sharded
    try:
        for file in weights:
            n, by_dtype = count_parameters(read_weights_header(file))
            parameters = (parameters or 0) + n
            for dtype, k in by_dtype.items():
                dtypes[dtype] = dtypes.get(dtype, 0) + k
    except (OSError, ValueError, KeyError, TypeError) as exc:
        parameters, dtypes = None, {}
        notes.append(f"weights header unreadable: {exc}")
    if not weights:
        notes.append("no *.safetensors weights")
    raw = _json_file(path / STATE, notes=notes, optional=kind == "export")
    training = None
    if raw is not None:
        try:
            training = summarize_training(raw, notes=notes)
        except (KeyError, TypeError, ValueError) as exc:
            notes.append(f"{STATE} has unexpected content: {exc!r}")
    step = training.global_step if training else step_of(path.name)
    if step is None and export_info is not None:
        step = int_or_none(export_info.get("step", export_info.get("global_step")))
    return CheckpointView(
        name=path.name,
        kind=kind,
        path=path,
        problem=problem,
        step=step,
        size_bytes=_size(path),
        architecture=architecture,
        parameters=parameters,
        dtypes=dtypes,
        training=training,
        export_info=export_info,
        notes=tuple(notes),
    )


def _folder_kind(path: Path) -> Kind | None:
    if not any((path / name).is_file() for name in (MANIFEST, CONFIG, STATE, EXPORT_INFO)):
        return None
    if (path / EXPORT_INFO).is_file() or path.name == EXPORT_DIR:
        return "export"
    if path.name == GOLD_DIR:
        return "gold"
    return "step" if step_of(path.name) is not None else "checkpoint"


def _entry(path: Path, *, kind: Kind, deep: bool) -> CheckpointEntry:
    """The quick look a root's listing takes at ``gold/`` or ``export/``."""
    state = _json_file(path / STATE, notes=[], optional=True) or {}
    info = _json_file(path / EXPORT_INFO, notes=[], optional=True)
    step = int_or_none(state.get("global_step"))
    if step is None and info is not None:
        step = int_or_none(info.get("step", info.get("global_step")))
    gold = state.get("gold")
    return CheckpointEntry(
        name=path.name,
        kind=kind,
        step=step,
        problem=_problem(path, kind=kind, deep=deep),
        size_bytes=_size(path),
        val_loss=float_or_none(gold.get("val_loss")) if isinstance(gold, dict) else None,
        export_info=info,
    )


def _problem(path: Path, *, kind: Kind, deep: bool) -> str | None:
    required = EXPORT_FILES if kind == "export" else CHECKPOINT_FILES
    return check_manifest(path, required=required, deep=deep)


def _json_file(path: Path, *, notes: list[str], optional: bool = False) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not optional:
            notes.append(f"{path.name} is missing")
        return None
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name} is unreadable: {exc}")
        return None
    if not isinstance(data, dict):
        notes.append(f"{path.name} is not a JSON object")
        return None
    return data


def _size(folder: Path) -> int:
    """Bytes of the files in ``folder`` and its sub-folders (a group's ``sharded/``)."""
    total = 0
    # A running trainer rotates old checkpoints away, possibly while this reads them.
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
                elif entry.is_dir(follow_symlinks=False):
                    total += _size(Path(entry.path))
    return total


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
