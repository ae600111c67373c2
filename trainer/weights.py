"""Model weights on disk: safetensors, sharded above a size with an index, like ``save_pretrained``.

Up to ``shard_bytes`` the weights are one ``model.safetensors``; above it they are
``model-00001-of-0000N.safetensors`` shards and ``model.safetensors.index.json`` (which
shard holds each tensor), the layout Hugging Face loaders read. Writing takes the tensors
one shard at a time, and loading copies one tensor at a time from a memory map into the
model's own parameters, so a model of any size never needs a second full copy of its
weights in memory (ARCHITECTURE.md rule 12: safetensors only, never pickle).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from trainer.records.checkpoints import WEIGHTS, WEIGHTS_INDEX

DEFAULT_SHARD_BYTES = 5 * 10**9
"""Largest single weights file before sharding (``save_pretrained``'s long-time default)."""


class WeightsError(RuntimeError):
    """Weights on disk that do not fit the model they are loaded into, or cannot be read."""


def shard_name(index: int, total: int) -> str:
    """``model-00001-of-00003.safetensors``: the name Hugging Face gives shard ``index``."""
    return f"model-{index:05d}-of-{total:05d}.safetensors"


def plan_shards(sizes: dict[str, int], *, shard_bytes: int) -> list[list[str]]:
    """Tensor names grouped into shards of at most ``shard_bytes`` (a bigger tensor gets
    its own shard), in the order given."""
    shards: list[list[str]] = [[]]
    filled = 0
    for name, size in sizes.items():
        if shards[-1] and filled + size > shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(name)
        filled += size
    return shards


def save_weights(
    folder: Path,
    names: list[str],
    tensor: Callable[[str], torch.Tensor],
    *,
    dtype: torch.dtype | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    metadata: dict[str, str] | None = None,
) -> list[str]:
    """Write the tensors ``tensor(name)`` of ``names`` into ``folder``, floating ones cast
    to ``dtype`` if given; returns the files written. Each tensor is cast (on its own
    device) and copied to the CPU once, one shard at a time, so only one shard's CPU
    copies are alive at once; shards are planned from the sizes the tensors will have."""
    sizes = {name: _nbytes(tensor(name), dtype) for name in names}
    shards = plan_shards(sizes, shard_bytes=shard_bytes)
    meta = {"format": "pt", **(metadata or {})}
    if len(shards) == 1:
        save_file(_cpu(shards[0], tensor, dtype), str(folder / WEIGHTS), metadata=meta)
        return [WEIGHTS]
    files, weight_map = [], {}
    for index, shard in enumerate(shards, start=1):
        name = shard_name(index, len(shards))
        save_file(_cpu(shard, tensor, dtype), str(folder / name), metadata=meta)
        files.append(name)
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
    (folder / WEIGHTS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [*files, WEIGHTS_INDEX]


def weight_files(folder: Path) -> dict[str, str]:
    """Tensor name -> the file under ``folder`` that holds it."""
    index = folder / WEIGHTS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WeightsError(f"{index} is unreadable: {exc}") from exc
        return {str(k): str(v) for k, v in weight_map.items()}
    single = folder / WEIGHTS
    if not single.is_file():
        raise WeightsError(f"{folder} holds neither {WEIGHTS} nor {WEIGHTS_INDEX}")
    with safe_open(str(single), framework="pt") as handle:
        return dict.fromkeys(handle.keys(), WEIGHTS)


def iter_tensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every saved tensor as (name, CPU tensor), one at a time, file by file."""
    by_file: dict[str, list[str]] = {}
    for name, file in weight_files(folder).items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        try:
            with safe_open(str(folder / file), framework="pt") as handle:
                for name in names:
                    yield name, handle.get_tensor(name)
        except (OSError, ValueError) as exc:
            raise WeightsError(f"{folder / file} is unreadable: {exc}") from exc


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """All saved tensors at once (for small models and for partial loads)."""
    return dict(iter_tensors(folder))


@torch.no_grad()
def load_weights_into(
    model: torch.nn.Module,
    folder: Path,
    *,
    aliases: set[str] = frozenset(),  # type: ignore[assignment]
    rename: Callable[[str], str] = str,
    required: set[str] | None = None,
) -> None:
    """Copy the saved tensors into ``model``'s own tensors, one at a time (cast to their
    dtype and device); every tensor of the model but ``aliases`` (tied names saved once)
    must be there and fit, and nothing else may be. ``required`` (a partial save: a LoRA
    lineage's trainable tensors) replaces "every tensor" by those names. ``rename`` maps a
    saved name to the model's."""
    own = model.state_dict()
    missing = set(own) - set(aliases) if required is None else set(required)
    unexpected = []
    for saved_name, saved in iter_tensors(folder):
        name = rename(saved_name)
        target = own.get(name)
        if target is None:
            unexpected.append(saved_name)
            continue
        if tuple(target.shape) != tuple(saved.shape):
            raise WeightsError(
                f"{folder}: {saved_name} has shape {tuple(saved.shape)}, the model "
                f"{tuple(target.shape)}"
            )
        target.copy_(saved)
        missing.discard(name)
    if missing or unexpected:
        raise WeightsError(
            f"{folder}: the weights do not match the model: missing {sorted(missing)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]}"
        )


def _nbytes(tensor: torch.Tensor, dtype: torch.dtype | None) -> int:
    cast = dtype is not None and tensor.is_floating_point()
    return tensor.numel() * (dtype.itemsize if cast else tensor.element_size())


def _cpu(
    names: list[str], tensor: Callable[[str], torch.Tensor], dtype: torch.dtype | None
) -> dict[str, torch.Tensor]:
    return {name: _cast(tensor(name).detach(), dtype).to("cpu").contiguous() for name in names}


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
