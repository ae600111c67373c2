"""The training worker: a resident model that trains queued files, forever.

Run by the supervisor of ``traind serve`` as ``python -m service.worker [--config F]``
(settings also from ``TRAIND_*`` variables, like every traind command). It loads the
model once and keeps it in memory between files and while paused. It shares only the
ledger, the checkpoints and the event log with the other processes: control (pause,
resume) arrives through the ledger, progress leaves through heartbeats.

At start the checkpoint is the truth of what was trained: files it finished are marked
done in the ledger, and the file it was in the middle of is claimed first and resumes at
its exact position. SIGTERM checkpoints at the next step boundary, releases the claim
and exits 0.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from service.ledger import DesiredState, FileRecord, FileState, Ledger, WorkerState
from service.requests import OperatorRequests
from service.settings import Settings, SettingsError, load_settings
from service.signals import StopFlag
from service.steptimes import StepTimes
from service.supervisor import EXIT_BAD_SETTINGS
from trainer.checkpoint import step_checkpoints
from trainer.data import DataError
from trainer.evaluate import EvalSetError
from trainer.loop import FileOutcome, Trainer

log = logging.getLogger(__name__)


class StepHook:
    """Called by the trainer before every optimizer step: stop, pause, lease, heartbeat."""

    def __init__(self, worker: Worker, record: FileRecord) -> None:
        self.worker = worker
        self.record = record
        self.reason: str | None = None
        self._next_poll = 0.0
        self._next_beat = 0.0
        self._steps_recorded = record.start_step is not None

    def __call__(self) -> str | None:
        worker = self.worker
        if worker.stop():
            self.reason = "stop"
            return self.reason
        now = time.monotonic()
        if not self._steps_recorded and worker.trainer.state.current_file is not None:
            current = worker.trainer.state.current_file
            worker.ledger.set_steps(
                self.record.id, start_step=current.start_step, target_step=current.target_step
            )
            self._steps_recorded = True
        report = worker.trainer.last_report
        if report is not None:
            worker.step_times.observe(report.step, report.seconds)
        if now >= self._next_poll:
            self._next_poll = now + worker.settings.worker.poll_s
            control = worker.ledger.get_control()
            if control.desired_state is DesiredState.PAUSED:
                self.reason = "pause"
                return self.reason
            if worker.cancel_requested(self.record):
                self.reason = "cancel"
                return self.reason
            if worker.requests.rollback_wanted(control):
                self.reason = "rollback"
                return self.reason
            worker.requests.serve_at_boundary(control)
        if now >= self._next_beat:
            self._next_beat = now + worker.settings.worker.heartbeat_s
            lease_s = worker.settings.ledger.lease_s
            if not worker.ledger.renew_lease(self.record.id, worker_id=worker.id, lease_s=lease_s):
                self.reason = "lease_lost"
                return self.reason
            worker.beat(WorkerState.TRAINING, file=self.record)
        return None


class Worker:
    """Owns the model and the lineage for the life of the process."""

    def __init__(self, settings: Settings, *, stop: StopFlag) -> None:
        self.settings = settings
        self.stop = stop
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.started_at = datetime.now(UTC)
        self.ledger = Ledger.open(
            settings.database_url(), busy_timeout_ms=settings.ledger.busy_timeout_ms
        )
        self.trainer: Trainer | None = None
        self.step_times = StepTimes()
        self.requests: OperatorRequests | None = None

    def beat(self, state: WorkerState, *, file: FileRecord | None = None, message=None) -> None:
        trainer = self.trainer
        report = trainer.last_report if trainer else None
        current = trainer.state.current_file if trainer else None
        self.ledger.heartbeat(
            worker_id=self.id,
            pid=os.getpid(),
            state=state,
            model_loaded=trainer is not None,
            started_at=self.started_at,
            global_step=trainer.state.global_step if trainer else None,
            file_id=file.id if file else None,
            start_step=current.start_step if current else None,
            target_step=current.target_step if current else None,
            loss=report.loss if report else None,
            lr=report.lr if report else None,
            tokens_per_s=report.tokens_per_s if report and file else None,
            eta_s=report.eta_s if report and file else None,
            message=message,
            extra=self.extra() if trainer else None,
        )

    def extra(self) -> dict:
        """Counters for /metrics: they live in the worker, so they travel in the heartbeat."""
        state = self.trainer.state
        return {
            "tokens_processed": state.tokens_processed,
            "nan_skips_total": state.nan_skips_total,
            "rollbacks": state.rollbacks,
            "oom_recoveries": state.oom_recoveries,
            **self.step_times.export(),
        }

    # ----------------------------------------------------------------- life
    def run(self) -> int:
        self.beat(WorkerState.STARTING)
        try:
            self.trainer = Trainer.open(
                spec=self.settings.lineage_spec(),
                train=self.settings.train_config(),
                paths=self.settings.run_paths(),
                # A replaced worker may still be shutting down: wait for its lineage lock.
                lock_wait_s=self.settings.worker.stop_grace_s,
                evaluation=self.settings.eval_config(),
                gold=self.settings.gold_config(),
                export=self.settings.export_config(),
            )
        except EvalSetError as exc:
            # A settings problem, like a bad key: restarting cannot fix it.
            log.error("%s", exc)
            self.beat(WorkerState.ERROR, message=str(exc))
            return EXIT_BAD_SETTINGS
        self.attach(self.trainer)
        self.requests = OperatorRequests(self)
        try:
            first = self.reconcile()
            self.beat(WorkerState.IDLE)
            log.info("worker %s ready at global step %d", self.id, self.trainer.state.global_step)
            self.loop(first)
        finally:
            self.beat(WorkerState.STOPPING)
            self.trainer.finish()
        return 0

    def attach(self, trainer: Trainer) -> None:
        """Hook a (re)opened trainer's checkpoints to the ledger."""
        trainer.on_checkpoint = self.record_checkpoint
        trainer.on_gold = self.record_gold

    def record_checkpoint(self, path: Path, step: int, removed: list[Path]) -> None:
        """Keep the ledger's list of checkpoints in step with the folder."""
        self.ledger.record_checkpoint(name=path.name, kind="step", step=step, path=str(path))
        self.ledger.forget_checkpoints(p.name for p in removed)

    def record_gold(self, path: Path, step: int) -> None:
        self.ledger.record_checkpoint(name=path.name, kind="gold", step=step, path=str(path))

    def sync_checkpoints(self) -> None:
        """Make the ledger's list of step checkpoints match the folder."""
        on_disk = step_checkpoints(self.settings.paths.checkpoints)
        for step, path in on_disk:
            self.ledger.record_checkpoint(name=path.name, kind="step", step=step, path=str(path))
        names = {path.name for _, path in on_disk}
        self.ledger.forget_checkpoints(
            c["name"] for c in self.ledger.list_checkpoints(kind="step") if c["name"] not in names
        )

    def reconcile(self) -> FileRecord | None:
        """Bring the ledger in line with the checkpoint; return the file to resume first."""
        state = self.trainer.state
        self.sync_checkpoints()
        # The lineage lock makes this the only worker: claims of earlier ones are void.
        for record in self.ledger.list_files(states=[FileState.TRAINING], limit=10_000)[0]:
            self.ledger.release(record.id, worker_id=record.lease_owner)
        for record in self.ledger.queue_order():
            done = state.completed(record.sha256)
            if done is not None:
                log.info(
                    "file #%d %s was already trained (steps %d-%d)",
                    record.id,
                    record.name,
                    done.start_step,
                    done.end_step,
                )
                self.ledger.mark_done_from_checkpoint(
                    record.sha256, start_step=done.start_step, end_step=done.end_step
                )
        return self.resume_target()

    def resume_target(self) -> FileRecord | None:
        """The queued record of the file the lineage is in the middle of, if any; a lineage
        whose file has no such record any more (cancelled, removed) abandons it."""
        current = self.trainer.state.current_file
        if current is None:
            return None
        for record in self.ledger.find_by_sha(current.sha256):
            if record.state in (FileState.QUEUED, FileState.TRAINING):
                if record.cancel_requested_at is not None:
                    # Cancelled while training, and a crash came before the worker acted.
                    self.finish_cancel(record)
                    return None
                return record
        self.trainer.abandon_current(
            reason="the ledger has no queued file with this content (cancelled or removed)"
        )
        return None

    def loop(self, first: FileRecord | None) -> None:
        poll_s = self.settings.worker.poll_s
        lease_s = self.settings.ledger.lease_s
        pending = first
        last_beat = 0.0
        while not self.stop():
            if self.ledger.get_control().desired_state is DesiredState.PAUSED:
                self.hold_paused(file=None)
                continue
            pending = pending or self.resume_target()
            if pending is not None:
                record = self.ledger.claim(pending.id, worker_id=self.id, lease_s=lease_s)
                pending = None
                if record is None:
                    self.trainer.abandon_current(
                        reason="its ledger record can no longer be claimed"
                    )
                    continue
            else:
                self.ledger.reap_expired()
                record = self.ledger.claim_next(worker_id=self.id, lease_s=lease_s)
            if record is None:
                control = self.ledger.get_control()
                if self.requests.rollback_wanted(control):
                    self.requests.roll_back(control, file=None)
                    continue
                self.requests.serve_at_boundary(control)
                if time.monotonic() - last_beat >= self.settings.worker.heartbeat_s:
                    self.beat(WorkerState.IDLE)
                    last_beat = time.monotonic()
                time.sleep(poll_s)
                continue
            self.train(record)

    def train(self, record: FileRecord) -> None:
        trainer = self.trainer
        done = trainer.state.completed(record.sha256)
        if done is not None:
            self.ledger.complete(record.id, start_step=done.start_step, end_step=done.end_step)
            return
        current = trainer.state.current_file
        if current is not None and current.sha256 != record.sha256:
            # The loop claims the lineage's own file first; this is a ledger changed under us.
            self.ledger.release(record.id, worker_id=self.id)
            return
        limit = self.settings.worker.max_attempts
        if record.attempts > limit:
            reason = (
                f"{record.name}: training crashed the worker {record.attempts - 1} times "
                f"(worker.max_attempts = {limit}); the worker log has the errors"
            )
            log.error("file #%d failed: %s", record.id, reason)
            self.ledger.fail(record.id, error=reason)
            trainer.events.emit("file_failed", id=record.id, file=record.name, reason=reason)
            if current is not None:
                trainer.abandon_current(reason=reason)
            return
        record = self.settled(record)
        try:
            data = trainer.prepare(Path(record.path), sha256=record.sha256)
        except (DataError, OSError) as exc:
            reason = f"{record.name}: {exc}" if isinstance(exc, OSError) else str(exc)
            log.error("file #%d failed: %s", record.id, reason)
            self.ledger.fail(record.id, error=reason)
            trainer.events.emit("file_failed", id=record.id, file=record.name, reason=reason)
            return
        hook = StepHook(self, record)
        while True:
            hook.reason = None
            try:
                outcome = trainer.train_file(data, name=record.name, should_stop=hook)
            except Exception as exc:
                # Crash the worker (the supervisor restarts it and the file is retried, up to
                # worker.max_attempts), but leave the reason where the API can show it.
                log.exception("training file #%d failed", record.id)
                self.beat(WorkerState.ERROR, file=record, message=f"{type(exc).__name__}: {exc}")
                raise
            if outcome is FileOutcome.COMPLETED:
                finished = trainer.state.files_completed[-1]
                self.ledger.complete(
                    record.id, start_step=finished.start_step, end_step=finished.end_step
                )
                self.beat(WorkerState.IDLE)
                return
            if hook.reason == "cancel":
                self.finish_cancel(record)
                return
            if hook.reason == "rollback":
                self.requests.roll_back(self.ledger.get_control(), file=record)
                return
            if hook.reason == "pause":
                if self.hold_paused(file=record) == "rollback":
                    return
                if self.stop():
                    self.ledger.release(record.id, worker_id=self.id)
                    return
                if self.cancel_requested(record):
                    self.finish_cancel(record)
                    return
                continue  # resume the same file, same step, same resident model
            if hook.reason == "lease_lost":
                # A step outlasted the lease and the reaper requeued the file; this worker
                # holds the lineage lock, so it is still the one to train it.
                again = self.ledger.claim(
                    record.id, worker_id=self.id, lease_s=self.settings.ledger.lease_s
                )
                if again is not None:
                    log.warning(
                        "claim on file #%d lapsed during a step; claimed it again", record.id
                    )
                    continue
                trainer.abandon_current(reason=f"file #{record.id} was taken out of the queue")
                return
            self.ledger.release(record.id, worker_id=self.id)
            return

    def settled(self, record: FileRecord, *, wait_s: float = 5.0) -> FileRecord:
        """The record once its file is where the ledger says.

        The watcher records a drop before moving it out of the inbox's top level (so a
        crash cannot lose a moved file); a claim in between sees the old path for a moment.
        """
        deadline = time.monotonic() + wait_s
        while not Path(record.path).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
            record = self.ledger.get_file(record.id) or record
        return record

    def cancel_requested(self, record: FileRecord) -> bool:
        current = self.ledger.get_file(record.id)
        return current is not None and current.cancel_requested_at is not None

    def finish_cancel(self, record: FileRecord) -> None:
        """Stop a file on request: what it taught so far stays in the weights."""
        trainer = self.trainer
        step = trainer.state.global_step
        trainer.abandon_current(reason=f"cancelled on request at step {step}")
        cancelled = self.ledger.finish_cancel(record.id, step=step)
        trainer.events.emit(
            "file_cancelled", id=record.id, file=record.name, step=step, reason=cancelled.error
        )
        self.beat(WorkerState.IDLE)

    def hold_paused(self, *, file: FileRecord | None) -> str | None:
        """Hold the model (already checkpointed at a step boundary) until resumed or stopped;
        ``"rollback"`` if a rollback to gold was served meanwhile (``file`` is then over)."""
        trainer = self.trainer
        step = trainer.state.global_step
        if trainer.unsaved_steps:
            trainer.save_checkpoint(reason="pause")
        trainer.events.emit("paused", step=step, file=file.name if file else None)
        log.info("paused at step %d", step)
        lease_s = self.settings.ledger.lease_s
        while not self.stop():
            if file is not None:
                self.ledger.renew_lease(file.id, worker_id=self.id, lease_s=lease_s)
            self.beat(WorkerState.PAUSED, file=file)
            control = self.ledger.get_control()
            if self.requests.rollback_wanted(control):
                if self.requests.roll_back(control, file=file):
                    return "rollback"
                trainer = self.trainer
            self.requests.serve_at_boundary(control)
            if file is not None and self.cancel_requested(file):
                return None  # a paused worker is at a step boundary: the cancel can act now
            if control.desired_state is DesiredState.RUNNING:
                trainer.events.emit("resumed", step=trainer.state.global_step)
                log.info("resumed at step %d", trainer.state.global_step)
                return None
            time.sleep(self.settings.worker.poll_s)
        return None


def die_with_parent() -> None:
    """Ask Linux to SIGTERM us if the supervisor dies, so no worker outlives its service."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the lineage lock still keeps a second worker out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", type=Path, default=None, help="traind.toml (or $TRAIND_CONFIG)")
    parser.add_argument("--log-level", default=os.environ.get("TRAIND_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s worker: %(message)s",
        datefmt="%H:%M:%S",
    )
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        return 1
    stop = StopFlag()
    stop.install()
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return 2
    return Worker(settings, stop=stop).run()


if __name__ == "__main__":
    sys.exit(main())
