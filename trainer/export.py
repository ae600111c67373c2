"""The deployment export: ``<checkpoints>/export``, half-precision weights for inference.

The folder holds ``config.json``, the weights (fp16 or bf16, a tied weight stored once;
``model.safetensors``, or shards with an index above ``train.shard_size_mb``),
``tokenizer.json`` and ``tokenizer_config.json``, ``generation_config.json`` where the layout
is a Hugging Face one, ``export.json`` (where it came from, its layout and how to load it)
and ``manifest.json``. Which layout (Hugging Face's wherever the model has one) is
``trainer.export_layout``'s choice. It is a
staged folder like every checkpoint (``trainer.records.staging``, ARCHITECTURE.md rule 8):
fsynced files, the manifest last, one rename into place, the root fsynced. Nothing in it
is needed to train and nothing outside it is needed to generate: a copy of the folder
alone serves ``traind generate``. Loading reads safetensors only, never pickle (rule 12).
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from trainer.adaptation import Adaptation, AdaptationError
from trainer.adapted_model import merged_config, merged_model, model_for_checkpoint
from trainer.adapter_export import is_adapter_export, load_adapter_export
from trainer.checkpoint import (
    SLACK_BYTES,
    CheckpointError,
    LoadedCheckpoint,
    fault_at,
    is_checkpoint_folder,
    latest_checkpoint,
    optional_text,
    raise_disk_full,
    read_checkpoint,
    resolve_checkpoint,
)
from trainer.export_layout import empty_model, layout_for, load_exported_model
from trainer.faults import fault_point
from trainer.hf_model import HfModelError
from trainer.records.checkpoints import (
    CONFIG,
    EXPORT_DIR,
    EXPORT_FILES,
    EXPORT_INFO,
    GENERATION_CONFIG,
    STATE,
    TOKENIZER,
    TOKENIZER_CONFIG,
)
from trainer.records.events import utc_now
from trainer.records.manifest import verify, write_json, write_manifest
from trainer.records.staging import staged_folder
from trainer.records.storage import ensure_space
from trainer.tokenizer import Tokenizer, TokenizerError
from trainer.weights import DEFAULT_SHARD_BYTES, save_weights

log = logging.getLogger(__name__)

INFO = EXPORT_INFO
EXPORT_FORMAT = "traind-export"
EXPORT_FORMAT_VERSION = 1
DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}
"""Export dtypes by the name used in settings, on the command line and in export.json."""
_LOAD_DTYPES: dict[str, torch.dtype] = {**DTYPES, "fp32": torch.float32}
HOW_TO_LOAD = (
    "traind generate --checkpoint <this folder> 'prompt'. Where hf_layout is set: "
    "transformers.AutoModelForCausalLM.from_pretrained(<this folder>) and "
    "AutoTokenizer.from_pretrained(<this folder>). In Python without transformers (built-in "
    "models): trainer.export.load_export(path).model."
)


class ExportError(CheckpointError):
    """An export folder (or a folder given for generation) is missing, incomplete or broken."""


@dataclass(frozen=True, kw_only=True)
class ExportedModel:
    """A model ready for inference, from an export or a training checkpoint."""

    model: torch.nn.Module
    """The model (the built-in GPT or a ``trainer.hf_model.HfCausalLM``), in eval mode, on
    the requested device and dtype."""
    tokenizer: Tokenizer
    """Its tokenizer."""
    info: dict[str, Any]
    """``export.json`` (step, lineage_id, source_checkpoint, dtype, ...); for a training
    checkpoint the same keys, filled from its ``training_state.json``."""
    path: Path
    """The folder the model was loaded from."""


def export_dtype(name: str) -> torch.dtype:
    """The torch dtype of an export dtype name (``fp16`` or ``bf16``)."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(
            f"unknown export dtype {name!r}; choose one of {', '.join(DTYPES)}"
        ) from None


