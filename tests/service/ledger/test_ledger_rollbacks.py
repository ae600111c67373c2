"""The ledger's side of a rollback to gold: the files it undid become rolled_back with the
steps they had, and go back to the queue afresh (all at once, or one by one with retry);
their content is no duplicate."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_ledger import drop, training

from service.ledger import FileRecord, FileState, Ledger, LedgerError


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    with Ledger.open(f"sqlite:///{tmp_path / 'state' / 'ledger.db'}") as opened:
        yield opened


def rolled_back(ledger: Ledger, name: str, *, steps: tuple[int, int] = (40, 80)) -> FileRecord:
    """A file trained on ``steps`` by lineage ``L``, once crashed, then undone at gold 30."""
    record = training(ledger, name)
    ledger.record_crash(worker_id="w-setup", reason="boom", max_attempts=3)
    ledger.claim(record.id, worker_id="w-setup", lease_s=60)
    ledger.set_steps(record.id, start_step=steps[0], target_step=steps[1])
    ledger.complete(record.id, start_step=steps[0], end_step=steps[1], lineage_id="L")
    marked = ledger.mark_rolled_back(record.id, gold_step=30)
    assert marked is not None
    return marked


def test_a_done_file_is_marked_rolled_back_with_the_steps_it_had(ledger: Ledger) -> None:
    record = rolled_back(ledger, "a.jsonl")
    assert record.state is FileState.ROLLED_BACK
    assert (record.start_step, record.target_step, record.end_step) == (40, 80, 80)
    assert record.lineage_id == "L" and record.attempts == 1
    assert record.error == (
        "rolled back to gold at step 30; it had been trained on steps 40-80: "
        "`traind requeue --rolled-back` trains it again"
    )
    assert ledger.get_file(record.id) == record
    # Marking is done again at every start: a file not done is left as it is.
    assert ledger.mark_rolled_back(record.id, gold_step=30) is None
    queued = drop(ledger, "b.jsonl")
    assert ledger.mark_rolled_back(queued.id, gold_step=30) is None
    assert ledger.get_file(queued.id).state is FileState.QUEUED
    assert ledger.counts_by_state()[FileState.ROLLED_BACK] == 1
    only, total = ledger.list_files(states=[FileState.ROLLED_BACK])
    assert [r.id for r in only] == [record.id] and total == 1


def test_a_redrop_of_rolled_back_content_is_queued_not_a_duplicate(ledger: Ledger) -> None:
    record = rolled_back(ledger, "a.jsonl")
    again = drop(ledger, "a-again.jsonl", "a.jsonl")
    assert again.sha256 == record.sha256
    assert again.state is FileState.QUEUED and again.duplicate_of is None


def test_requeue_queues_every_rolled_back_file_afresh(ledger: Ledger) -> None:
    first = rolled_back(ledger, "a.jsonl")
    second = rolled_back(ledger, "b.jsonl", steps=(80, 95))
    redropped = rolled_back(ledger, "c.jsonl", steps=(95, 99))
    twin = drop(ledger, "c-again.jsonl", "c.jsonl")
    requeued = ledger.requeue_rolled_back()
    assert [r.id for r in requeued] == [first.id, second.id]
    for record in requeued:
        assert record.state is FileState.QUEUED and record.error is None
        assert (record.start_step, record.target_step, record.end_step) == (None, None, None)
        assert record.attempts == 0 and record.lineage_id is None
        assert record.finished_at is None and record.lease_owner is None
        assert ledger.get_file(record.id) == record
    # Its content is queued under the new drop, which trains it: it stays as it was.
    assert ledger.get_file(redropped.id) == redropped
    assert ledger.get_file(twin.id).state is FileState.QUEUED
    assert ledger.requeue_rolled_back() == []
    # They train in arrival order, like any queued file.
    assert ledger.claim_next(worker_id="w", lease_s=60).id == first.id


def test_requeue_queues_one_of_two_rolled_back_records_of_one_content(ledger: Ledger) -> None:
    old = rolled_back(ledger, "a.jsonl")
    ledger.requeue_rolled_back()
    ledger.claim(old.id, worker_id="w-setup", lease_s=60)
    ledger.complete(old.id, start_step=100, end_step=140, lineage_id="L")
    copy = drop(ledger, "a-copy.jsonl", "a.jsonl")  # a duplicate of the done one
    assert copy.state is FileState.DUPLICATE
    again = ledger.mark_rolled_back(old.id, gold_step=90)  # a second rollback
    assert again.error.startswith(
        "rolled back to gold at step 90; it had been trained on steps 100-140"
    )
    newer = drop(ledger, "a-newer.jsonl", "a.jsonl")
    ledger.claim(newer.id, worker_id="w-setup", lease_s=60)
    ledger.complete(newer.id, start_step=140, end_step=180, lineage_id="L")
    ledger.mark_rolled_back(newer.id, gold_step=90)
    assert [r.id for r in ledger.requeue_rolled_back()] == [old.id]
    assert ledger.get_file(newer.id).state is FileState.ROLLED_BACK


def test_retry_takes_a_rolled_back_file_too(ledger: Ledger) -> None:
    record = rolled_back(ledger, "a.jsonl")
    twin = drop(ledger, "a-again.jsonl", "a.jsonl")
    with pytest.raises(LedgerError) as caught:
        ledger.retry(record.id)
    assert str(caught.value) == (
        f"file #{record.id} has the same content as file #{twin.id} (a-again.jsonl), "
        "which is queued; there is nothing to retry"
    )
    ledger.cancel(twin.id)
    retried = ledger.retry(record.id)
    assert retried.state is FileState.QUEUED and retried.attempts == 0
    assert (retried.start_step, retried.target_step, retried.end_step) == (None, None, None)
    assert ledger.requeue_rolled_back() == []
