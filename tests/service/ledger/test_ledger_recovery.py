"""The ledger's side of exactly-once: only a crash is an attempt (rule 13), the live
worker's lease is never reaped, retry starts afresh, the checkpoint may reopen a done
file, and a lost ledger is rebuilt under the ids its files carry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_ledger import done, drop, sha, training

from service.ledger import FileState, Ledger, LedgerError, LedgerFullError


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    with Ledger.open(f"sqlite:///{tmp_path / 'state' / 'ledger.db'}") as opened:
        yield opened


def test_only_a_crash_is_an_attempt_and_the_limit_fails_the_file(ledger: Ledger) -> None:
    record = training(ledger, "a.jsonl")
    # Clean stops and restarts: released and claimed again, as often as it takes.
    for _ in range(5):
        ledger.release(record.id, worker_id="w-setup")
        assert ledger.claim(record.id, worker_id="w-setup", lease_s=60).attempts == 0
    first = ledger.record_crash(worker_id="w-setup", reason="killed by SIGKILL", max_attempts=2)
    assert [(r.id, r.state, r.attempts) for r in first] == [(record.id, FileState.QUEUED, 1)]
    assert "crash 1 of at most 2: killed by SIGKILL" in first[0].error
    ledger.claim(record.id, worker_id="w2", lease_s=60)
    # Another worker's crash does not touch it.
    assert ledger.record_crash(worker_id="w-other", reason="x", max_attempts=2) == []
    (failed,) = ledger.record_crash(worker_id="w2", reason="RuntimeError: boom", max_attempts=2)
    assert failed.state is FileState.FAILED and failed.attempts == 2
    assert "crashed the worker 2 times (worker.max_attempts = 2)" in failed.error
    assert "last: RuntimeError: boom" in failed.error and "retry it" in failed.error
    assert failed.lease_owner is None and failed.finished_at is not None


def test_retry_of_a_file_failed_by_crashes_starts_the_count_afresh(ledger: Ledger) -> None:
    record = training(ledger, "a.jsonl")
    ledger.record_crash(worker_id="w-setup", reason="boom", max_attempts=1)
    assert ledger.get_file(record.id).state is FileState.FAILED
    retried = ledger.retry(record.id)
    assert retried.state is FileState.QUEUED and retried.attempts == 0
    claimed = ledger.claim_next(worker_id="w3", lease_s=60)
    assert claimed.id == record.id and claimed.attempts == 0


def test_the_live_workers_lease_is_never_reaped(ledger: Ledger) -> None:
    """A step, an evaluation or a checkpoint longer than the lease is not a dead worker."""
    slow = training(ledger, "slow.jsonl")
    later = datetime.now(UTC) + timedelta(hours=1)
    assert ledger.reap_expired(now=later, alive="w-setup") == []
    assert ledger.get_file(slow.id).state is FileState.TRAINING
    # Once that worker is gone, its lapsed lease is reaped like any other.
    assert ledger.reap_expired(now=later, alive="w-new") == [slow.id]
    assert ledger.get_file(slow.id).attempts == 0


def test_reopen_a_done_file_the_lineage_does_not_hold(ledger: Ledger) -> None:
    record = done(ledger, "a.jsonl")
    ledger.complete(record.id, start_step=0, end_step=10, lineage_id="L1")
    reopened = ledger.reopen(record.id, reason="its checkpoints were lost")
    assert reopened.state is FileState.QUEUED and reopened.error == "its checkpoints were lost"
    assert reopened.end_step is None and reopened.lineage_id is None
    with pytest.raises(LedgerError, match="not done; nothing to reopen"):
        ledger.reopen(record.id, reason="again")


def test_done_records_say_which_lineage_trained_them(ledger: Ledger) -> None:
    record = training(ledger, "a.jsonl")
    ledger.complete(record.id, start_step=0, end_step=4, lineage_id="lineage-1")
    assert ledger.get_file(record.id).lineage_id == "lineage-1"
    twin = drop(ledger, "b.jsonl")
    ledger.mark_done_from_checkpoint(twin.sha256, start_step=4, end_step=8, lineage_id="lineage-1")
    assert ledger.get_file(twin.id).lineage_id == "lineage-1"


def test_restored_files_keep_their_ids_and_new_ones_come_after(ledger: Ledger) -> None:
    restored = ledger.restore_file(
        file_id=7,
        state=FileState.DONE,
        name="day1.jsonl",
        path="/inbox/accepted/000007-day1.jsonl",
        sha256=sha("day1"),
        size=10,
        format="text",
        n_examples=3,
        start_step=0,
        end_step=5,
        lineage_id="L",
    )
    assert (restored.id, restored.state, restored.end_step) == (7, FileState.DONE, 5)
    with pytest.raises(LedgerError, match="already recorded"):
        ledger.restore_file(
            file_id=7, state=FileState.QUEUED, name="x", path="x", sha256=None, size=0,
            format=None, n_examples=0,
        )  # fmt: skip
    ledger.ensure_ids_above(41)
    assert drop(ledger, "new.jsonl").id == 42
    ledger.ensure_ids_above(3)  # never lowers
    assert drop(ledger, "newer.jsonl").id == 43


def test_a_full_disk_under_the_ledger_is_named_as_such(ledger: Ledger, monkeypatch) -> None:
    """SQLite says "database or disk is full"; the worker must see a full disk (and wait),
    not a crash (and count it against the file)."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    def full(*_args, **_kwargs):
        error = sqlite3.OperationalError("database or disk is full")
        error.sqlite_errorcode = sqlite3.SQLITE_FULL
        raise OperationalError("UPDATE workers SET ...", {}, error)

    record = training(ledger, "a.jsonl")
    monkeypatch.setattr(type(ledger), "_locked_file", staticmethod(full))
    with pytest.raises(LedgerFullError, match="out of disk space: the ledger") as raised:
        ledger.set_steps(record.id, start_step=0, target_step=3)
    assert isinstance(raised.value, OSError)
    assert Path(raised.value.path).is_dir()