def write_export(
    root: Path,
    *,
    model: torch.nn.Module,
    config: dict[str, Any],
    tokenizer_json: str,
    dtype: str,
    info: dict[str, Any],
    tokenizer_config_json: str | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> Path:
    """Write ``root/export`` atomically, replacing an existing export; returns its path.

    ``info`` (step, lineage_id, source_checkpoint, ...) goes into ``export.json`` together
    with the layout, the dtype, the parameter count, the time and the traind version.
    """
    half = export_dtype(dtype)
    tokenizer = Tokenizer.from_files(tokenizer_json, tokenizer_config_json)
    root.mkdir(parents=True, exist_ok=True)
    # parameters() yields a tied matrix once: the bytes to expect, before any cast.
    expected = sum(p.numel() for p in model.parameters()) * half.itemsize
    ensure_space(root, need=expected + SLACK_BYTES, what="the export")
    layout = layout_for(model, config, dtype=half, tokenizer=tokenizer)
    parameters = layout.parameters
    try:
        with staged_folder(root / EXPORT_DIR, fault=fault_at("export")) as stage:
            write_json(stage.path / CONFIG, layout.config)
            files = [CONFIG]
            files += save_weights(
                stage.path,
                layout.names,
                layout.tensor,
                dtype=half,
                shard_bytes=shard_bytes,
                metadata={"dtype": dtype},
            )
            fault_point("export:after_weights")
            (stage.path / TOKENIZER).write_text(tokenizer_json, encoding="utf-8")
            write_json(stage.path / TOKENIZER_CONFIG, layout.tokenizer_config)
            files += [TOKENIZER, TOKENIZER_CONFIG]
            if layout.generation_config is not None:
                write_json(stage.path / GENERATION_CONFIG, layout.generation_config)
                files.append(GENERATION_CONFIG)
            details = _details({**info, **layout.notes}, dtype=dtype, parameters=parameters)
            write_json(stage.path / INFO, details)
            stage.fsync_files = (*files, INFO)
            stage.write_manifest = functools.partial(
                write_manifest,
                files=stage.fsync_files,
                format_version=EXPORT_FORMAT_VERSION,
                name=EXPORT_DIR,
                kind="export",
                created_at=details["created_at"],
            )
    except BaseException as exc:
        raise_disk_full(exc, path=root, what="the export")
        raise
    log.debug("exported %s (%s, step %s)", root / EXPORT_DIR, dtype, info.get("step"))
    return root / EXPORT_DIR


def _details(info: dict[str, Any], *, dtype: str, parameters: int) -> dict[str, Any]:
    """``export.json``: where the export came from and how to load it."""
    return {
        **info,
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "dtype": dtype,
        "parameters": parameters,
        "created_at": utc_now(),
        "traind_version": _traind_version(),
        "how_to_load": HOW_TO_LOAD,
    }


def verify_export(path: Path, *, deep: bool = True) -> str | None:
    """None if ``path`` is a complete export, else the reason it is not."""
    return verify(path, deep=deep, files=EXPORT_FILES)


def is_export(path: Path) -> bool:
    """Whether ``path`` looks like an export folder (it may still be broken)."""
    return (path / INFO).is_file()


def load_export(
    path: Path, *, device: torch.device | str = "cpu", dtype: str | torch.dtype | None = None
) -> ExportedModel:
    """Verify and load an export folder.

    ``dtype`` (``fp16``, ``bf16``, ``fp32`` or a torch dtype) defaults to float32 on the
    CPU, where half-precision matmuls are slow or missing, and to the export's own dtype
    elsewhere. Raises :class:`ExportError` naming the folder and what is wrong.
    """
    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"{path}: no such folder")
    if not is_export(path):
        what = (
            "a training checkpoint, not an export (load it with load_for_generation)"
            if (path / STATE).exists()
            else f"not an export folder (no {INFO})"
        )
        raise ExportError(f"{path}: {what}")
    reason = verify_export(path)
    if reason is not None:
        raise ExportError(f"{path}: {reason}")
    try:
        info = json.loads((path / INFO).read_text(encoding="utf-8"))
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
        tokenizer = Tokenizer.from_files(
            (path / TOKENIZER).read_text(encoding="utf-8"),
            optional_text(path / TOKENIZER_CONFIG),
        )
    except (ValueError, TokenizerError) as exc:
        raise ExportError(f"{path}: {exc}") from exc
    if not isinstance(info, dict):
        raise ExportError(f"{path}: {INFO} is not a JSON object")
    device = torch.device(device)
    stored = DTYPES.get(info.get("dtype"), torch.float32)
    target = _resolve_dtype(dtype) or (torch.float32 if device.type == "cpu" else stored)
    try:
        if is_adapter_export(info):
            model = load_adapter_export(path, config=config, dtype=target)
        else:
            model = load_exported_model(path, config=config, info=info, dtype=target)
    except (SafetensorError, RuntimeError, OSError, ValueError, TypeError) as exc:
        # RuntimeError: CheckpointError, WeightsError, HfModelError and torch's shape checks.
        raise ExportError(f"{path}: the weights do not load: {exc}") from exc
    return ExportedModel(model=model.to(device).eval(), tokenizer=tokenizer, info=info, path=path)


