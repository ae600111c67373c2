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

from trainer.checkpoint import (
    CheckpointContent,
    recover_root,
    rotate,
    step_dir_name,
    write_checkpoint,
)
from trainer.config import LineageSpec, RunPaths, TrainConfig
from trainer.data import TokenizedFile, tokenize_file
from trainer.events import EventLog, round_loss
from trainer.faults import fault_point
from trainer.guard import record_skip, recover_from_oom, roll_back_if_needed
from trainer.lineage import Lineage, LineageError, open_lineage, resolve_device
from trainer.lock import LineageLock
from trainer.memory import MemoryEstimate, estimate_training_memory
from trainer.progress import ProgressMeter
from trainer.rng import capture_rng
from trainer.sampler import FileSampler
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


class Trainer:
    """A resident model that trains files on one lineage. Not thread-safe."""

    def __init__(
        self,
        lineage: Lineage,
        *,
        train: TrainConfig,
        paths: RunPaths,
        events: EventLog,
        device: torch.device,
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
        self._session_start = time.monotonic()
        self._session_start_step = self.state.global_step
        self.steps = StepRunner(self.model, self.optimizer, train=train, device=device)

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
    ) -> Trainer:
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
            lineage = open_lineage(
                paths.checkpoints, spec=spec, train=train, device=device, init_from=init_from
            )
        except BaseException:
            lock.release()
            raise
        trainer = cls(lineage, train=train, paths=paths, events=events, device=device)
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
            memory_estimate_bytes=memory.total,
            files_completed=len(trainer.state.files_completed),
            current_file=trainer.state.current_file.name if trainer.state.current_file else None,
        )
        if lineage.resumed_from is None:
            trainer.save_checkpoint(reason="lineage_start")
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

    def _reconcile_file_complete(self) -> None:
        """Emit the ``file_complete`` a crash may have cut off after its checkpoint committed."""
        if not self.state.files_completed:
            return
        last = self.state.files_completed[-1]
        for record in self.events.read_backwards(event="file_complete"):
            if record.get("sha256") == last.sha256 and record.get("end_step") == last.end_step:
                return
            if (record.get("end_step") or 0) < last.end_step:
                break
        log.info("recording the completion of %s that a crash cut off", last.name)
        self._emit_file_complete(last)

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
        )

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
            step = state.global_step
            self._report(
                step, current, loss=loss, tokens=tokens, seconds=time.monotonic() - started
            )
            if step % self.train.log_interval == 0 or step == current.target_step:
                log.info(meter.line(step=step, lr=lr_at(step - 1, self.train)))
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
        )
        state.files_completed.append(done)
        state.current_file = None
        self.save_checkpoint(reason="file_end")
        fault_point("loop:before_file_complete")
        self._emit_file_complete(done)
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

    def abandon_current(self, *, reason: str) -> None:
        """Drop the file in progress (what it taught stays in the weights; its steps stay
        counted); for content that is no longer to be trained, e.g. cancelled."""
        current = self.state.current_file
        if current is None:
            return
        self.state.current_file = None
        log.warning("abandoning %s at step %d: %s", current.name, self.state.global_step, reason)
        self.events.emit(
            "file_abandoned",
            file=current.name,
            sha256=current.sha256,
            start_step=current.start_step,
            target_step=current.target_step,
            step=self.state.global_step,
            reason=reason,
        )
        self.save_checkpoint(reason="abandon")

    def _emit_file_complete(self, done: CompletedFile) -> None:
        fields = dataclasses.asdict(done)
        self.events.emit("file_complete", file=fields.pop("name"), **fields)

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
    def save_checkpoint(self, *, reason: str) -> Path | None:
        """Commit the state at this optimizer-step boundary as ``step-NNNNNNNN``."""
        state = self.state
        started = time.monotonic()
        state.rng = capture_rng()
        state.train_config = self.train.to_dict()
        state.accum_micro_step = 0
        content = CheckpointContent(
            model=self.model,
            optimizer_state=self.optimizer.state_dict(),
            config=self.lineage.model_config.to_dict(),
            tokenizer_json=self.tokenizer.to_json(),
            training_state=state.to_dict(),
        )
        path = write_checkpoint(self.paths.checkpoints, step_dir_name(state.global_step), content)
        self._last_saved_step = state.global_step
        removed = rotate(self.paths.checkpoints, keep=self.train.keep_checkpoints, protect=(path,))
        if self.on_checkpoint is not None:
            self.on_checkpoint(path, state.global_step, removed)
        duration = time.monotonic() - started
        log.info("checkpoint %s saved (%s, %.2fs)", path.name, reason, duration)
        self.events.emit(
            "checkpoint_saved",
            step=state.global_step,
            path=str(path),
            reason=reason,
            duration_s=round(duration, 3),
            rotated=[p.name for p in removed],
        )
        return path

    @property
    def unsaved_steps(self) -> int:
        return self.state.global_step - self._last_saved_step

    def close(self) -> None:
        """Let go of the lineage (another process may then open it)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def finish(self) -> None:
        """Record a clean end of the session (``training_complete``) and close."""
        elapsed = time.monotonic() - self._session_start
        steps = self.state.global_step - self._session_start_step
        self.events.emit(
            "training_complete",
            global_step=self.state.global_step,
            steps_this_session=steps,
            duration_s=round(elapsed, 3),
            steps_per_s=round(steps / elapsed, 3) if elapsed > 0 else None,
            tokens_processed=self.state.tokens_processed,
            files_completed=len(self.state.files_completed),
            nan_skips_total=self.state.nan_skips_total,
        )
        self.close()
