"""The training worker: a resident model that trains queued files, forever.

Run by the supervisor of ``traind serve`` as ``python -m service.worker.process [--config F]``
(settings also from ``TRAIND_*`` variables, like every traind command). It loads the
model once and keeps it in memory between files and while paused. It shares only the
ledger, the checkpoints and the event log with the other processes: control (pause,
resume) arrives through the ledger, progress leaves through heartbeats.

At start the checkpoint is the truth of what was trained (:mod:`service.worker.reconcile`).
SIGTERM checkpoints at the next step boundary, releases the claim and exits 0. A full
disk makes it wait and retry, never fail (:mod:`service.diskspace`). A crash is counted
against the file it was training by the supervisor, which saw it (design rule 13).
"""

from __future__ import annotations

import argparse
import contextlib
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

from service.config.settings import Settings, SettingsError, load_settings
from service.daemon.supervisor import EXIT_BAD_SETTINGS, WORKER_ID_ENV
from service.diskspace import SpaceWait, StopWaitingError
from service.ledger import DesiredState, FileRecord, FileState, Ledger, WorkerState
from service.signals import StopFlag
from service.worker.reconcile import reconcile, resettle, resume_target
from service.worker.refusal import reject_after_intake
from service.worker.requests import OperatorRequests
from service.worker.stephook import StepHook
from service.worker.steptimes import StepTimes
from trainer.checkpoint import step_checkpoints
from trainer.data import DataError
from trainer.evaluate import EvalSetError
from trainer.lineage import LineageError
from trainer.loop import FileOutcome, Trainer
from trainer.records.space import DiskFullError
from trainer.records.state import CompletedFile
from trainer.tokenizer import TokenizerError

log = logging.getLogger(__name__)