def export_checkpoint(checkpoint: Path, root: Path, *, dtype: str) -> Path:
    """Export a training checkpoint (a ``step-*`` or ``gold`` folder, or the newest
    checkpoint of a checkpoints root) to ``root/export``; returns the export's path."""
    export_dtype(dtype)  # refuse a bad dtype before reading hundreds of megabytes
    loaded = resolve_checkpoint(Path(checkpoint))
    model = checkpoint_model(loaded, device=torch.device("cpu"), dtype=torch.float32)
    model, config = plain_model(model, loaded.config, loaded.training_state.get("adaptation"))
    return write_export(
        root,
        model=model,
        config=config,
        tokenizer_json=loaded.tokenizer_json,
        tokenizer_config_json=loaded.tokenizer_config_json,
        dtype=dtype,
        info=_checkpoint_info(loaded),
    )


def load_for_generation(
    path: Path, *, device: torch.device | str = "cpu", dtype: str | torch.dtype | None = None
) -> ExportedModel:
    """Load a model for inference from whatever folder a person points at.

    An export folder, a training checkpoint folder (``step-*``, ``gold``), or a
    checkpoints root: its newest valid ``step-*`` checkpoint, else its ``export``.
    ``dtype`` defaults as in :func:`load_export` for an export, and to float32 for a
    training checkpoint. Raises :class:`ExportError` naming the folder.
    """
    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"{path}: no such folder")
    if is_export(path):
        return load_export(path, device=device, dtype=dtype)
    try:
        loaded = read_checkpoint(path) if is_checkpoint_folder(path) else latest_checkpoint(path)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from exc
    if loaded is None:
        if is_export(path / EXPORT_DIR):
            return load_export(path / EXPORT_DIR, device=device, dtype=dtype)
        raise ExportError(
            f"{path}: neither an export nor a checkpoint, and it holds no valid step-* "
            f"checkpoint or {EXPORT_DIR} folder"
        )
    target = _resolve_dtype(dtype) or torch.float32
    model = checkpoint_model(loaded, device=torch.device(device), dtype=target)
    try:
        tokenizer = Tokenizer.from_files(loaded.tokenizer_json, loaded.tokenizer_config_json)
    except TokenizerError as exc:
        raise ExportError(f"{loaded.path}: {exc}") from exc
    info = {**_checkpoint_info(loaded), "dtype": _dtype_name(target)}
    return ExportedModel(model=model.eval(), tokenizer=tokenizer, info=info, path=loaded.path)


def plain_model(
    model: torch.nn.Module, config: dict[str, Any], adaptation: dict[str, Any] | None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """What an export holds of an adapted lineage's model: adapters folded in and new rows
    in place, as a plain model of the base architecture (itself for a plain lineage)."""
    record = Adaptation.from_dict(adaptation)
    if not record.active:
        return model, config
    block_size = getattr(getattr(model, "config", None), "block_size", None)
    return merged_model(model, config, record, block_size=block_size), merged_config(config, record)


def checkpoint_model(
    loaded: LoadedCheckpoint, *, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    """The model a training checkpoint holds, as trained (adapters and new rows included);
    ExportError naming the folder if it cannot be rebuilt."""
    if loaded.training_state.get("adaptation"):
        try:
            model = model_for_checkpoint(loaded)
        except (AdaptationError, CheckpointError, HfModelError) as exc:
            raise ExportError(f"{loaded.path}: {exc}") from exc
        return model.to(device=device, dtype=dtype)
    try:
        model = empty_model(loaded.config, dtype=dtype)
    except (TypeError, ValueError, HfModelError) as exc:
        raise ExportError(f"{loaded.path}: {CONFIG}: {exc}") from exc
    try:
        loaded.load_into(model)  # each tensor cast into the model's dtype as it is copied
    except CheckpointError as exc:
        raise ExportError(f"{loaded.path}: the weights do not fit {CONFIG}: {exc}") from exc
    return model.to(device=device)


def _checkpoint_info(loaded: LoadedCheckpoint) -> dict[str, Any]:
    state = loaded.training_state
    return {
        "step": state.get("global_step"),
        "lineage_id": state.get("lineage_id"),
        "source_checkpoint": loaded.path.name,
    }


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _LOAD_DTYPES[dtype]
    except KeyError:
        raise ValueError(
            f"unknown dtype {dtype!r}; choose one of {', '.join(_LOAD_DTYPES)}"
        ) from None


def _dtype_name(dtype: torch.dtype) -> str:
    return next((name for name, known in _LOAD_DTYPES.items() if known == dtype), str(dtype))


def _traind_version() -> str | None:
    try:
        return metadata.version("traind")
    except metadata.PackageNotFoundError:
        return None
