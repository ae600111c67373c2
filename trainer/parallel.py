"""Putting an opened lineage on a torchrun group: DDP or FSDP2 (``trainer.distributed``).

Every rank opened the same checkpoint (``trainer.opening``). Under DDP the model stays
whole on each rank and a wrapper averages the gradients; under FSDP2 each block is
``fully_shard``-ed in place and the optimizer is built again over the sharded parameters,
with the saved moments split the same way, so a checkpoint written at any world size
(or by one process) resumes here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from trainer.adaptation import trainable_count
from trainer.checkpoint import model_tensors_names
from trainer.config import TrainConfig
from trainer.distributed import (
    DistConfig,
    Group,
    choose_strategy,
    replicate_model,
    shard_like,
    shard_model,
)
from trainer.lineage import Lineage
from trainer.memory import estimate_training_memory
from trainer.optim import build_optimizer

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Parallel:
    """How this rank runs the lineage's model."""

    forward: torch.nn.Module
    """What runs a micro-batch: the model, or its DDP wrapper."""
    names: tuple[str, ...]
    """The model's tensors a checkpoint holds (each storage once), named before any
    sharding (FSDP2 keeps the names)."""


def parallelize(
    lineage: Lineage,
    *,
    group: Group,
    config: DistConfig,
    train: TrainConfig,
    device: torch.device,
    half_precision: bool,
) -> Parallel:
    """Choose the strategy and put the lineage's model on the group (nothing alone)."""
    names = tuple(model_tensors_names(lineage.model))
    if not group.distributed:
        return Parallel(forward=lineage.model, names=names)
    group.strategy = choose_strategy(
        config.strategy, fits_one_device=fits_one_device(lineage, device=device)
    )
    log.info("rank %d of %d trains with %s", group.rank, group.world_size, group.strategy.upper())
    if group.strategy == "ddp":
        return Parallel(forward=replicate_model(lineage.model, device=device), names=names)
    saved = lineage.optimizer.state_dict()
    # Every rank must shard the same weights: a new lineage's initialisation is rank 0's.
    for tensor in lineage.model.state_dict().values():
        dist.broadcast(tensor, src=0)
    shard_model(lineage.model, device=device, half_precision=half_precision)
    lineage.optimizer = build_optimizer(lineage.model, train)
    load_moments_sharded(lineage.optimizer, saved)
    return Parallel(forward=lineage.model, names=names)


def load_moments_sharded(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load a whole optimizer ``state_dict`` into one over sharded parameters: each
    moment split like its parameter."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {
        index: {
            key: shard_like(value, params[index])
            if isinstance(value, torch.Tensor) and value.dim() > 0
            else value
            for key, value in moments.items()
        }
        for index, moments in saved["state"].items()
    }
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def load_weights_sharded(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy whole saved tensors into a sharded model (each rank keeps its shard)."""
    live = model.state_dict()
    with torch.no_grad():
        for name, full in tensors.items():
            if name in live:
                live[name].copy_(shard_like(full, live[name]))


def fits_one_device(lineage: Lineage, *, device: torch.device) -> bool:
    """Whether the model, its gradients and optimizer state fit one device (by the
    memory estimate at micro-batch 1); a CPU host always counts as fitting."""
    if device.type != "cuda":
        return True
    estimate = estimate_training_memory(
        lineage.model_config,
        micro_batch=1,
        n_params=lineage.model.num_params(),
        n_trainable=trainable_count(lineage.model),
        activation_bytes=2,
        activation_checkpointing=False,
    )
    return estimate.total <= torch.cuda.get_device_properties(device).total_memory
