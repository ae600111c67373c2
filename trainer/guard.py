"""What the loop does when a step goes wrong (ARCHITECTURE.md rules 6 and 7).

A non-finite loss or gradient skips the step and is reported with the file and source
lines; too many skips in a window *rewind* the weights and optimizer moments to the
newest checkpoint while the global step and data position go on past the bad data (a
rewind, not to be confused with the operator's rollback to gold, ``trainer.rollback``;
its event and checkpoint reason keep their public name ``rollback``). A CUDA
out-of-memory error halves the micro-batch and doubles accumulation, which keeps the
effective batch, the update and the file's budget unchanged.
"""

from __future__ import annotations

import logging
import math

import torch

from trainer.checkpoint import latest_checkpoint
from trainer.checkpointer import Checkpointer
from trainer.config import TrainConfig
from trainer.optim import optimizer_state_mismatch
from trainer.parallel import load_moments_sharded, load_weights_sharded
from trainer.records.state import FileProgress
from trainer.rows import StepRows
from trainer.step import StepRunner

log = logging.getLogger(__name__)


def halve_micro_batch(micro: int, accum: int) -> tuple[int, int]:
    """The next smaller split with the same effective batch (``micro * accum`` unchanged).

    Halves the micro-batch when it is even; otherwise takes its largest divisor below
    half, so an odd micro-batch such as 6 -> 3 -> 1 still keeps the product exact.
    """
    if micro <= 1:
        raise ValueError("micro-batch is already 1")
    smaller = next(d for d in range(micro // 2, 0, -1) if micro % d == 0)
    return smaller, accum * (micro // smaller)


def merge_line_ranges(ranges: list[tuple[int, int]]) -> str:
    """``[(3, 5), (6, 9), (12, 12)]`` -> ``"3-9, 12"``: source lines for error messages."""
    merged: list[list[int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in merged)


def describe_lines(rows: StepRows) -> str:
    """The source lines of a step's own rows, then those of each replayed drop."""
    data, own = rows.own
    text = merge_line_ranges(data.lines_of(own)) if len(own) else ""
    for replayed, picked in rows.replayed:
        text += f"; replayed from {replayed.path.name} lines "
        text += merge_line_ranges(replayed.lines_of(picked))
    return text


class Guard:
    """Skips, rewinds and OOM recovery around one trainer's optimizer steps."""

    def __init__(
        self,
        checkpointer: Checkpointer,
        *,
        steps: StepRunner,
        train: TrainConfig,
        device: torch.device,
    ) -> None:
        self.checkpointer = checkpointer
        """Holds the training state and event log, and the checkpoints to rewind to."""
        self.steps = steps
        self.train = train
        self.device = device

    def accumulate(self, rows: StepRows, *, n_targets: int, current: FileProgress) -> torch.Tensor:
        """``StepRunner.accumulate`` over the step's micro-batches; on CUDA OOM the split
        is made smaller and the step tried again (rule 7)."""
        while True:
            try:
                return self.steps.accumulate(
                    rows,
                    micro=self.checkpointer.state.micro_batch_size,
                    n_targets=n_targets,
                )
            except torch.OutOfMemoryError as exc:
                if self.checkpointer.group.distributed:
                    # One rank alone cannot change the split: the others are mid-step.
                    raise RuntimeError(
                        "out of memory in a torchrun group: lower train.micro_batch_size "
                        "(and raise train.grad_accum_steps), or use worker.strategy = fsdp"
                    ) from exc
                self._recover_from_oom(current)

    def record_skip(self, rows: StepRows, *, step: int, loss: float, norm: float) -> None:
        """Count and report skipped step ``step`` (the global step it started from) with
        the file and source lines it came from (and the earlier drops it replayed, by
        name)."""
        state = self.checkpointer.state
        state.nan_skips_total += 1
        state.nan_skip_steps.append(step)
        lines = describe_lines(rows)
        log.warning(
            "step %d skipped: non-finite %s (loss %s, grad norm %s) in %s lines %s",
            step,
            "loss" if not math.isfinite(loss) else "gradients",
            loss,
            norm,
            state.current_file.name,
            lines,
        )
        self.checkpointer.events.emit(
            "nan_skipped",
            step=step,
            file=state.current_file.name,
            sha256=state.current_file.sha256,
            lines=lines,
            loss=loss,
            grad_norm=norm,
            skipped_total=state.nan_skips_total,
        )

    def rewind_if_needed(self, rows: StepRows) -> None:
        """After ``nan_skip_limit`` skips within ``nan_window`` steps, rewind to the newest
        checkpoint's weights and moments; the step count and data position go on (rule 6)."""
        checkpointer, train = self.checkpointer, self.train
        state = checkpointer.state
        window_start = state.global_step - train.nan_window
        state.nan_skip_steps = [s for s in state.nan_skip_steps if s >= window_start]
        if len(state.nan_skip_steps) < train.nan_skip_limit:
            return
        # The newest checkpoint is the one a synchronous save would have committed by now,
        # so a background save still being written is waited for: the rewind must not
        # depend on how fast the disk is (rule 9).
        checkpointer.poll(wait=True)
        checkpointer.group.barrier()  # rank 0 commits a group's checkpoint after its shards
        good = latest_checkpoint(checkpointer.root)
        skipped = list(state.nan_skip_steps)
        state.nan_skip_steps = []
        if good is None:
            log.error("%d non-finite steps but no checkpoint to roll back to", len(skipped))
            return
        model, optimizer = checkpointer.lineage.model, checkpointer.lineage.optimizer
        if checkpointer.group.sharded:
            # Every rank reads the checkpoint whole and keeps its shard (trainer.parallel).
            load_weights_sharded(model, good.weights())
            load_moments_sharded(optimizer, good.optimizer_state())
        else:
            # A LoRA lineage's checkpoints hold what trains; the frozen base is unchanged.
            good.load_into(model, partial=bool(state.adaptation.get("lora")))
            saved = good.optimizer_state(map_location=self.device)
            if optimizer_state_mismatch(optimizer, saved) is None:
                optimizer.load_state_dict(saved)
        state.rollbacks += 1  # the training state's public name for rewinds
        log.error(
            "ROLLBACK: %d non-finite steps within %d steps; weights and optimizer restored "
            "from %s (step %d); training continues at step %d past the bad data",
            len(skipped),
            train.nan_window,
            good.path.name,
            good.step,
            state.global_step,
        )
        checkpointer.events.emit(
            "rollback",
            step=state.global_step,
            checkpoint=good.path.name,
            checkpoint_step=good.step,
            skipped_steps=skipped,
            file=state.current_file.name if state.current_file else None,
            lines=describe_lines(rows),
        )
        # Make the rewind durable so a crash now cannot replay the bad stretch.
        checkpointer.save(reason="rollback")

    def _recover_from_oom(self, current: FileProgress) -> None:
        """Halve the micro-batch and double accumulation: same effective batch (rule 7)."""
        state = self.checkpointer.state
        self.steps.discard()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        old_micro, old_accum = state.micro_batch_size, state.grad_accum_steps
        if old_micro == 1:
            raise RuntimeError(
                "out of memory at micro_batch_size 1: lower model.overrides.block_size, pick a "
                "smaller preset or raise train.cuda_memory_fraction"
            )
        state.micro_batch_size, state.grad_accum_steps = halve_micro_batch(old_micro, old_accum)
        new_micro = state.micro_batch_size
        state.oom_recoveries += 1
        log.warning(
            "out of memory at step %d: micro-batch %d x accum %d -> %d x %d (same effective "
            "batch), retrying the step",
            state.global_step,
            old_micro,
            old_accum,
            new_micro,
            state.grad_accum_steps,
        )
        self.checkpointer.events.emit(
            "oom_recovered",
            step=state.global_step,
            file=current.name,
            micro_batch_size=new_micro,
            grad_accum_steps=state.grad_accum_steps,
            previous=[old_micro, old_accum],
        )
