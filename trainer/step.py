"""The numerics of one optimizer step (ARCHITECTURE.md rules 4-6).

The loss of a step is the mean over all target tokens of all its micro-batches: each
micro-batch backpropagates its summed loss divided by the step's target count, which
the data cache knows before the first forward. So micro 2 x accum 4 gives the same
update as micro 8 x accum 1, and a micro-batch without targets adds exactly zero.
Before the update, loss and gradient norm must be finite; otherwise nothing moves.

On an accelerator the step need not wait for the device (``train.readback``): the
finiteness check runs there, as the fused AdamW's ``found_inf`` (the kernel leaves
weights, moments and step count alone), and the loss comes back later, many steps at a
time (``trainer.readback``). Micro-batches go to the device from pinned memory without
blocking the host, which meanwhile gathers the next one from the token cache: the CUDA
stream is the prefetch queue. With ``train.compile`` the forward and backward are
compiled once, at one fixed shape (``fixed_shape``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trainer.config import TrainConfig
from trainer.distributed import SOLO, Group, full_tensor
from trainer.rows import StepRows

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class UpdateResult:
    """What happened to one optimizer step; the numbers may still be on the device."""

    values: torch.Tensor
    """[mean loss over the step's target tokens, global gradient norm before clipping],
    on the device; either may be NaN or inf."""
    applied: bool | None
    """False when the step was skipped for a non-finite loss or gradient; None when that
    was decided on the device (``readback = log``): known once ``values`` are read."""


def read_back(results: list[UpdateResult]) -> list[tuple[float, float, bool]]:
    """(loss, grad norm, applied) of each result, with one host-device sync for all."""
    if not results:
        return []
    rows = torch.stack([r.values.float() for r in results]).tolist()
    out = []
    for result, (loss, norm) in zip(results, rows, strict=True):
        applied = result.applied
        if applied is None:
            applied = math.isfinite(loss) and math.isfinite(norm)
        out.append((loss, norm, applied))
    return out


def resolve_readback(
    readback: str, *, device: torch.device, optimizer: torch.optim.Optimizer, group: Group
) -> str:
    """``step`` or ``log`` for ``train.readback``. ``log`` needs the fused AdamW (the
    only one that skips a step by a device flag); ``auto`` takes it on CUDA in one
    process, where a sync per step would idle the GPU while the host catches up."""
    fused = all(g.get("fused") for g in optimizer.param_groups)
    if readback == "auto":
        return "log" if device.type == "cuda" and fused and group.world_size == 1 else "step"
    if readback == "log" and group.world_size > 1:
        # Rank 0 decides for the group at every step boundary (ARCHITECTURE.md).
        log.warning("train.readback = log is for one process; a group reads back every step")
        return "step"
    if readback == "log" and not fused:
        log.warning("train.readback = log needs the fused AdamW; reading back every step")
        return "step"
    return readback


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
        block_size: int | None = None,
    ) -> None:
        self.model = model
        self.forward = forward or model
        """What runs the micro-batches: the model, its DDP wrapper in a group, or the
        compiled model (``train.compile``)."""
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
        self.deferred = (
            resolve_readback(train.readback, device=device, optimizer=optimizer, group=group)
            == "log"
        )
        """Whether a step's numbers stay on the device until ``read_back``."""
        self.pinned = device.type == "cuda"
        """Micro-batches are staged in pinned memory, so their copies do not block."""
        self.fixed_length: int | None = None
        """With ``train.compile``: every micro-batch is padded to this many columns."""
        if train.compile:
            if group.world_size > 1:
                log.warning("train.compile is not used in a torchrun group: training eager")
            else:
                self.fixed_length = block_size
                # Static shapes: one graph for every file (dynamic shapes would trade
                # speed for fewer compilations, and the shape never changes anyway).
                self.forward = torch.compile(self.forward, dynamic=False)

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
        pad_id = rows.own[0].pad_id
        for index in range(runs):
            x_np, y_np = batches[index] if index < len(batches) else padding_batch(rows)
            if self.fixed_length is not None:
                x_np, y_np = fixed_shape(
                    x_np, y_np, rows=micro, length=self.fixed_length, pad_id=pad_id
                )
            x, y = self.to_device(x_np), self.to_device(y_np)
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

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        """``array`` on the device; on CUDA through pinned memory, so the copy is queued
        behind the running kernels and the host goes on to the next micro-batch."""
        tensor = torch.from_numpy(array)
        if self.pinned:
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def sync(self, *, last: bool) -> contextlib.AbstractContextManager:
        """Under DDP, reduce gradients once per step (at its last micro-batch)."""
        if last or not hasattr(self.forward, "no_sync"):
            return contextlib.nullcontext()
        return self.forward.no_sync()

    def update(self, loss_sum: torch.Tensor, *, n_targets: int, lr: float) -> UpdateResult:
        """Clip, check, step. A non-finite loss or gradient never reaches the weights:
        checked here (a sync), or by the fused AdamW on the device when ``deferred``."""
        if self.train.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.train.grad_clip, foreach=True)
        else:
            norm = torch.nn.utils.get_total_norm(
                [p.grad for p in self.params if p.grad is not None]
            )
        # An FSDP norm is a replicated DTensor.
        norm = full_tensor(norm).to(loss_sum.device)
        values = torch.stack([loss_sum / n_targets, norm.float()])
        if self.deferred:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            # The fused kernel skips every tensor, and takes its step count back, when
            # found_inf is 1: the check never leaves the device.
            self.optimizer.found_inf = (~torch.isfinite(values).all()).float()
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
            self.optimizer.zero_grad(set_to_none=True)
            return UpdateResult(values=values, applied=None)
        loss, grad_norm = values.tolist()  # one device sync for both numbers
        applied = math.isfinite(loss) and math.isfinite(grad_norm)
        if applied:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return UpdateResult(values=values, applied=applied)

    def discard(self) -> None:
        """Drop accumulated gradients (a step with nothing to learn, or an OOM retry)."""
        self.optimizer.zero_grad(set_to_none=True)


def padding_batch(rows: StepRows) -> tuple[np.ndarray, np.ndarray]:
    """One row of padding with no target: a rank short of rows still joins the step's
    gradient reductions, adding nothing."""
    pad_id = rows.own[0].pad_id
    return np.full((1, 1), pad_id, dtype=np.int64), np.full((1, 1), -1, dtype=np.int64)


def fixed_shape(
    x: np.ndarray, y: np.ndarray, *, rows: int, length: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` padded to ``rows`` x ``length`` (``x`` with the pad id, ``y`` with
    no target), so a compiled model sees one shape. Padding comes after the real columns
    and rows: causal attention never lets a real position see it, and it adds no loss."""
    extra_rows, extra_cols = rows - x.shape[0], length - x.shape[1]
    if extra_rows < 0 or extra_cols < 0 or (extra_rows == 0 and extra_cols == 0):
        return x, y
    widths = ((0, extra_rows), (0, extra_cols))
    return (
        np.pad(x, widths, constant_values=pad_id),
        np.pad(y, widths, constant_values=-1),
    )
