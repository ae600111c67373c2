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
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from trainer.bookkeeping import Bookkeeping
from trainer.checkpoint import (
    recover_root,
)
from trainer.checkup import Checkup
from trainer.config import EvalConfig, ExportConfig, GoldConfig, LineageSpec, RunPaths, TrainConfig
from trainer.data import TokenizedFile, tokenize_file
from trainer.digest import file_sha256
from trainer.evaluate import Evaluator
from trainer.events import EventLog, round_loss
from trainer.faults import fault_point
from trainer.gold import Rollback, roll_back_to_gold
from trainer.guard import record_skip, recover_from_oom, roll_back_if_needed
from trainer.lineage import Lineage, LineageError, open_lineage, resolve_device
from trainer.lock import LineageLock
from trainer.memory import MemoryEstimate, estimate_training_memory
from trainer.progress import ProgressMeter
from trainer.sampler import FileSampler
from trainer.scalars import Scalars
from trainer.schedule import lr_at
from trainer.state import CompletedFile, FileProgress
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


class Trainer(Bookkeeping):
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

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        *,
        spec: LineageSpec,
        train: TrainConfig,
        paths: RunPaths,
        init_from: Path | None = None,
        events: EventLog | None = None,
        lock_wait_s: float = 0.0,
        evaluation: EvalConfig | None = None,
        gold: GoldConfig | None = None,
        export: ExportConfig | None = None,
        from_gold: bool = False,
    ) -> Trainer:
        """Open (or start) the lineage under ``paths.checkpoints`` and hold it.

        ``from_gold`` first rolls the lineage back to its gold checkpoint (newer
        checkpoints are kept under ``rolled-back/``).
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size > 1:
            # Every rank would train the whole file and write the same checkpoints.
            raise LineageError(
                f"WORLD_SIZE={world_size}: multi-process (torchrun) training is not supported by "
                "this version; run a single process per lineage"
            )
        device = resolve_device(train.device)
        if device.type == "cuda":
            if train.cuda_memory_fraction is not None:
                torch.cuda.set_per_process_memory_fraction(train.cuda_memory_fraction, device)
            torch.backends.cuda.matmul.allow_tf32 = True
        lock = LineageLock(paths.checkpoints)
        lock.acquire(wait_s=lock_wait_s)
        try:
            recover_root(paths.checkpoints)
            events = events or EventLog(paths.events)
            rollback = roll_back_to_gold(paths.checkpoints) if from_gold else None
            lineage = open_lineage(
                paths.checkpoints, spec=spec, train=train, device=device, init_from=init_from
            )
            trainer = cls(
                lineage,
                train=train,
                paths=paths,
                events=events,
                device=device,
                evaluation=evaluation,
                gold=gold,
                export=export,
            )
        except BaseException:
            lock.release()
            raise
        if rollback is not None:
            trainer.rollback = rollback
            trainer.record_rollback(rollback)
        trainer._lock = lock
        memory = trainer._check_memory()
        for notice in lineage.notices:
            events.emit("optimizer_reset", **notice)
        trainer._reconcile_file_complete()
        events.emit(
            "training_start",
            global_step=trainer.state.global_step,
            resumed_from=str(lineage.resumed_from) if lineage.resumed_from else None,
            lineage_id=trainer.state.lineage_id,
            device=str(device),
            model={"parameters": trainer.model.num_params(), **lineage.model_config.to_dict()},
            train_config=train.to_dict(),
            eval_config=trainer.evaluation.to_dict(),
            gold_config=trainer.gold_config.to_dict(),
            gold_step=trainer.state.gold["step"] if trainer.state.gold else None,
            memory_estimate_bytes=memory.total,
            files_completed=len(trainer.state.files_completed),
            current_file=trainer.state.current_file.name if trainer.state.current_file else None,
        )
        if lineage.resumed_from is None:
            trainer.save_checkpoint(reason="lineage_start")
        trainer.evaluator.restore_recent(
            [(f.name, f.sha256, f.holdout_fraction) for f in trainer.state.files_completed]
        )
        return trainer

    def _check_memory(self) -> MemoryEstimate:
        """Log the training-memory estimate; warn when it will not fit under the CUDA cap."""
        estimate = estimate_training_memory(
            self.lineage.model_config,
            n_params=self.model.num_params(),
            micro_batch=self.state.micro_batch_size,
            activation_bytes=2 if self.steps.half_precision else 4,
        )
        log.info(
            "memory estimate at micro-batch %d: %s",
            self.state.micro_batch_size,
            estimate.describe(),
        )
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            cap = total * (self.train.cuda_memory_fraction or 1.0)
            if estimate.total > cap:
                log.warning(
                    "the estimate exceeds the %.1f GiB this process may use; expect OOM recovery "
                    "to shrink the micro-batch, or lower train.micro_batch_size",
                    cap / 2**30,
                )
        return estimate

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
        """The file in progress keeps the holdout it started with (its sequences, and so
        its cursor and budget, depend on it); a new file takes the setting."""
        current = self.state.current_file
        if current is not None and (sha256 or file_sha256(path)) == current.sha256:
            return current.holdout_fraction
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
        if current is not None and current.holdout_fraction != data.holdout_fraction:
            raise RuntimeError(
                f"{name} was prepared with holdout {data.holdout_fraction}, but it started "
                f"with {current.holdout_fraction}; use Trainer.prepare"
            )
        self.evaluator.add_recent(data.sha256, data.holdout)
        self._sampler = FileSampler(data, seed=state.seed)
        if current is None:
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
        count = state.micro_batch_size * state.grad_accum_steps * self.world_size
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
