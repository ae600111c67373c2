"""The training loop: one file at a time, on one global step count that only grows.

ARCHITECTURE.md rules 1-9 meet here. A file's budget of optimizer steps is fixed when it
starts and kept in the checkpoint (``trainer.budget``); the learning rate is a function
of the global step only; each optimizer step's loss is the mean over all target tokens
of all its micro-batches (``trainer.step``); non-finite steps are skipped and, past a
limit, rewound, and CUDA OOM halves the micro-batch and doubles accumulation
(``trainer.guard``); checkpoints are taken only at optimizer-step boundaries and hold
everything an exact resume needs (``trainer.checkpointer``).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from pathlib import Path

from trainer.adaptation import release_base_rows
from trainer.budget import advance, end_file, refuse_another, take_up
from trainer.cache import tokenize_file
from trainer.checkpointer import Checkpointer
from trainer.checkup import Checkup
from trainer.config import EvalConfig, ExportConfig, GoldConfig, RunPaths, TrainConfig
from trainer.data import TokenizedFile
from trainer.distributed import DistConfig, reported_timeout
from trainer.evaluate import Evaluator
from trainer.exporter import Exporter
from trainer.faults import fault_point
from trainer.feed import StepFeed
from trainer.guard import Guard
from trainer.memory_use import MemoryMeter, release_free_memory
from trainer.opening import (
    HeldLineage,
)
from trainer.optim import lr_at
from trainer.parallel import parallelize
from trainer.parking import holdout_for, park_current
from trainer.progress import ProgressMeter, Scalars, StepReport, report_progress
from trainer.readback import Readback, StepRecord
from trainer.records.state import FileProgress
from trainer.records.storage import DiskFullError
from trainer.replay import ReplayPool, SourceFinder
from trainer.rollback import Rollback
from trainer.rows import StepRows
from trainer.session import Session
from trainer.startup import open_trainer
from trainer.step import StepRunner, UpdateResult, resolve_precision

log = logging.getLogger(__name__)


class FileOutcome(enum.Enum):
    COMPLETED = "completed"
    STOPPED = "stopped"


class Trainer:
    """A resident model that trains files on one lineage. Not thread-safe."""

    def __init__(
        self,
        held: HeldLineage,
        *,
        train: TrainConfig,
        paths: RunPaths,
        evaluation: EvalConfig | None = None,
        gold: GoldConfig | None = None,
        export: ExportConfig | None = None,
        on_disk_full: Callable[[DiskFullError], None] | None = None,
        source_of: SourceFinder | None = None,
        distributed: DistConfig | None = None,
    ) -> None:
        lineage = self.lineage = held.lineage
        self.group = group = held.group
        self.train, self.paths, self.events, self.device = train, paths, held.events, held.device
        self.parallel = parallelize(
            lineage,
            group=group,
            config=distributed or DistConfig(),
            train=train,
            device=self.device,
            half_precision=resolve_precision(self.device, train.precision) == "bf16",
        )
        self.model, self.optimizer = lineage.model, lineage.optimizer
        self.tokenizer, self.state = lineage.tokenizer, lineage.state
        self.world_size = group.world_size
        self.rollback: Rollback | None = held.rollback
        """The rollback to gold done as this trainer opened, if any."""
        self.evaluation = evaluation or EvalConfig()
        self.gold_config = gold or GoldConfig()
        self.export_config = export or ExportConfig()
        self.checkpointer = Checkpointer(
            lineage,
            root=paths.checkpoints,
            train=train,
            events=self.events,
            on_disk_full=on_disk_full,
            group=group,
        )
        self.checkpointer.names = self.parallel.names
        self.exporter = Exporter(self.checkpointer, config=self.export_config, group=group)
        self.session = Session(self.state, events=self.events)
        self.steps = StepRunner(
            self.model,
            self.optimizer,
            train=train,
            device=self.device,
            group=group,
            forward=self.parallel.forward,
            block_size=lineage.model_config.block_size,
        )
        self.guard = Guard(self.checkpointer, steps=self.steps, train=train, device=self.device)
        self.evaluator = Evaluator(
            self.evaluation,
            tokenizer=self.tokenizer,
            block_size=lineage.model_config.block_size,
            cache_dir=paths.cache,
            seed=self.state.seed,
        )
        self.memory = MemoryMeter(self.device, baseline_rss=None)
        """Measures memory for the heartbeat; open_trainer sets its baseline and plan."""
        self.scalars = Scalars(
            paths.state / "tensorboard" if self.evaluation.tensorboard and group.leader else None,
            step=self.state.global_step,
        )
        self.checkup = Checkup(
            lambda drops: self.evaluator.evaluate(
                self.model, device=self.device, autocast=self.steps.autocast, drops=drops
            ),
            checkpointer=self.checkpointer,
            scalars=self.scalars,
            train=train,
            evaluation=self.evaluation,
            gold=self.gold_config,
        )
        self.checkup.on_promote = self.exporter.after_gold
        self.readback = Readback(guard=self.guard, checkup=self.checkup, scalars=self.scalars)
        # No state is committed with a step's loss still on the device.
        self.checkpointer.before_save = self.readback.settle
        self.feed = StepFeed(
            ReplayPool(
                tokenizer=self.tokenizer,
                block_size=lineage.model_config.block_size,
                cache_dir=paths.cache,
                seed=self.state.seed,
                recent_weight=train.replay_recent_weight,
                events=self.events,
                source_of=source_of,
            ),
            state=self.state,
        )
        self._lock = held.lock

    # ------------------------------------------------------------- opening
    open = classmethod(open_trainer)
    """``Trainer.open(spec=..., train=..., paths=..., ...)``: :func:`trainer.startup.open_trainer`."""

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
            holdout_fraction=holdout_for(
                self.state, path, sha256=sha256, default=self.evaluation.holdout_fraction
            ),
        )

    # ------------------------------------------------------------- training
    def train_file(
        self,
        data: TokenizedFile,
        *,
        name: str,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> FileOutcome:
        """Train ``data`` to its target step, or until ``should_stop`` (then checkpoint).

        ``should_stop`` is asked before every optimizer step, at a step boundary. Why to
        stop is the caller's to keep: a stop is checkpointed with reason ``stop``, unless
        ``should_stop`` itself committed a checkpoint (with its own reason) while asked.
        """
        if self.group.distributed and self.group.leader:
            # Rank 0 rebuilds lost replay cache entries before the others look for them,
            # and tells them which drops it left out, so every rank replays the same pool.
            self.feed.drops()
        self.group.announce(
            "train_file",
            path=str(data.path),
            sha256=data.sha256,
            name=name,
            left_out=sorted(self.feed.pool.left_out),
        )
        current = self._take_up(data, name=name)
        self.memory.file_started()
        meter = ProgressMeter.of_file(current, name=name, step=self.state.global_step)
        # The baseline every later evaluation compares with (the first file's held-out
        # part is in the recent set by now).
        self.checkup.baseline(current, has_work=self.evaluator.has_work)
        with reported_timeout(self.group, events=self.events, step=lambda: self.state.global_step):
            while self.state.global_step < current.target_step:
                if self._stop_asked(should_stop, current, meter):
                    return FileOutcome.STOPPED
                self._train_step(data, current, meter)
            self._complete_file(current, meter)
        return FileOutcome.COMPLETED

    def _take_up(self, data: TokenizedFile, *, name: str) -> FileProgress:
        """Make ``data`` the file in progress (``trainer.budget.take_up``), with its
        held-out part among the recent eval set and its sampler ready."""
        refuse_another(self.state, data, name=name)
        self.evaluator.add_recent(data.sha256, data.holdout)
        replay = self.feed.start(data, configured=self.train.replay_fraction)
        return take_up(
            self.state,
            data,
            name=name,
            epochs=self.train.epochs_per_file,
            world_size=self.world_size,
            events=self.events,
            holdout_wanted=self.evaluation.holdout_fraction,
            replay=replay,
        )

    def _stop_asked(
        self, should_stop: Callable[[], bool], current: FileProgress, meter: ProgressMeter
    ) -> bool:
        """Ask ``should_stop``; on yes, make sure this step boundary is committed."""
        # Recorded first, so a checkpoint the caller takes while asked has it too.
        current.elapsed_s = meter.elapsed()
        saves = self.checkpointer.saves
        stop = should_stop()
        self.group.announce("decision", stop=stop)  # after what should_stop itself did
        if not stop:
            return False
        if self.checkpointer.saves == saves:
            self.checkpointer.save(reason="stop")
        return True

    def _train_step(self, data: TokenizedFile, current: FileProgress, meter: ProgressMeter):
        """One optimizer step, then what is due at its boundary: the progress line, an
        evaluation, an interval checkpoint (each reads the steps' losses back first)."""
        self.checkpointer.poll()
        started, tokens_before = time.monotonic(), self.state.tokens_processed
        result, rows = self._optimizer_step(data, current)
        step = self.state.global_step
        self.readback.add(
            StepRecord(
                step=step,
                result=result,
                rows=rows,
                current=current,
                meter=meter,
                tokens=self.state.tokens_processed - tokens_before,  # own and replayed
                seconds=time.monotonic() - started,
                lr=lr_at(step - 1, self.train),
            )
        )
        self.memory.after_step()
        logged = step % self.train.log_interval == 0 or step == current.target_step
        at_end = step == current.target_step and self.evaluation.at_file_end
        evaluate = step % self.evaluation.interval == 0 and not at_end
        save = (
            step % self.train.checkpoint_interval == 0
            and step < current.target_step
            and self.checkpointer.last_saved_step != step
        )
        if logged or evaluate or save or not self.steps.deferred:
            self.readback.settle()
        if logged:
            report_progress(
                meter,
                events=self.events,
                current=current,
                step=step,
                lr=self.last_report.lr,
                tokens_processed=self.state.tokens_processed,
            )
        if evaluate:
            current.elapsed_s = meter.elapsed()
            self.checkup.run(current, eta_s=self.last_report.eta_s)
        if save and self.checkpointer.last_saved_step != step:  # a rewind saved it
            current.elapsed_s = meter.elapsed()
            self.checkpointer.save(reason="interval")

    @property
    def last_report(self) -> StepReport | None:
        """The newest step read back: its loss, pace and ETA (the worker's heartbeat)."""
        return self.readback.last_report

    def _complete_file(self, current: FileProgress, meter: ProgressMeter) -> None:
        """The file reached its target: commit its end, then say so (exactly once)."""
        current.elapsed_s = meter.elapsed()
        done = end_file(self.state)
        if self.evaluation.at_file_end:
            # After end_file, so a gold taken here holds the file as finished.
            self.checkup.run(current, trigger="file_end", eta_s=0.0)
        self.checkpointer.save(reason="file_end")
        self.feed.finished(done)
        fault_point("loop:before_file_complete")
        self.session.file_complete(done)
        self.exporter.after_file()
        log.debug("returned free heap memory in %.3fs", release_free_memory())

    def _optimizer_step(
        self, data: TokenizedFile, current: FileProgress
    ) -> tuple[UpdateResult | None, StepRows]:
        """One optimizer step over the file's ``sequences_per_step`` sequences, a share of
        them replayed from earlier drops; returns its update (None: no targets, nothing to
        learn) and rows. Its loss is accounted when read back (``trainer.readback``)."""
        state = self.state
        # The file's own step size (rule 14), not the split in force: micro-batches of
        # state.micro_batch_size cover it, the last one shorter if it does not divide.
        rows = self.feed.rows(data, current)  # with the replayed share (trainer.feed)
        unfreeze_at = self.lineage.unfreeze_base_rows_at
        if unfreeze_at is not None and state.global_step == unfreeze_at:
            # Opening set the flags for the step it opened at; this is the one step after
            # which they change (no walk over the modules at every step).
            release_base_rows(self.model, step=state.global_step, unfreeze_at=unfreeze_at)
        n_targets = rows.n_targets
        loss_sum = self.guard.accumulate(rows, n_targets=n_targets, current=current)
        fault_point("loop:mid_step")
        result = None
        if n_targets == 0:
            # A whole step without targets has nothing to learn: no update (momentum and
            # decay alone would move the weights), but the step and data still advance.
            self.steps.discard()
        else:
            result = self.steps.update(
                loss_sum, n_targets=n_targets, lr=lr_at(state.global_step, self.train)
            )
        advance(
            state,
            current,
            sequences=len(rows.own[1]),
            tokens=rows.own_tokens,
            loss=None,  # counted when read back
            replayed_sequences=rows.replayed_sequences,
            replayed_tokens=rows.replayed_tokens,
        )
        return result, rows

    # ------------------------------------------------------------- for the worker
    def park_current(self, *, reason: str) -> None:
        """Set the file in progress aside unfinished and commit that (what it taught stays
        in the weights; training the same content again continues it): ``trainer.parking``."""
        self.readback.settle()
        self.group.announce("park_current", reason=reason)
        if park_current(self.state, events=self.events, reason=reason) is not None:
            self.checkpointer.save(reason="park")

    def save_checkpoint(self, *, reason: str) -> Path:
        """``Checkpointer.save``: commit this step boundary as ``step-NNNNNNNN``."""
        self.group.announce("save_checkpoint", reason=reason)
        return self.checkpointer.save(reason=reason)

    def export(self, *, reason: str = "requested") -> Path | None:
        """Write ``checkpoints/export`` now, from its source (``trainer.exporter``)."""
        self.readback.settle()
        self.group.announce("export", reason=reason)
        if self.group.sharded:
            # No rank holds the whole model: the export is written from the committed
            # checkpoint of this step (every rank takes part in writing it).
            self.checkpointer.poll(wait=True)
            self.group.barrier()
            if self.unsaved_steps:
                self.checkpointer.save(reason="export")
        return self.exporter.write(reason=reason)

    def evaluate(self, *, trigger: str = "request") -> dict:
        """Evaluate now, at this step boundary (an operator asked); the ``eval`` event."""
        self.readback.settle()
        self.group.announce("evaluate", trigger=trigger)
        return self.checkup.run(self.state.current_file, trigger=trigger)

    @property
    def unsaved_steps(self) -> int:
        """Optimizer steps since the newest step checkpoint."""
        return self.checkpointer.unsaved_steps

    def reconcile_file_complete(self) -> None:
        """``Session.reconcile_file_complete``: emit a ``file_complete`` a crash cut off."""
        self.session.reconcile_file_complete()

    def close(self) -> None:
        """Let go of the lineage (another process may then open it)."""
        if self._lock is not None:  # once: the other ranks close with it
            self.group.announce("close")
        try:
            # A background write is finished before the lock goes (the next holder's
            # start would clear its staging folder mid-write); a failure is logged, and
            # the previous checkpoint stands.
            self.checkpointer.drain(strict=False)
        finally:
            self.scalars.close()
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def finish(self) -> None:
        """Record a clean end of the session (``training_complete``) and close."""
        self.checkpointer.drain()  # its checkpoint_saved comes before training_complete
        self.session.finish()
        self.close()
