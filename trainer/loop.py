"""The training loop: one file at a time, on one global step count that only grows.

Design rules 1-9 live here. A file's budget of optimizer steps is fixed when it starts
and kept in the checkpoint; the learning rate is a function of the global step only;
each optimizer step's loss is the mean over all target tokens of all its micro-batches;
non-finite steps are skipped and, past a limit, rolled back; CUDA OOM halves the
micro-batch and doubles accumulation; checkpoints are taken only at optimizer-step
boundaries and hold everything an exact resume needs.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from trainer.bookkeeping import Bookkeeping
from trainer.checkup import Checkup
from trainer.config import EvalConfig, ExportConfig, GoldConfig, RunPaths, TrainConfig
from trainer.data import TokenizedFile, tokenize_file
from trainer.evaluate import Evaluator
from trainer.faults import fault_point
from trainer.guard import record_skip, recover_from_oom, roll_back_if_needed
from trainer.lineage import Lineage
from trainer.lock import LineageLock
from trainer.opening import Opening
from trainer.parking import note_split, unpark
from trainer.progress import ProgressMeter
from trainer.records.digest import file_sha256
from trainer.records.events import EventLog, round_loss
from trainer.records.space import DiskFullError
from trainer.records.state import CompletedFile, FileProgress
from trainer.rollback import Rollback
from trainer.sampler import FileSampler
from trainer.scalars import Scalars
from trainer.schedule import lr_at
from trainer.step import StepRunner

log = logging.getLogger(__name__)


class FileOutcome(enum.Enum):
    COMPLETED = "completed"
    STOPPED = "stopped"


def steps_for_file(n_sequences: int, *, epochs: float, micro: int, accum: int, world: int) -> int:
    """Design rule 1: the file's budget in optimizer steps (at least one)."""
    return max(1, math.ceil(epochs * n_sequences / (micro * accum * world)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepReport:
    """The latest optimizer step, for heartbeats and progress displays."""

    step: int
    """Global step reached."""
    target_step: int
    """The current file's target."""
    loss: float | None
    """Mean loss of the step (None if skipped or without targets)."""
    lr: float
    """Learning rate the step used."""
    tokens_per_s: float
    """Throughput over the recent steps."""
    eta_s: float
    """Seconds to the file's target at the recent pace."""
    seconds: float
    """Wall time of this step."""


class Trainer(Bookkeeping, Opening):
    """A resident model that trains files on one lineage. Not thread-safe."""

    def __init__(
        self,
        lineage: Lineage,
        *,
        train: TrainConfig,
        paths: RunPaths,
        events: EventLog,
        device: torch.device,
        evaluation: EvalConfig | None = None,
        gold: GoldConfig | None = None,
        export: ExportConfig | None = None,
    ) -> None:
        self.lineage = lineage
        self.model = lineage.model
        self.optimizer = lineage.optimizer
        self.tokenizer = lineage.tokenizer
        self.state = lineage.state
        self.train = train
        self.paths = paths
        self.events = events
        self.device = device
        self.world_size = 1
        self._sampler: FileSampler | None = None
        self._last_saved_step = -1 if lineage.resumed_from is None else self.state.global_step
        self._lock: LineageLock | None = None
        self.last_report: StepReport | None = None
        self.on_checkpoint: Callable[[Path, int, list[Path]], None] | None = None
        """Called after each committed checkpoint with (folder, step, folders rotated out)."""
        self.on_gold: Callable[[Path, int], None] | None = None
        """Called after each promotion to gold with (folder, step)."""
        self.rollback: Rollback | None = None
        """The rollback to gold done as this trainer opened, if any."""
        self.on_disk_full: Callable[[DiskFullError], None] | None = None
        """Called when a checkpoint, gold or export write finds the disk full: it returns
        when the write is worth trying again, or raises to give up (see ``with_space``)."""
        self._session_start = time.monotonic()
        self._session_start_step = self.state.global_step
        self._session_start_tokens = self.state.tokens_processed
        self.steps = StepRunner(self.model, self.optimizer, train=train, device=device)
        self.evaluation = evaluation or EvalConfig()
        self.gold_config = gold or GoldConfig()
        self.export_config = export or ExportConfig()
        self.evaluator = Evaluator(
            self.evaluation,
            tokenizer=self.tokenizer,
            block_size=lineage.model_config.block_size,
            cache_dir=paths.cache,
            seed=self.state.seed,
        )
        self.checkup = Checkup(self)
        self.scalars = Scalars(
            paths.state / "tensorboard" if self.evaluation.tensorboard else None,
            step=self.state.global_step,
        )

    # ------------------------------------------------------------- data
    def prepare(
        self, path: Path, *, sha256: str | None = None, allow_invalid: bool = False
    ) -> TokenizedFile:
        """Validate and tokenize a file (cached by content hash and tokenizer).

        ``sha256``, when the caller already hashed the file, saves reading it again on a
        cache hit; a file that no longer matches it is rejected.
        """
        return tokenize_file(
            path,
            sha256=sha256,
            tokenizer=self.tokenizer,
            block_size=self.lineage.model_config.block_size,
            cache_dir=self.paths.cache,
            allow_invalid=allow_invalid,
            holdout_fraction=self._holdout_for(path, sha256),
        )

    def _holdout_for(self, path: Path, sha256: str | None) -> float:
        """A file in progress or parked keeps the holdout it started with (its sequences,
        and so its cursor and budget, depend on it); a new file takes the setting."""
        state = self.state
        if state.current_file is None and not state.parked:
            return self.evaluation.holdout_fraction
        sha256 = sha256 or file_sha256(path)
        current = state.current_file
        if current is not None and sha256 == current.sha256:
            return current.holdout_fraction
        parked = state.parked_file(sha256)
        if parked is not None:
            return parked.holdout_fraction
        return self.evaluation.holdout_fraction

    # ------------------------------------------------------------- training
    def train_file(
        self,
        data: TokenizedFile,
        *,
        name: str,
        should_stop: Callable[[], bool | str] = lambda: False,
    ) -> FileOutcome:
        """Train ``data`` to its target step, or until ``should_stop`` (then checkpoint).

        ``should_stop`` is asked before every optimizer step; a string answer is the reason
        recorded with the checkpoint (``pause``, ``stop``...).
        """
        state = self.state
        current = state.current_file
        if current is not None and current.sha256 != data.sha256:
            raise RuntimeError(f"{current.name} is in progress; finish it before starting {name}")
        started = current or state.parked_file(data.sha256)
        if started is not None and started.holdout_fraction != data.holdout_fraction:
            raise RuntimeError(
                f"{name} was prepared with holdout {data.holdout_fraction}, but it started "
                f"with {started.holdout_fraction}; use Trainer.prepare"
            )
        self.evaluator.add_recent(data.sha256, data.holdout)
        self._sampler = FileSampler(data, seed=state.seed)
        if current is None:
            current = unpark(self, data.sha256, name=name)
        if current is None:
            per_step = state.micro_batch_size * state.grad_accum_steps * self.world_size
            steps = steps_for_file(
                data.n_sequences,
                epochs=self.train.epochs_per_file,
                micro=state.micro_batch_size,
                accum=state.grad_accum_steps,
                world=self.world_size,
            )
            current = FileProgress(
                name=name,
                sha256=data.sha256,
                n_sequences=data.n_sequences,
                steps_for_file=steps,
                start_step=state.global_step,
                target_step=state.global_step + steps,
                holdout_fraction=data.holdout_fraction,
                n_holdout=data.holdout.n_sequences if data.holdout else 0,
                sequences_per_step=per_step,
            )
            state.current_file = current
            self.events.emit(
                "file_start",
                file=name,
                sha256=data.sha256,
                start_step=current.start_step,
                target_step=current.target_step,
                steps=steps,
                n_sequences=data.n_sequences,
                n_tokens=data.n_tokens,
                format=data.format,
                n_holdout=current.n_holdout,
                sequences_per_step=per_step,
            )
            log.info(
                "%s: %d sequences, %d steps (global %d -> %d)",
                name,
                data.n_sequences,
                steps,
                current.start_step,
                current.target_step,
            )
        else:
            log.info(
                "%s: resuming at step %d/%d (epoch %d, sequence %d)",
                name,
                state.global_step,
                current.target_step,
                current.epoch,
                current.cursor,
            )
        note_split(self, current)
        meter = ProgressMeter(
            file_name=name,
            start_step=current.start_step,
            target_step=current.target_step,
            session_start_step=state.global_step,
            prior_elapsed=current.elapsed_s,
        )
        while state.global_step < current.target_step:
            stop = should_stop()
            if stop:
                current.elapsed_s = meter.elapsed()
                self.save_checkpoint(reason=stop if isinstance(stop, str) else "stop")
                return FileOutcome.STOPPED
            started = time.monotonic()
            loss, tokens = self._optimizer_step(data, current)
            meter.add(tokens=tokens, loss=loss)
            self.checkup.add_train_loss(loss)
            step = state.global_step
            self._report(
                step, current, loss=loss, tokens=tokens, seconds=time.monotonic() - started
            )
            report = self.last_report
            self.scalars.step(step, loss=loss, lr=report.lr, tokens_per_s=report.tokens_per_s)
            if step % self.train.log_interval == 0 or step == current.target_step:
                log.info(meter.line(step=step, lr=lr_at(step - 1, self.train)))
            if step % self.evaluation.interval == 0:
                current.elapsed_s = meter.elapsed()
                self.checkup.run(current)
            if (
                step % self.train.checkpoint_interval == 0
                and step < current.target_step
                and self._last_saved_step != step
            ):
                current.elapsed_s = meter.elapsed()
                self.save_checkpoint(reason="interval")
        current.elapsed_s = meter.elapsed()
        done = CompletedFile(
            name=current.name,
            sha256=current.sha256,
            start_step=current.start_step,
            end_step=state.global_step,
            n_sequences=current.n_sequences,
            tokens=current.tokens,
            mean_loss=round_loss(current.loss_sum / current.loss_steps)
            if current.loss_steps
            else None,
            duration_s=round(current.elapsed_s, 3),
            holdout_fraction=current.holdout_fraction,
            n_holdout=current.n_holdout,
        )
        state.files_completed.append(done)
        state.current_file = None
        self.save_checkpoint(reason="file_end")
        fault_point("loop:before_file_complete")
        self._emit_file_complete(done)
        if self.export_config.enabled:
            self.export()
        return FileOutcome.COMPLETED

    def _report(
        self, step: int, current: FileProgress, *, loss: float | None, tokens: int, seconds: float
    ) -> None:
        # Exponential average over ~10 steps: steady enough for an ETA, quick to follow.
        rate = tokens / max(seconds, 1e-9)
        if self.last_report is not None and self.last_report.target_step == current.target_step:
            rate = 0.9 * self.last_report.tokens_per_s + 0.1 * rate
        step_s = tokens / rate if rate > 0 else seconds
        self.last_report = StepReport(
            step=step,
            target_step=current.target_step,
            loss=loss,
            lr=lr_at(step - 1, self.train),
            tokens_per_s=rate,
            eta_s=step_s * (current.target_step - step),
            seconds=seconds,
        )

    def _optimizer_step(
        self, data: TokenizedFile, current: FileProgress
    ) -> tuple[float | None, int]:
        """One optimizer step over ``micro * accum`` sequences; returns (mean loss, tokens)."""
        state = self.state
        # The file's own step size (rule 14), not the split in force: micro-batches of
        # state.micro_batch_size cover it, the last one shorter if it does not divide.
        count = current.sequences_per_step
        indices = self._sampler.indices(current.cursor, count)
        n_targets = data.targets_of(indices)
        while True:
            try:
                loss_sum = self.steps.accumulate(
                    data, indices, micro=state.micro_batch_size, n_targets=n_targets
                )
                break
            except torch.OutOfMemoryError:
                recover_from_oom(self, current)
        fault_point("loop:mid_step")
        loss = None
        if n_targets == 0:
            # A whole step without targets has nothing to learn: no update (momentum and
            # decay alone would move the weights), but the step and data still advance.
            self.steps.discard()
        else:
            result = self.steps.update(
                loss_sum, n_targets=n_targets, lr=lr_at(state.global_step, self.train)
            )
            if result.applied:
                loss = result.loss
            else:
                record_skip(self, data, indices, loss=result.loss, norm=result.grad_norm)
        tokens = int(data.lengths[indices].sum()) - len(indices)
        state.global_step += 1
        state.tokens_processed += tokens
        current.cursor += count
        current.tokens += tokens
        if loss is not None:
            current.loss_sum += loss
            current.loss_steps += 1
        roll_back_if_needed(self, data, indices)
        return loss, tokens

    # ------------------------------------------------------------- checkpoints
