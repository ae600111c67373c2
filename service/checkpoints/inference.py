"""The torch side of ``traind generate`` and ``traind export``.

``api/`` never imports the trainer, so the command line reaches it through here. The
trainer is imported inside each function: importing this module costs no more than the
settings, and ``traind --help`` stays fast. Every problem a person can fix (a folder that
holds no model, a checkpoint that fails its manifest, a missing GPU) comes out as a
:class:`GenerationError` whose message names the folder or the setting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from service.config.sections import DEVICE_PATTERN
from service.config.settings import Settings
from trainer.records.checkpoints import EXPORT_INFO, GOLD_DIR, int_or_none, read_json_object

log = logging.getLogger(__name__)

EXPORT_DTYPES = ("fp16", "bf16")


class GenerationError(ValueError):
    """A model folder, device or setting that cannot be used; the message says which."""


@dataclass(frozen=True, kw_only=True)
class Completion:
    """One generated completion and where the model came from."""

    prompt: str
    """The prompt as given."""
    text: str
    """The generated text only (the prompt not repeated)."""
    path: Path
    """The export or checkpoint folder the model was loaded from."""
    step: int | None
    """Global step of those weights, if recorded."""
    device: str
    """Device it ran on (``auto`` resolved)."""


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    """What ``export_model`` wrote."""

    path: Path
    """The export folder (``.../export``)."""
    source: str
    """Name of the training checkpoint folder it was made from (``step-...``, ``gold``)."""
    step: int | None
    """Global step of the exported weights."""
    dtype: str
    """``fp16`` or ``bf16``."""
    parameters: int
    """Stored parameters (a tied matrix counted once)."""


def resolve_device(name: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is usable, else ``cpu``; a missing GPU is refused."""
    if not DEVICE_PATTERN.fullmatch(name):
        raise GenerationError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GenerationError(f"device {name!r}: CUDA is not available on this machine")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise GenerationError(
                f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return name


def generate_text(
    path: Path,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
    device: str = "auto",
) -> Completion:
    """Complete ``prompt`` with the model in ``path``: an export folder, a training
    checkpoint folder, or a checkpoints root (its newest ``step-*``, else its export)."""
    from trainer.checkpoint import CheckpointError
    from trainer.completion import complete
    from trainer.export import load_for_generation
    from trainer.tokenizer import TokenizerError

    resolved = resolve_device(device)
    try:
        loaded = load_for_generation(Path(path), device=resolved)
    except (CheckpointError, TokenizerError, OSError) as exc:
        raise GenerationError(str(exc)) from exc
    try:
        text = complete(
            loaded.model,
            loaded.tokenizer,
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
        )
    except ValueError as exc:  # out-of-range sampling options
        raise GenerationError(str(exc)) from exc
    return Completion(
        prompt=prompt,
        text=text,
        path=loaded.path,
        step=int_or_none(loaded.info.get("step")),
        device=resolved,
    )


def export_model(
    settings: Settings,
    *,
    source: str = "latest",
    dtype: str | None = None,
    out: Path | None = None,
) -> ExportResult:
    """Write ``<out or paths.checkpoints>/export`` from ``source``.

    ``source`` is ``latest`` (the newest complete ``step-*`` checkpoint of the lineage),
    ``gold``, or a folder: a checkpoint folder or a checkpoints root (its newest).
    """
    from trainer.checkpoint import CheckpointError, latest_checkpoint
    from trainer.export import export_checkpoint
    from trainer.tokenizer import TokenizerError

    dtype = dtype or settings.export.dtype
    if dtype not in EXPORT_DTYPES:
        raise GenerationError(f"export dtype {dtype!r} is not one of {', '.join(EXPORT_DTYPES)}")
    root = settings.paths.checkpoints
    if source == "latest":
        found = latest_checkpoint(root)
        if found is None:
            raise GenerationError(
                f"{root}: no complete step-* checkpoint to export; train first, or pass "
                "--from gold or --from DIR"
            )
        checkpoint = found.path
    elif source == "gold":
        checkpoint = root / GOLD_DIR
        if not checkpoint.is_dir():
            raise GenerationError(f"{checkpoint}: no gold checkpoint yet")
    else:
        checkpoint = Path(source)
        if not checkpoint.is_dir():
            raise GenerationError(f"{checkpoint}: no such folder")
    target_root = out if out is not None else root
    log.info("exporting %s as %s into %s", checkpoint, dtype, target_root)
    try:
        path = export_checkpoint(checkpoint, target_root, dtype=dtype)
    except (CheckpointError, TokenizerError, OSError) as exc:
        raise GenerationError(str(exc)) from exc
    info = read_json_object(path / EXPORT_INFO) or {}
    return ExportResult(
        path=path,
        source=str(info.get("source_checkpoint") or checkpoint.name),
        step=int_or_none(info.get("step")),
        dtype=dtype,
        parameters=int(info.get("parameters") or 0),
    )
