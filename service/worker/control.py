"""What the operator wants of the worker now: one reading, one directive.

The operator speaks through the ledger's control row (pause or run; the times of the
latest save, export, evaluation and rollback-to-gold requests) and a file's cancel flag; the
supervisor speaks through SIGTERM; another process may take the worker's claim on its
file. :meth:`Steering.look` reads all of it once, as a :class:`Situation`, and
:func:`decide` turns it into one :class:`Directive` (:meth:`Steering.steer` does both and
serves save, export and evaluation requests on the way). The worker's three loops use it: before
every optimizer step of a file (:mod:`service.worker.stephook`), while idle
(``Worker.turn``) and while paused (``Worker.hold``, :mod:`service.worker.process`).

When several things are asked at once, the first row that holds wins:

| # | directive       | when                              | the worker                        |
|---|-----------------|-----------------------------------|-----------------------------------|
| 1 | `STOP`          | SIGTERM or Ctrl-C                 | checkpoints, releases, exits 0    |
| 2 | `ROLL_BACK`     | a rollback to gold not served yet | checkpoints, goes back to gold    |
| 3 | `SERVE_REQUEST` | a save, export or eval not served | serves it; the next row decides   |
| 4 | `CANCEL`        | the file in training is cancelled | checkpoints, parks, cancels it    |
| 5 | `PAUSE`         | the control row says `paused`     | checkpoints, holds; serves 1-4    |
| 6 | `LEASE_LOST`    | its claim on the file was taken   | claims it again, or parks it      |
| 7 | `GO_ON`         | none of the above                 | trains, or waits for a file       |

Why this order: a stop ends the process, and its checkpoint covers a save asked for
meanwhile; a rollback waits in the ledger for the next worker. A rollback replaces the
weights every later row would act on, and it cancels the file in training itself (with a
reason saying so). Save, export and evaluation end nothing, so they are served at once and the rest
of the same reading decides. Pausing comes after them because a paused worker still
serves them at once, and a lost lease is only looked at while training.

The control row is read every ``worker.poll_s`` while training, idle or paused; the lease
is renewed every ``worker.heartbeat_s`` while training; the stop flag is looked at before
every step.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from service.ledger import Control, DesiredState, FileRecord, Ledger
from trainer.loop import Trainer
from trainer.records.state import TrainingState

KINDS = ("checkpoint", "export", "eval")
"""The requests served where they are decided, by ``<kind>_requested_at`` in the row."""


class Directive(enum.Enum):
    """What the worker is to do now; the value is the reason a checkpoint taken because
    of it records."""

    STOP = "stop"
    ROLL_BACK = "rollback"
    SERVE_REQUEST = "requested"
    CANCEL = "cancel"
    PAUSE = "pause"
    LEASE_LOST = "lease_lost"
    GO_ON = "go_on"


@dataclass(frozen=True, kw_only=True)
class Situation:
    """What the worker knows at one moment; what it did not look at is False."""

    stopping: bool = False
    """A stop signal came."""
    control: Control | None = None
    """The control row as read (None if it was not read)."""
    rollback_wanted: bool = False
    """A rollback to gold was asked that this lineage has not served."""
    requests: tuple[str, ...] = ()
    """The save, export and evaluation requests (of :data:`KINDS`) not yet served."""
    cancel_requested: bool = False
    """The file in training is to be cancelled."""
    paused: bool = False
    """The operator wants the worker paused."""
    lease_lost: bool = False
    """The claim on the file in training could not be renewed."""


def decide(situation: Situation) -> Directive:
    """The one directive for ``situation``: the first row of the table above that holds."""
    if situation.stopping:
        return Directive.STOP
    if situation.rollback_wanted:
        return Directive.ROLL_BACK
    if situation.requests:
        return Directive.SERVE_REQUEST
    if situation.cancel_requested:
        return Directive.CANCEL
    if situation.paused:
        return Directive.PAUSE
    if situation.lease_lost:
        return Directive.LEASE_LOST
    return Directive.GO_ON


def rollback_wanted(control: Control, state: TrainingState) -> bool:
    """A rollback was asked after the newest one this lineage served, and after the
    lineage began (a request older than the lineage is never replayed onto it)."""
    requested = control.rollback_requested_at
    if requested is None:
        return False
    served = [state.created_at] + ([state.rollback_served] if state.rollback_served else [])
    return all(requested > datetime.fromisoformat(t) for t in served)


class Steering:
    """Reads the operator's wishes, and remembers which save and export requests the worker
    served.

    Save and export requests older than the worker's start count as served: the checkpoint
    it resumed from already covers a save. A rollback is different: the lineage itself
    records the newest request it served (``rollback_served`` in its checkpoint), so a
    request is carried out exactly once whatever crashes come between.
    """

    def __init__(self, ledger: Ledger, *, stop: Callable[[], bool]) -> None:
        self._ledger = ledger
        self._stop = stop
        control = ledger.get_control()
        self._served: dict[str, datetime | None] = {
            kind: _requested_at(control, kind) for kind in KINDS
        }

    def glance(self) -> Situation:
        """Only the stop flag: what is looked at between two readings of the ledger."""
        return Situation(stopping=self._stop())

    def look(self, state: TrainingState, *, file: FileRecord | None = None) -> Situation:
        """One reading of the control row (and of ``file``'s cancel flag), for the lineage
        in ``state``."""
        control = self._ledger.get_control()
        return Situation(
            stopping=self._stop(),
            control=control,
            rollback_wanted=rollback_wanted(control, state),
            requests=tuple(kind for kind in KINDS if self._pending(control, kind)),
            cancel_requested=file is not None and self._cancel_requested(file),
            paused=control.desired_state is DesiredState.PAUSED,
        )

    def steer(
        self, trainer: Trainer, *, file: FileRecord | None = None
    ) -> tuple[Directive, Situation]:
        """What the operator wants now, from one :meth:`look`; save and export requests are
        served here (``trainer`` is at an optimizer-step boundary) and the rest of the same
        situation decides. The directive, and the situation it came from."""
        situation = self.look(trainer.state, file=file)
        directive = decide(situation)
        if directive is Directive.SERVE_REQUEST:
            self._serve(trainer, situation)
            situation = dataclasses.replace(situation, requests=())
            directive = decide(situation)
        return directive, situation

    def _cancel_requested(self, record: FileRecord) -> bool:
        current = self._ledger.get_file(record.id)
        return current is not None and current.cancel_requested_at is not None

    def _pending(self, control: Control, kind: str) -> bool:
        requested = _requested_at(control, kind)
        return requested is not None and requested != self._served[kind]

    def _serve(self, trainer: Trainer, situation: Situation) -> None:
        control = situation.control
        for kind in situation.requests:
            # Marked first: one that fails is not tried again at every poll; the operator
            # looks for its event and asks again (docs/api.md).
            self._served[kind] = _requested_at(control, kind)
            if kind == "checkpoint":
                if trainer.unsaved_steps:
                    trainer.save_checkpoint(reason="requested")
            elif kind == "eval":
                trainer.evaluate(trigger="request")
            else:
                trainer.export(reason="requested")


def _requested_at(control: Control, kind: str) -> datetime | None:
    return getattr(control, f"{kind}_requested_at")