class Worker:
    """Owns the model and the lineage for the life of the process."""

    def __init__(self, settings: Settings, *, stop: StopFlag) -> None:
        self.settings = settings
        self.stop = stop
        self.id = (
            os.environ.get(WORKER_ID_ENV)
            or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.started_at = datetime.now(UTC)
        self.ledger = Ledger.open(
            settings.database_url(), busy_timeout_ms=settings.ledger.busy_timeout_ms
        )
        self.trainer: Trainer | None = None
        self.step_times = StepTimes()
        self.requests: OperatorRequests | None = None
        self.current: FileRecord | None = None
        """The file being trained, for the heartbeat while waiting for disk space."""
        self._idle_beat_at = 0.0
        self.space = SpaceWait(
            retry_s=settings.worker.disk_retry_s,
            stop=stop,
            report=self._report_space,
            events=lambda event, fields: self.trainer.events.emit(event, **fields),
        )

    # ----------------------------------------------------------------- reports
    def beat(self, state: WorkerState, *, file: FileRecord | None = None, message=None) -> bool:
        """Report to the ledger; a full disk under the ledger only loses the report (then
        False)."""
        trainer = self.trainer
        report = trainer.last_report if trainer else None
        current = trainer.state.current_file if trainer else None
        if self.space.problem and state is not WorkerState.ERROR:
            state, message = WorkerState.ERROR, self.space.problem
        try:
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
        except DiskFullError as exc:
            # Said once per outage: the wait itself logs what is full.
            level = logging.DEBUG if self.space.problem else logging.WARNING
            log.log(level, "could not write the heartbeat: %s", exc)
            return False
        return True

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

    def _report_space(self, problem: str | None) -> None:
        if problem is not None:
            self.beat(WorkerState.ERROR, file=self.current, message=problem)
            if self.current is not None:
                # On a full ledger the lease stays as it is: the supervisor never reaps the
                # live worker's lease anyway.
                with contextlib.suppress(DiskFullError):
                    self.ledger.renew_lease(
                        self.current.id, worker_id=self.id, lease_s=self.settings.ledger.lease_s
                    )

    # ----------------------------------------------------------------- life
    def run(self) -> int:
        self.beat(WorkerState.STARTING)
        try:
            self.trainer = self.open_trainer(expected_lineage=self.expected_lineage())
        except (EvalSetError, LineageError, TokenizerError) as exc:
            # A settings or lineage problem: restarting cannot fix it, a person must.
            log.error("%s", exc)
            self.beat(WorkerState.ERROR, message=str(exc))
            return EXIT_BAD_SETTINGS
        except StopWaitingError:
            return 0
        self.requests = OperatorRequests(self)
        try:
            first = self.settle(reconcile)
            self.beat(WorkerState.IDLE)
            log.info("worker %s ready at global step %d", self.id, self.trainer.state.global_step)
            self.loop(first)
        except StopWaitingError:
            log.warning("stopping while waiting for disk space; unsaved steps are trained again")
        finally:
            self.beat(WorkerState.STOPPING)
            try:
                self.trainer.finish()
            except DiskFullError:
                self.trainer.close()
        return 0

    def open_trainer(self, **options) -> Trainer:
        """Open the lineage with the settings (waiting out a full disk) and hook it up."""
        settings = self.settings
        trainer = self.settle(
            lambda _worker: Trainer.open(
                spec=settings.lineage_spec(),
                train=settings.train_config(),
                paths=settings.run_paths(),
                # A replaced worker may still be shutting down: wait for its lineage lock.
                lock_wait_s=settings.worker.stop_grace_s,
                evaluation=settings.eval_config(),
                gold=settings.gold_config(),
                export=settings.export_config(),
                on_disk_full=self.space,
                **options,
            )
        )
        trainer.on_checkpoint = self.record_checkpoint
        trainer.on_gold = self.record_gold
        return trainer

    def expected_lineage(self) -> str | None:
        """Why a lineage must exist, from the ledger (design rule 15), if it says so."""
        done, total = self.ledger.list_files(states=[FileState.DONE], limit=1)
        if not total:
            return None
        first = done[0]
        return (
            f"the ledger records {total} file(s) as trained (e.g. #{first.id} {first.name}, "
            f"steps {first.start_step}-{first.end_step})"
        )

    def record_checkpoint(self, path: Path, step: int, removed: list[Path]) -> None:
        """Keep the ledger's list of checkpoints in step with the folder."""
        self.space.recovered()
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

    def settle(self, step):
        """``step(self)``, done again after waiting out a full disk until it gets through."""
        while True:
            try:
                return step(self)
            except DiskFullError as exc:
                self.space(exc)

    def loop(self, first: FileRecord | None) -> None:
        pending = first
        while not self.stop():
            try:
                pending = self.turn(pending)
            except DiskFullError as exc:
                # Raised between two steps (a ledger write, an event, the cache): the model
                # and the lineage are whole in memory. Wait, then pick up where it was.
                self.space(exc)
                pending = self.settle(resettle)

    def turn(self, pending: FileRecord | None) -> FileRecord | None:
        """One round of the loop: train the next file, or idle; the next pending record."""
        ledger, settings = self.ledger, self.settings
        lease_s = settings.ledger.lease_s
        if ledger.get_control().desired_state is DesiredState.PAUSED:
            self.requests.hold_paused(file=None)
            return pending
        pending = pending or resume_target(self)
        if pending is not None:
            record = ledger.claim(pending.id, worker_id=self.id, lease_s=lease_s)
            if record is None:
                self.trainer.park_current(reason="its ledger record can no longer be claimed")
                return None
        else:
            ledger.reap_expired(alive=self.id)
            record = ledger.claim_next(worker_id=self.id, lease_s=lease_s)
        if record is None:
            control = ledger.get_control()
            if self.requests.rollback_wanted(control):
                self.requests.roll_back(control, file=None)
                return None
            self.requests.serve_at_boundary(control)
            if time.monotonic() - self._idle_beat_at >= settings.worker.heartbeat_s:
                if self.beat(WorkerState.IDLE):
                    self.space.recovered()
                self._idle_beat_at = time.monotonic()
            time.sleep(settings.worker.poll_s)
            return None
        self.current = record
        try:
            self.train(record)
        finally:
            self.current = None
        return None

    def train(self, record: FileRecord) -> None:
        trainer, ledger = self.trainer, self.ledger
        done = trainer.state.completed(record.sha256)
        if done is not None:
            self.complete(record, done)
            return
        current = trainer.state.current_file
        if current is not None and current.sha256 != record.sha256:
            # The loop claims the lineage's own file first; this is a ledger changed under us.
            ledger.release(record.id, worker_id=self.id)
            return
        limit = self.settings.worker.max_attempts
        if record.attempts >= limit:
            # The supervisor fails a file at its limit; this one reached it under a higher
            # setting (worker.max_attempts was lowered since).
            self.fail(
                record,
                reason=f"{record.name}: {record.error or 'it crashed the worker'} "
                f"({record.attempts} crashes, worker.max_attempts = {limit})",
            )
            return
        record = self.settled(record)
        try:
            data = trainer.prepare(Path(record.path), sha256=record.sha256)
        except DiskFullError:
            raise
        except DataError as exc:
            reject_after_intake(self, record, reason=str(exc))
            return
        except OSError as exc:
            self.fail(record, reason=f"{record.name}: {exc}")
            return
        hook = StepHook(self, record)
        while True:
            hook.reason = None
            try:
                outcome = trainer.train_file(data, name=record.name, should_stop=hook)
            except (DiskFullError, StopWaitingError):
                raise
            except Exception as exc:
                # Crash the worker (the supervisor restarts it and counts the crash against
                # the file, up to worker.max_attempts), but leave the reason for the API.
                log.exception("training file #%d failed", record.id)
                self.beat(WorkerState.ERROR, file=record, message=f"{type(exc).__name__}: {exc}")
                raise
            if outcome is FileOutcome.COMPLETED:
                self.complete(record, trainer.state.files_completed[-1])
                self.beat(WorkerState.IDLE)
                return
            if not self.after_stop(record, hook.reason):
                return

    def complete(self, record: FileRecord, done: CompletedFile) -> None:
        """The lineage has trained the file (``done``): the ledger says so, and by whom."""
        self.ledger.complete(
            record.id,
            start_step=done.start_step,
            end_step=done.end_step,
            lineage_id=self.trainer.state.lineage_id,
        )

    def after_stop(self, record: FileRecord, reason: str | None) -> bool:
        """Act on why the trainer stopped mid-file; True to go on training the file."""
        requests = self.requests
        if reason == "cancel":
            requests.finish_cancel(record)
            return False
        if reason == "rollback":
            requests.roll_back(self.ledger.get_control(), file=record)
            return False
        if reason == "pause":
            if requests.hold_paused(file=record) == "rollback":
                return False
            if self.stop():
                self.ledger.release(record.id, worker_id=self.id)
                return False
            if requests.cancel_requested(record):
                requests.finish_cancel(record)
                return False
            return True  # resume the same file, same step, same resident model
        if reason == "lease_lost":
            # Only another process can have taken the claim (the supervisor never reaps
            # ours); this worker holds the lineage lock, so it is still the one to train it.
            again = self.ledger.claim(
                record.id, worker_id=self.id, lease_s=self.settings.ledger.lease_s
            )
            if again is not None:
                log.warning("claim on file #%d was lost; claimed it again", record.id)
                return True
            self.trainer.park_current(reason=f"file #{record.id} was taken out of the queue")
            return False
        self.ledger.release(record.id, worker_id=self.id)
        return False

    def fail(self, record: FileRecord, *, reason: str) -> None:
        """The file cannot be trained now: failed, with the reason; what the lineage holds
        of it is parked, so a retry continues it."""
        log.error("file #%d failed: %s", record.id, reason)
        self.ledger.fail(record.id, error=reason)
        self.trainer.events.emit("file_failed", id=record.id, file=record.name, reason=reason)
        current = self.trainer.state.current_file
        if current is not None and current.sha256 == record.sha256:
            self.trainer.park_current(reason=reason)

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


def die_with_parent() -> None:
    """Ask Linux to SIGTERM us if the supervisor dies, so no worker outlives its service."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the lineage lock still keeps a second worker out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.worker.process", description=__doc__.split("\n")[0]
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
