"""One decision of what the operator wants: the precedence table of
``service.worker.control``, and one reading of the ledger by ``Steering``."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from service.ledger import DesiredState, Ledger
from service.worker.control import Directive, Situation, Steering, decide
from trainer.records.state import TrainingState

# The table in the module docstring, top row first, with the fact that makes each hold.
TABLE = [
    (Directive.STOP, "stopping"),
    (Directive.ROLL_BACK, "rollback_wanted"),
    (Directive.SERVE_REQUEST, "requests"),
    (Directive.CANCEL, "cancel_requested"),
    (Directive.PAUSE, "paused"),
    (Directive.LEASE_LOST, "lease_lost"),
]


def holding(*facts: str) -> Situation:
    values = {fact: ("checkpoint",) if fact == "requests" else True for fact in facts}
    return Situation(**values)


def test_nothing_asked_is_go_on() -> None:
    assert decide(Situation()) is Directive.GO_ON


@pytest.mark.parametrize(("directive", "fact"), TABLE, ids=[d.name for d, _ in TABLE])
def test_each_row_alone_decides_its_directive(directive: Directive, fact: str) -> None:
    assert decide(holding(fact)) is directive


@pytest.mark.parametrize("upper", range(len(TABLE)), ids=[d.name for d, _ in TABLE])
def test_a_row_wins_over_every_row_below_it(upper: int) -> None:
    directive, fact = TABLE[upper]
    below = [f for _, f in TABLE[upper + 1 :]]
    assert decide(holding(fact, *below)) is directive


class FakeTrainer:
    """What steering touches of a trainer: its state, and saving or exporting."""

    def __init__(self, *, unsaved_steps: int = 3) -> None:
        self.state = TrainingState()
        self.unsaved_steps = unsaved_steps
        self.done: list[tuple[str, str]] = []

    def save_checkpoint(self, *, reason: str) -> None:
        self.done.append(("checkpoint", reason))

    def export(self, *, reason: str) -> None:
        self.done.append(("export", reason))


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger.open(f"sqlite:///{tmp_path / 'state' / 'ledger.db'}") as opened:
        yield opened


def test_requests_older_than_the_worker_are_not_served(ledger: Ledger) -> None:
    ledger.request_checkpoint()
    ledger.request_export()
    trainer = FakeTrainer()
    steering = Steering(ledger, stop=lambda: False)
    directive, situation = steering.steer(trainer)
    assert directive is Directive.GO_ON and situation.requests == ()
    assert trainer.done == []


def test_save_and_export_are_served_once_and_the_rest_decides(ledger: Ledger) -> None:
    trainer = FakeTrainer()
    steering = Steering(ledger, stop=lambda: False)
    ledger.request_checkpoint()
    ledger.request_export()
    ledger.set_desired_state(DesiredState.PAUSED)
    directive, situation = steering.steer(trainer)
    assert directive is Directive.PAUSE and situation.requests == ()
    assert trainer.done == [("checkpoint", "requested"), ("export", "requested")]
    assert steering.steer(trainer)[0] is Directive.PAUSE
    assert len(trainer.done) == 2  # served once


def test_a_save_with_nothing_unsaved_writes_nothing(ledger: Ledger) -> None:
    trainer = FakeTrainer(unsaved_steps=0)
    steering = Steering(ledger, stop=lambda: False)
    ledger.request_checkpoint()
    assert steering.steer(trainer)[0] is Directive.GO_ON
    assert trainer.done == []


def test_a_rollback_is_wanted_until_the_lineage_served_it(ledger: Ledger) -> None:
    trainer = FakeTrainer()
    steering = Steering(ledger, stop=lambda: False)
    control = ledger.request_rollback()
    ledger.set_desired_state(DesiredState.PAUSED)
    directive, situation = steering.steer(trainer)
    assert directive is Directive.ROLL_BACK and situation.control == ledger.get_control()
    trainer.state.rollback_served = control.rollback_requested_at.isoformat()
    assert steering.steer(trainer)[0] is Directive.PAUSE


def test_a_rollback_asked_before_the_lineage_began_is_not_replayed(ledger: Ledger) -> None:
    ledger.request_rollback()
    trainer = FakeTrainer()  # a lineage created after the request
    steering = Steering(ledger, stop=lambda: False)
    assert steering.steer(trainer)[0] is Directive.GO_ON


def test_the_cancel_of_the_file_in_training_and_the_stop_flag(ledger: Ledger) -> None:
    trainer = FakeTrainer()
    stopping = [False]
    steering = Steering(ledger, stop=lambda: stopping[0])
    record = ledger.record_file(
        name="a.jsonl",
        path="/inbox/accepted/a.jsonl",
        sha256=hashlib.sha256(b"a").hexdigest(),
        size=100,
        format="text",
        n_examples=10,
    )
    record = ledger.claim(record.id, worker_id="w", lease_s=60)
    assert steering.steer(trainer, file=record)[0] is Directive.GO_ON
    ledger.request_cancel(record.id)
    assert steering.steer(trainer)[0] is Directive.GO_ON  # no file: no cancel to look at
    assert steering.steer(trainer, file=record)[0] is Directive.CANCEL
    stopping[0] = True
    assert decide(steering.glance()) is Directive.STOP
    assert steering.steer(trainer, file=record)[0] is Directive.STOP
    # Between two readings of the ledger only the stop flag is looked at.
    assert dataclasses.replace(steering.glance(), stopping=False) == Situation()
