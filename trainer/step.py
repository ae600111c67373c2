"""The numerics of one optimizer step (ARCHITECTURE.md rules 4-6).

The loss of a step is the mean over all target tokens of all its micro-batches: each
micro-batch backpropagates its summed loss divided by the step's target count, which
the data cache knows before the first forward. So micro 2 x accum 4 gives the same
update as micro 8 x accum 1, and a micro-batch without targets adds exactly zero.
Before the update, loss and gradient norm must be finite; otherwise nothing moves.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainer.config import TrainConfig
from trainer.distributed import SOLO, Group, full_tensor
from trainer.rows import StepRows


@dataclass(frozen=True, kw_only=True)
class UpdateResult:
    """What happened to one optimizer step."""

    loss: float
    """Mean loss over the step's target tokens (may be NaN or inf)."""
    grad_norm: float
    """Global gradient norm before clipping (may be NaN or inf)."""
    applied: bool
    """False when the step was skipped for non-finite loss or gradients."""


def resolve_precision(device: torch.device, precision: str) -> str:
    """bf16 autocast on CUDA by default, fp32 on CPU unless bf16 is asked for."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast_for(
    device: torch.device, precision: str
) -> Callable[[], contextlib.AbstractContextManager]:
    if resolve_precision(device, precision) == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


class StepRunner:
    """Forward/backward over micro-batches, then a guarded optimizer update."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        train: TrainConfig,
        device: torch.device,
        group: Group = SOLO,
        forward: torch.nn.Module | None = None,
    ) -> None:
        self.model = model
        self.forward = forward or model
        """What runs the micro-batches: the model, or its DDP wrapper in a group."""
        self.optimizer = optimizer
        self.train = train
        self.device = device
        self.group = group
        # What the optimizer holds, in the model's order: base rows that start to train
        # later (trainer.vocab) are clipped with the rest from then on.
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self.params = [p for p in model.parameters() if id(p) in held]
        self.half_precision = resolve_precision(device, train.precision) == "bf16"
        self.autocast = autocast_for(device, train.precision)

    def accumulate(self, rows: StepRows, *, micro: int, n_targets: int) -> torch.Tensor:
        """Backpropagate every micro-batch of the step; returns the summed loss (on device).

        In a group each rank runs its share of the rows (``StepRows.shard``) and the same
        number of micro-batches (a rank short of rows runs all-padding ones, which add
        exactly zero), so every rank joins the same gradient reductions; its loss is
        divided by ``n_targets / world_size`` since DDP and FSDP average over the ranks.
        The summed loss returned is the whole step's, over every rank."""
        group = self.group
        denom = float(max(n_targets, 1)) / group.world_size
        share = rows.shard(group.rank, group.world_size)
        batches = list(share.micro_batches(micro))
        per_rank = -(-len(rows) // group.world_size)  # ceil
        count = -(-per_rank // micro)
        total = torch.zeros((), device=self.device)
        runs = max(count, len(batches))
        for index in range(runs):
            x_np, y_np = batches[index] if index < len(batches) else padding_batch(rows)
            x = torch.from_numpy(x_np).to(self.device, non_blocking=True)
            y = torch.from_numpy(y_np).to(self.device, non_blocking=True)
            with self.sync(last=index == runs - 1):
                with self.autocast():
                    logits = self.forward(x)
                # A sum over targets, not a mean per micro-batch: an all-ignored
                # micro-batch is exactly 0 (a mean would be 0/0 = NaN).
                loss = F.cross_entropy(
                    logits.float().reshape(-1, logits.size(-1)),
                    y.reshape(-1),
                    ignore_index=-1,
                    reduction="sum",
                )
                (loss / denom).backward()
            total += loss.detach()
        return group.sum(total)

    def sync(self, *, last: bool) -> contextlib.AbstractContextManager:
        """Under DDP, reduce gradients once per step (at its last micro-batch)."""
        if last or not hasattr(self.forward, "no_sync"):
            return contextlib.nullcontext()
        return self.forward.no_sync()

    def update(self, loss_sum: torch.Tensor, *, n_targets: int, lr: float) -> UpdateResult:
        """Clip, check, step. A non-finite loss or gradient never reaches the weights."""
        if self.train.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.train.grad_clip, foreach=True)
        else:
            norm = torch.nn.utils.get_total_norm(
                [p.grad for p in self.params if p.grad is not None]
            )
        # One device sync for both numbers (an FSDP norm is a replicated DTensor).
        norm = full_tensor(norm).to(loss_sum.device)
        loss, grad_norm = torch.stack([loss_sum / n_targets, norm]).tolist()
        applied = math.isfinite(loss) and math.isfinite(grad_norm)
        if applied:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return UpdateResult(loss=loss, grad_norm=grad_norm, applied=applied)

    def discard(self) -> None:
        """Drop accumulated gradients (a step with nothing to learn, or an OOM retry)."""
        self.optimizer.zero_grad(set_to_none=True)


def padding_batch(rows: StepRows) -> tuple[np.ndarray, np.ndarray]:
    """One row of padding with no target: a rank short of rows still joins the step's
    gradient reductions, adding nothing."""
    pad_id = rows.own[0].pad_id
    return np.full((1, 1), pad_id, dtype=np.int64), np.full((1, 1), -1, dtype=np.int64)
