"""The training worker: a resident model that trains queued files, forever.

Run by the supervisor of ``traind serve`` as ``python -m service.worker --settings F``
(:mod:`service.worker.launch`), F the settings in force its main process wrote
(:mod:`service.config.in_force`); between files it takes up a newer revision of them (a
reload). Run by hand, ``--config F`` reads
``traind.toml`` (and ``TRAIND_*`` variables) like every traind command. It loads the
model once and keeps it in memory between files and while paused. It shares only the
ledger, the checkpoints and the event log with the other processes: control (pause,
resume, requests) arrives through the ledger, progress leaves through heartbeats. Its
three loops (idle, training a file, paused) decide what the operator wants in one place,
:mod:`service.worker.control`.

At start the checkpoint is the truth of what was trained (:mod:`service.worker.reconcile`).
SIGTERM checkpoints at the next step boundary, releases the claim and exits 0. A full
disk makes it wait and retry, never fail (:mod:`service.diskspace`). A crash is counted
against the file it was training by the supervisor, which saw it (ARCHITECTURE.md rule 13).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import time
import uuid

from service.config.in_force import InForce
from service.config.settings import Settings
from service.diskspace import SpaceWait, StopWaitingError
from service.ledger import Control, FileRecord, Ledger, WorkerState
from service.signals import EXIT_BAD_SETTINGS, WORKER_ID_ENV, StopFlag, Wakeup
from service.worker import requests
from service.worker.admission import admit, settled, tokenize
from service.worker.control import Directive, Situation, Steering
from service.worker.opening import expected_lineage, ledger_sources, open_trainer
from service.worker.reconcile import complete, reconcile, resettle, resume_target, sync_checkpoints
from service.worker.reports import Reports
from service.worker.revisions import SettingsRevisions
from service.worker.stephook import StepHook
from trainer.data import TokenizedFile
from trainer.evaluate import EvalSetError
from trainer.gold import GOLD
from trainer.lineage import LineageError
from trainer.loop import FileOutcome, Trainer
from trainer.records.events import EventLog
from trainer.records.storage import DiskFullError
from trainer.tokenizer import TokenizerError

log = logging.getLogger(__name__)


class Worker:
    """Owns the model and the lineage for the life of the process."""

    def __init__(
        self,
        settings: Settings,
        *,
        stop: StopFlag,
        revisions: SettingsRevisions | None = None,
        wakeup: Wakeup | None = None,
    ) -> None:
        self.settings = settings
        self.stop = stop
        self.wakeup = wakeup or Wakeup()
        """Where the idle and paused loops wait: traind serve's wake cuts it short."""
        self.revisions = revisions
        """Under traind serve: the settings in force these are a revision of."""
        self.id = (
            os.environ.get(WORKER_ID_ENV)
            or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self.ledger = Ledger.open(
            settings.database_url(), busy_timeout_ms=settings.ledger.busy_timeout_ms
        )
        self.trainer: Trainer | None = None
        self.steering: Steering | None = None
        """Set once the lineage is open: requests made while the worker started are dropped."""
        self.current: FileRecord | None = None
        """The file being trained, for the heartbeat while waiting for disk space."""
        self._idle_beat_at = 0.0
        log_before_open = EventLog(settings.run_paths().events)  # a full disk as it opens
        self.space = SpaceWait(
            retry_s=settings.worker.disk_retry_s,
            stop=stop,
            report=self._report_space,
            events=lambda event, fields: (
                self.trainer.events if self.trainer else log_before_open
            ).emit(event, **fields),
        )
        self.reports = Reports(self.ledger, worker_id=self.id, space=self.space)
        self.reports.settings_revision = revisions.held if revisions else None

    # ----------------------------------------------------------------- reports
    def beat(self, state: WorkerState, *, file: FileRecord | None = None, message=None) -> bool:
        """Report to the ledger (False if a full disk lost the report)."""
        return self.reports.beat(state, trainer=self.trainer, file=file, message=message)

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
            self.trainer = self.open_lineage(expected_lineage=expected_lineage(self.ledger))
        except (EvalSetError, LineageError, TokenizerError) as exc:
            # A settings or lineage problem: restarting cannot fix it, a person must.
            log.error("%s", exc)
            self.beat(WorkerState.ERROR, message=str(exc))
            return EXIT_BAD_SETTINGS
        except StopWaitingError:
            return 0
        self.steering = Steering(self.ledger, stop=self.stop)
        try:
            first = self.settle(
                lambda: reconcile(
                    self.trainer,
                    self.ledger,
                    checkpoints=self.settings.paths.checkpoints,
                    finish_cancel=self.cancel,
                )
            )
            self.beat(WorkerState.IDLE)
            log.info("worker %s ready at global step %d", self.id, self.trainer.state.global_step)
            self.loop(first)
        except StopWaitingError:
            log.warning("stopping while waiting for disk space; unsaved steps are trained again")
        finally:
            self.beat(WorkerState.STOPPING)
            if self.trainer is not None:  # None if stopped while reopening (reopen_with)
                try:
                    self.trainer.finish()
                except DiskFullError:
                    self.trainer.close()
        return 0

    def open_lineage(self, **options) -> Trainer:
        """Open the lineage with the settings (waiting out a full disk) and hook it up."""
        trainer = self.settle(
            lambda: open_trainer(
                self.settings,
                # A replaced worker may still be shutting down: wait for its lineage lock.
                lock_wait_s=self.settings.worker.stop_grace_s,
                on_disk_full=self.space,
                source_of=ledger_sources(self.ledger),
                **options,
            )
        )
        trainer.checkpointer.on_checkpoint = self.reports.checkpoint_saved
        trainer.checkpointer.on_gold = self.reports.gold_saved
        return trainer

    def settle(self, step):
        """``step()``, done again after waiting out a full disk until it gets through."""
        while True:
            try:
                return step()
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
                pending = self.settle(
                    lambda: resettle(
                        self.trainer, self.ledger, worker_id=self.id, finish_cancel=self.cancel
                    )
                )

    def steer(self, *, file: FileRecord | None = None) -> tuple[Directive, Situation]:
        """What the operator wants now (:mod:`service.worker.control`)."""
        return self.steering.steer(self.trainer, file=file)

    def turn(self, pending: FileRecord | None) -> FileRecord | None:
        """One round of the loop: train the next file, or idle; the next pending record."""
        directive, situation = self.steer()
        if directive is Directive.STOP:
            return pending
        if directive is Directive.PAUSE:
            self.hold(file=None)
            return pending
        if pending is None:
            self.follow_settings()
        pending = pending or resume_target(self.trainer, self.ledger, finish_cancel=self.cancel)
        if directive is Directive.ROLL_BACK and pending is None:
            # With a file in progress the rollback waits for its first step: it cancels it.
            self.roll_back(situation.control, file=None)
            return None
        record = self.claim(pending)
        if record is None:
            if pending is None:
                self.idle()
            return None
        self.current = record
        try:
            self.train(record)
        finally:
            self.current = None
        return None

    def claim(self, pending: FileRecord | None) -> FileRecord | None:
        """Claim ``pending`` (the lineage's file in progress), else the next queued file."""
        ledger, lease_s = self.ledger, self.settings.ledger.lease_s
        if pending is None:
            ledger.reap_expired(alive=self.id)
            return ledger.claim_next(worker_id=self.id, lease_s=lease_s)
        record = ledger.claim(pending.id, worker_id=self.id, lease_s=lease_s)
        if record is None:
            self.trainer.park_current(reason="its ledger record can no longer be claimed")
        return record

    def idle(self) -> None:
        """Nothing to train: report now and then, and wait a poll."""
        settings = self.settings
        if time.monotonic() - self._idle_beat_at >= settings.worker.heartbeat_s:
            if self.beat(WorkerState.IDLE):
                self.space.recovered()
            self._idle_beat_at = time.monotonic()
        self.wakeup.wait(settings.worker.poll_s)

    # ----------------------------------------------------------------- one file
    def train(self, record: FileRecord) -> None:
        """Train a claimed file to its end, or until a directive stops it for good."""
        trainer, ledger = self.trainer, self.ledger
        max_attempts = self.settings.worker.max_attempts
        if not admit(
            record, trainer=trainer, ledger=ledger, worker_id=self.id, max_attempts=max_attempts
        ):
            return
        record = settled(record, ledger=ledger)
        data = tokenize(record, trainer=trainer, ledger=ledger, inbox=self.settings.paths.inbox)
        if data is None:
            return
        hook = StepHook(
            record,
            trainer=trainer,
            ledger=ledger,
            steering=self.steering,
            reports=self.reports,
            settings=self.settings,
        )
        while self.train_round(record, data, hook):
            pass

    def train_round(self, record: FileRecord, data: TokenizedFile, hook: StepHook) -> bool:
        """Train until the file ends or a directive stops it; True to go on with the file."""
        # A rollback refused while paused may have opened the lineage again.
        trainer = hook.trainer = self.trainer
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
            complete(trainer, self.ledger, record, trainer.state.files_completed[-1])
            self.beat(WorkerState.IDLE)
            return False
        return self.after_stop(record, hook.directive)

    def after_stop(self, record: FileRecord, directive: Directive) -> bool:
        """Act on the directive that stopped the trainer mid-file; True to go on training
        the file."""
        if directive is Directive.CANCEL:
            self.cancel(record)
            return False
        if directive is Directive.ROLL_BACK:
            # Read again: of two requests made before the worker got to them, the newest
            # is the one served (once).
            self.roll_back(self.ledger.get_control(), file=record)
            return False
        if directive is Directive.PAUSE:
            return self.after_pause(record)
        if directive is Directive.LEASE_LOST:
            return self.claim_again(record)
        self.ledger.release(record.id, worker_id=self.id)
        return False

    def after_pause(self, record: FileRecord) -> bool:
        """Hold ``record`` paused; True to resume it (same step, same resident model)."""
        directive = self.hold(file=record)
        if directive is Directive.ROLL_BACK:
            return False  # served while paused: the file is over
        if directive is Directive.GO_ON:
            return True
        return self.after_stop(record, directive)

    def claim_again(self, record: FileRecord) -> bool:
        """The claim on ``record`` was lost; True if it is this worker's again."""
        # Only another process can have taken the claim (the supervisor never reaps ours);
        # this worker holds the lineage lock, so it is still the one to train it.
        again = self.ledger.claim(
            record.id, worker_id=self.id, lease_s=self.settings.ledger.lease_s
        )
        if again is not None:
            log.warning("claim on file #%d was lost; claimed it again", record.id)
            return True
        self.trainer.park_current(reason=f"file #{record.id} was taken out of the queue")
        return False

    # ----------------------------------------------------------------- settings
    def follow_settings(self) -> None:
        """Between files, take up a newer revision of the settings in force (a reload the
        main process accepted): never in the middle of a file."""
        if self.revisions is None or self.trainer.state.current_file is not None:
            return
        found = self.revisions.newer()
        if found is not None:
            self.reopen_with(found)

    def reopen_with(self, found: InForce) -> None:
        """Close the lineage and open it again with ``found``'s settings: the path a
        restart takes (batch and settings changes handled as on a resume), from the
        checkpoint of the file that just ended, so nothing is lost or trained twice."""
        before, trainer = self.settings, self.trainer
        if trainer.unsaved_steps:
            trainer.save_checkpoint(reason="settings")
        self.trainer = None
        trainer.close()
        del trainer
        gc.collect()  # the old model goes before the new one is built (GPU memory)
        self.settings = found.settings
        try:
            self.trainer = self.open_lineage(expected_lineage=expected_lineage(self.ledger))
        except (EvalSetError, LineageError, TokenizerError) as exc:
            self.revisions.unusable(found.revision, reason=str(exc))
            self.settings = before
            self.trainer = self.open_lineage(expected_lineage=expected_lineage(self.ledger))
            return
        self.revisions.applied(found, step=self.trainer.state.global_step)
        self.reports.settings_revision = found.revision

    # ----------------------------------------------------------------- requests
    def hold(self, *, file: FileRecord | None) -> Directive:
        """Hold the model (checkpointed at a step boundary) while paused, serving what is
        asked meanwhile. The directive that ends the pause: GO_ON (resumed), STOP, CANCEL
        (of ``file``) or ROLL_BACK (served; ``file`` is then over)."""
        trainer = self.trainer
        step = trainer.state.global_step
        if trainer.unsaved_steps:
            trainer.save_checkpoint(reason="pause")
        trainer.events.emit("paused", step=step, file=file.name if file else None)
        log.info("paused at step %d", step)
        lease_s, poll_s = self.settings.ledger.lease_s, self.settings.worker.poll_s
        while not self.stop():
            if file is not None:
                self.ledger.renew_lease(file.id, worker_id=self.id, lease_s=lease_s)
            self.beat(WorkerState.PAUSED, file=file)
            directive, situation = self.steer(file=file)
            if directive is Directive.ROLL_BACK:
                if self.roll_back(situation.control, file=file):
                    return directive
                continue  # refused: look again at once at what else is asked
            if directive is Directive.GO_ON:
                step = self.trainer.state.global_step
                self.trainer.events.emit("resumed", step=step)
                log.info("resumed at step %d", step)
                return directive
            if directive is not Directive.PAUSE:
                return directive  # a paused worker is at a step boundary: it acts now
            self.wakeup.wait(poll_s)
        return Directive.STOP

    def roll_back(self, control: Control, *, file: FileRecord | None) -> bool:
        """Serve the rollback to gold ``control`` asks for; ``file`` (in training) is
        cancelled. False if it was refused."""
        checkpoints = self.settings.paths.checkpoints
        result = requests.roll_back_to_gold(
            self.trainer,
            request=control.rollback_requested_at.isoformat(),
            gold=checkpoints / GOLD,
            reopen=self.open_lineage,
        )
        self.trainer = result.trainer
        if not result.done:
            return False
        if file is not None:
            requests.cancel_for_rollback(self.trainer, self.ledger, file, step=result.from_step)
        sync_checkpoints(self.ledger, checkpoints)
        requests.mark_rolled_back(self.trainer, self.ledger)
        self.beat(WorkerState.IDLE)
        return True

    def cancel(self, record: FileRecord) -> None:
        """Stop ``record`` on request; what it taught stays, and a retry continues it."""
        requests.cancel_training(self.trainer, self.ledger, record)
        self.beat(WorkerState.IDLE)
