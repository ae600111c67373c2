"""The ledger on a real SQLite file: schema by migration, every query, the refusals, and
claims that stay exclusive under concurrency (threads and processes)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError, StatementError

from service.ledger import (
    DesiredState,
    FileRecord,
    FileState,
    Ledger,
    LedgerError,
    LineProblem,
    WorkerState,
)
from tests.ledgercheck import assert_claims_never_shared

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"


@pytest.fixture
def ledger(url: str) -> Ledger:
    with Ledger.open(url) as opened:
        yield opened


def sha(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def drop(ledger: Ledger, name: str, content: str | None = None, **kw) -> FileRecord:
    """Record a valid drop whose content is ``content`` (default: its name)."""
    return ledger.record_file(
        name=name,
        path=f"/inbox/accepted/{name}",
        sha256=sha(content or name),
        size=100,
        format="text",
        n_examples=10,
        **kw,
    )


def training(ledger: Ledger, name: str, content: str | None = None) -> FileRecord:
    record = drop(ledger, name, content)
    claimed = ledger.claim(record.id, worker_id="w-setup", lease_s=60)
    assert claimed is not None
    return claimed


def done(ledger: Ledger, name: str, content: str | None = None) -> FileRecord:
    record = training(ledger, name, content)
    ledger.complete(record.id, start_step=0, end_step=10)
    return ledger.get_file(record.id)


def assert_aware(value: datetime | None) -> None:
    assert value is not None
    assert value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)


# --- opening, schema, pragmas ---------------------------------------------------------


def test_open_creates_the_state_folder_and_migrates_to_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'state' / 'ledger.db'}"
    with Ledger(url) as bare:
        assert (tmp_path / "new" / "state").is_dir()
        assert not bare.at_head()
    with Ledger.open(url) as opened:
        assert opened.at_head()
    with Ledger.open(url) as again:  # a second start migrates nothing
        assert again.at_head()
        assert again.counts_by_state()[FileState.QUEUED] == 0


def test_open_without_migrating_leaves_the_schema_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with Ledger.open(url, migrate=False) as opened:
        assert not opened.at_head()
        opened.migrate()
        assert opened.at_head()


def test_sqlite_pragmas_are_in_effect(url: str) -> None:
    with Ledger.open(url, busy_timeout_ms=1234) as opened, opened.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234


def test_writes_take_the_lock_up_front_and_reads_do_not_wait(url: str) -> None:
    with Ledger.open(url, busy_timeout_ms=200) as opened:
        record = drop(opened, "a.jsonl")
        path = url.removeprefix("sqlite:///")
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            started = time.monotonic()
            with pytest.raises(OperationalError, match="locked"):
                opened.claim_next(worker_id="w1", lease_s=60)
            assert time.monotonic() - started < 5
            # WAL: reads go on while someone writes.
            assert opened.get_file(record.id).state is FileState.QUEUED
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert opened.claim_next(worker_id="w1", lease_s=60).id == record.id


# --- recording drops ------------------------------------------------------------------


def test_record_file_queues_it_and_round_trips_every_field(ledger: Ledger) -> None:
    problems = (LineProblem(line=3, reason="not JSON"), LineProblem(line=None, reason="x"))
    record = ledger.record_file(
        name="day1.jsonl",
        path="/inbox/accepted/day1.jsonl",
        sha256=sha("day1"),
        size=1234,
        format="prompt_completion",
        n_examples=50,
        n_invalid=2,
        invalid_lines=problems,
        priority=3,
    )
    assert record.state is FileState.QUEUED
    assert (record.name, record.size, record.format) == ("day1.jsonl", 1234, "prompt_completion")
    assert (record.n_examples, record.n_invalid, record.priority) == (50, 2, 3)
    assert record.invalid_lines == problems
    assert record.error is None and record.duplicate_of is None and record.attempts == 0
    assert record.finished_at is None and record.started_at is None
    assert_aware(record.created_at)
    assert_aware(record.updated_at)
    assert ledger.get_file(record.id) == record
    assert ledger.get_file(record.id + 100) is None


@pytest.mark.parametrize(
    ("make_twin", "status"),
    [(drop, "still queued"), (training, "training now"), (done, "already done")],
    ids=["queued", "training", "done"],
)
def test_same_content_as_an_active_file_is_a_duplicate(ledger: Ledger, make_twin, status) -> None:
    twin = make_twin(ledger, "day1.jsonl", "same")
    again = drop(ledger, "renamed.jsonl", "same")
    assert again.state is FileState.DUPLICATE
    assert again.duplicate_of == twin.id
    assert again.error == f"same content as file #{twin.id} (day1.jsonl), {status}"
    assert_aware(again.finished_at)
    assert ledger.get_file(twin.id).state is twin.state  # the original is untouched


@pytest.mark.parametrize("end", ["cancelled", "failed", "rejected"])
def test_a_redrop_after_cancel_fail_or_reject_is_not_a_duplicate(ledger: Ledger, end) -> None:
    if end == "rejected":
        ledger.record_rejected(name="a.jsonl", path="/p", reason="bad", sha256=sha("same"))
    else:
        first = drop(ledger, "a.jsonl", "same")
        if end == "cancelled":
            ledger.cancel(first.id)
        else:
            ledger.fail(first.id, error="boom")
    again = drop(ledger, "a-again.jsonl", "same")
    assert again.state is FileState.QUEUED
    assert again.duplicate_of is None and again.error is None


def test_record_rejected_keeps_the_reason(ledger: Ledger) -> None:
    record = ledger.record_rejected(
        name="bad.jsonl",
        path="/inbox/rejected/bad.jsonl",
        reason="line 4: mixes formats (text, then messages); use one format per file",
        n_invalid=1,
        invalid_lines=[LineProblem(line=4, reason="mixes formats")],
    )
    assert record.state is FileState.REJECTED
    assert record.error.startswith("line 4: mixes formats")
    assert record.sha256 is None and record.size == 0 and record.format is None
    assert record.invalid_lines == (LineProblem(line=4, reason="mixes formats"),)
    assert_aware(record.finished_at)


def test_set_path_find_by_path_and_find_by_sha(ledger: Ledger) -> None:
    first = drop(ledger, "a.jsonl", "same")
    ledger.cancel(first.id)
    second = drop(ledger, "a.jsonl", "same")
    assert ledger.find_by_path("/inbox/accepted/a.jsonl").id == second.id  # the newest
    ledger.set_path(second.id, "/inbox/done/a.jsonl")
    assert ledger.get_file(second.id).path == "/inbox/done/a.jsonl"
    assert ledger.find_by_path("/inbox/done/a.jsonl").id == second.id
    assert ledger.find_by_path("/nowhere") is None
    assert [r.id for r in ledger.find_by_sha(sha("same"))] == [first.id, second.id]
    assert ledger.find_by_sha(sha("nothing")) == []
    with pytest.raises(LedgerError, match=r"^no file #99$"):
        ledger.set_path(99, "/x")


def test_list_files_pages_by_id_and_filters_by_state(ledger: Ledger) -> None:
    ids = [drop(ledger, f"f{i}.jsonl").id for i in range(7)]
    ledger.cancel(ids[1])
    ledger.cancel(ids[4])
    page, total = ledger.list_files(limit=3, offset=2)
    assert [r.id for r in page] == ids[2:5] and total == 7
    cancelled, total = ledger.list_files(states=[FileState.CANCELLED])
    assert [r.id for r in cancelled] == [ids[1], ids[4]] and total == 2
    both, total = ledger.list_files(states={FileState.CANCELLED, FileState.QUEUED}, limit=2)
    assert [r.id for r in both] == ids[:2] and total == 7
    assert ledger.list_files(states=[]) == ([], 0)


def test_counts_by_state_names_every_state(ledger: Ledger) -> None:
    assert ledger.counts_by_state() == dict.fromkeys(FileState, 0)
    drop(ledger, "a.jsonl")
    drop(ledger, "b.jsonl", "a.jsonl")
    ledger.record_rejected(name="c.jsonl", path="/c", reason="empty")
    counts = ledger.counts_by_state()
    assert set(counts) == set(FileState)
    assert counts[FileState.QUEUED] == 1
    assert counts[FileState.DUPLICATE] == 1
    assert counts[FileState.REJECTED] == 1
    assert counts[FileState.DONE] == 0


def test_queue_order_is_training_then_priority_then_arrival(ledger: Ledger) -> None:
    low = drop(ledger, "low.jsonl")
    high = drop(ledger, "high.jsonl", priority=5)
    low2 = drop(ledger, "low2.jsonl")
    current = drop(ledger, "current.jsonl", priority=-1)
    done(ledger, "old.jsonl")
    assert ledger.claim(current.id, worker_id="w1", lease_s=60) is not None
    assert [r.id for r in ledger.queue_order()] == [current.id, high.id, low.id, low2.id]


# --- claims and leases ----------------------------------------------------------------


def test_claim_next_takes_the_highest_priority_then_the_oldest(ledger: Ledger) -> None:
    first = drop(ledger, "first.jsonl")
    urgent = drop(ledger, "urgent.jsonl", priority=1)
    before = datetime.now(UTC)
    claimed = ledger.claim_next(worker_id="w1", lease_s=30)
    assert claimed.id == urgent.id
    assert claimed.state is FileState.TRAINING
    # Claiming is not an attempt (rule 13): only a crash the supervisor saw counts.
    assert claimed.lease_owner == "w1" and claimed.attempts == 0
    assert_aware(claimed.started_at)
    assert_aware(claimed.lease_expires_at)
    assert before + timedelta(seconds=29) < claimed.lease_expires_at
    assert claimed.lease_expires_at < datetime.now(UTC) + timedelta(seconds=31)
    assert ledger.claim_next(worker_id="w2", lease_s=30).id == first.id
    assert ledger.claim_next(worker_id="w3", lease_s=30) is None


def test_claim_a_given_file(ledger: Ledger) -> None:
    record = drop(ledger, "a.jsonl")
    claimed = ledger.claim(record.id, worker_id="w1", lease_s=60)
    assert claimed.lease_owner == "w1" and claimed.attempts == 0
    # Ours already: the lease is renewed.
    again = ledger.claim(record.id, worker_id="w1", lease_s=90)
    assert again.attempts == 0 and again.lease_expires_at > claimed.lease_expires_at
    # Someone else's live lease: refused.
    assert ledger.claim(record.id, worker_id="w2", lease_s=60) is None
    # Expired (a lease of 0 s lapses at once): taken over, and a lapsed lease is no crash.
    ledger.claim(record.id, worker_id="w1", lease_s=0)
    taken = ledger.claim(record.id, worker_id="w2", lease_s=60)
    assert taken.lease_owner == "w2" and taken.attempts == 0
    assert taken.started_at == claimed.started_at
    assert ledger.claim(999, worker_id="w2", lease_s=60) is None
    finished = done(ledger, "b.jsonl")
    assert ledger.claim(finished.id, worker_id="w2", lease_s=60) is None


def test_claims_from_many_threads_never_share_a_file(url: str) -> None:
    workers = 4
    ledgers = [Ledger.open(url) for _ in range(workers)]
    try:
        assert_claims_never_shared(ledgers, drop=drop, rounds=15, per_round=10)
        assert all(r.attempts == 0 for r in ledgers[0].list_files(limit=1000)[0])
    finally:
        for each in ledgers:
            each.close()


CLAIMER = """
import json, sys
from service.ledger import Ledger
ledger = Ledger.open(sys.argv[1], migrate=False)
sys.stdin.readline()  # start together
ids = []
while (record := ledger.claim_next(worker_id=sys.argv[2], lease_s=60)) is not None:
    ids.append(record.id)
print(json.dumps(ids))
"""


def test_claims_from_many_processes_never_share_a_file(ledger: Ledger, url: str) -> None:
    ids = {drop(ledger, f"f{i}.jsonl").id for i in range(40)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, url, f"proc{i}"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [json.loads(proc.communicate(timeout=60)[0]) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    every = [file_id for result in results for file_id in result]
    assert sorted(every) == sorted(ids)


def test_expired_leases_are_reaped_back_to_the_queue(ledger: Ledger) -> None:
    record = drop(ledger, "a.jsonl")
    other = drop(ledger, "b.jsonl")
    claimed = ledger.claim(record.id, worker_id="w1", lease_s=60)
    ledger.claim(other.id, worker_id="w2", lease_s=600)
    ledger.set_steps(record.id, start_step=100, target_step=140)
    assert ledger.reap_expired() == []
    later = claimed.lease_expires_at + timedelta(seconds=1)
    assert ledger.reap_expired(now=later) == [record.id]
    reaped = ledger.get_file(record.id)
    assert reaped.state is FileState.QUEUED
    assert reaped.lease_owner is None and reaped.lease_expires_at is None
    assert (reaped.start_step, reaped.target_step) == (100, 140)  # rule 1: kept
    assert ledger.get_file(other.id).state is FileState.TRAINING
    assert not ledger.renew_lease(record.id, worker_id="w1", lease_s=60)
    assert ledger.reap_expired(now=later) == []


def test_renewal_is_refused_once_someone_else_holds_the_file(ledger: Ledger) -> None:
    record = drop(ledger, "a.jsonl")
    ledger.claim(record.id, worker_id="w1", lease_s=60)
    assert ledger.renew_lease(record.id, worker_id="w1", lease_s=0)  # lapses at once
    taken = ledger.claim(record.id, worker_id="w2", lease_s=60)
    assert taken.lease_owner == "w2"
    assert not ledger.renew_lease(record.id, worker_id="w1", lease_s=60)
    assert ledger.renew_lease(record.id, worker_id="w2", lease_s=120)
    assert ledger.get_file(record.id).lease_expires_at > taken.lease_expires_at
    assert not ledger.renew_lease(999, worker_id="w2", lease_s=60)


def test_release_returns_the_file_with_its_steps(ledger: Ledger) -> None:
    record = drop(ledger, "a.jsonl")
    first = ledger.claim_next(worker_id="w1", lease_s=60)
    ledger.set_steps(record.id, start_step=10, target_step=25)
    ledger.release(record.id, worker_id="w2")  # not its lease: nothing happens
    assert ledger.get_file(record.id).state is FileState.TRAINING
    ledger.release(record.id, worker_id="w1")
    released = ledger.get_file(record.id)
    assert released.state is FileState.QUEUED
    assert released.lease_owner is None and released.lease_expires_at is None
    assert (released.start_step, released.target_step) == (10, 25)
    again = ledger.claim_next(worker_id="w3", lease_s=60)
    # A released claim (a clean stop) never counts against the file.
    assert again.attempts == 0 and again.started_at == first.started_at
    with pytest.raises(ValueError, match="before start_step"):
        ledger.set_steps(record.id, start_step=10, target_step=5)
    with pytest.raises(LedgerError, match="no file #99"):
        ledger.release(99, worker_id="w3")


def test_complete_is_idempotent(ledger: Ledger) -> None:
    record = drop(ledger, "a.jsonl")
    ledger.claim_next(worker_id="w1", lease_s=60)
    ledger.set_steps(record.id, start_step=0, target_step=12)
    ledger.complete(record.id, start_step=0, end_step=12)
    finished = ledger.get_file(record.id)
    assert finished.state is FileState.DONE
    assert (finished.start_step, finished.target_step, finished.end_step) == (0, 12, 12)
    assert finished.lease_owner is None and finished.lease_expires_at is None
    assert_aware(finished.finished_at)
    ledger.complete(record.id, start_step=0, end_step=12)
    assert ledger.get_file(record.id) == finished
    rejected = ledger.record_rejected(name="b.jsonl", path="/b", reason="empty")
    with pytest.raises(LedgerError, match=f"file #{rejected.id} is rejected"):
        ledger.complete(rejected.id, start_step=0, end_step=1)
    with pytest.raises(LedgerError, match="no file #99"):
        ledger.complete(99, start_step=0, end_step=1)


def test_mark_done_from_checkpoint_trusts_the_checkpoint(ledger: Ledger) -> None:
    queued = drop(ledger, "a.jsonl", "content")
    other = drop(ledger, "b.jsonl")
    ledger.claim(queued.id, worker_id="w1", lease_s=60)
    marked = ledger.mark_done_from_checkpoint(sha("content"), start_step=40, end_step=52)
    assert marked == [queued.id]
    record = ledger.get_file(queued.id)
    assert record.state is FileState.DONE
    assert (record.start_step, record.end_step) == (40, 52)
    assert record.lease_owner is None
    assert ledger.get_file(other.id).state is FileState.QUEUED
    assert ledger.mark_done_from_checkpoint(sha("content"), start_step=40, end_step=52) == []
    assert drop(ledger, "c.jsonl", "content").state is FileState.DUPLICATE


# --- operator: cancel, retry; worker: fail --------------------------------------------


def test_cancel_only_queued_files(ledger: Ledger) -> None:
    queued = drop(ledger, "a.jsonl")
    cancelled = ledger.cancel(queued.id)
    assert cancelled.state is FileState.CANCELLED
    assert cancelled.error and cancelled.finished_at is not None
    assert ledger.claim_next(worker_id="w1", lease_s=60) is None
    busy = training(ledger, "b.jsonl")
    finished = done(ledger, "c.jsonl")
    refusals = {
        busy.id: f"file #{busy.id} is training; cancel it through the worker",
        finished.id: f"file #{finished.id} is done; only queued files can be cancelled",
        queued.id: f"file #{queued.id} is already cancelled",
        99: "no file #99",
    }
    for file_id, message in refusals.items():
        with pytest.raises(LedgerError) as caught:
            ledger.cancel(file_id)
        assert str(caught.value) == message
    assert ledger.get_file(busy.id).state is FileState.TRAINING


def test_fail_then_retry(ledger: Ledger) -> None:
    record = training(ledger, "a.jsonl")
    ledger.set_steps(record.id, start_step=0, target_step=9)
    ledger.fail(record.id, error="tokenizer crashed on line 7")
    failed = ledger.get_file(record.id)
    assert failed.state is FileState.FAILED
    assert failed.error == "tokenizer crashed on line 7"
    assert failed.lease_owner is None and failed.finished_at is not None
    retried = ledger.retry(record.id)
    assert retried.state is FileState.QUEUED
    assert retried.error is None and retried.finished_at is None
    assert (retried.start_step, retried.target_step) == (0, 9)
    assert ledger.claim_next(worker_id="w2", lease_s=60).attempts == 0
    finished = done(ledger, "b.jsonl")
    with pytest.raises(LedgerError, match="is done; it cannot fail"):
        ledger.fail(finished.id, error="x")


def test_retry_cancelled_and_its_refusals(ledger: Ledger) -> None:
    cancelled = ledger.cancel(drop(ledger, "a.jsonl", "same").id)
    redropped = drop(ledger, "a2.jsonl", "same")
    with pytest.raises(LedgerError) as caught:
        ledger.retry(cancelled.id)
    assert str(caught.value) == (
        f"file #{cancelled.id} has the same content as file #{redropped.id} (a2.jsonl), "
        "which is queued; there is nothing to retry"
    )
    ledger.cancel(redropped.id)
    assert ledger.retry(cancelled.id).state is FileState.QUEUED
    duplicate = drop(ledger, "a3.jsonl", "same")
    rejected = ledger.record_rejected(name="r.jsonl", path="/r", reason="line 2: not JSON")
    finished = done(ledger, "d.jsonl")
    refusals = {
        cancelled.id: f"file #{cancelled.id} is already queued",
        duplicate.id: f"file #{duplicate.id} is a duplicate of file #{cancelled.id}",
        rejected.id: "fix the file and drop it again",
        finished.id: f"file #{finished.id} is already done",
        99: "no file #99",
    }
    for file_id, message in refusals.items():
        with pytest.raises(LedgerError, match=message):
            ledger.retry(file_id)


# --- control, heartbeats, checkpoints -------------------------------------------------


def test_control_round_trip(ledger: Ledger) -> None:
    initial = ledger.get_control()
    assert initial.desired_state is DesiredState.RUNNING
    assert_aware(initial.updated_at)
    paused = ledger.set_desired_state(DesiredState.PAUSED)
    assert ledger.get_control() == paused
    assert paused.updated_at >= initial.updated_at
    assert ledger.set_desired_state(DesiredState.RUNNING).desired_state is DesiredState.RUNNING
    assert ledger.get_control().desired_state is DesiredState.RUNNING


def test_heartbeat_upserts_and_worker_status_is_the_newest(ledger: Ledger) -> None:
    assert ledger.worker_status() is None
    started = datetime.now(UTC)
    ledger.heartbeat(
        worker_id="w1", pid=10, state=WorkerState.STARTING, model_loaded=False, started_at=started
    )
    ledger.heartbeat(
        worker_id="w1",
        pid=10,
        state=WorkerState.TRAINING,
        model_loaded=True,
        started_at=started,
        global_step=120,
        file_id=3,
        start_step=100,
        target_step=140,
        loss=2.5,
        lr=3e-4,
        tokens_per_s=1500.0,
        eta_s=12.5,
        message="training day1.jsonl",
        extra={"micro_batch": 4, "devices": ["cpu"]},
    )
    status = ledger.worker_status()
    assert status.worker_id == "w1" and status.state is WorkerState.TRAINING
    assert status.model_loaded and status.global_step == 120 and status.file_id == 3
    assert (status.start_step, status.target_step) == (100, 140)
    assert (status.loss, status.lr, status.tokens_per_s, status.eta_s) == (2.5, 3e-4, 1500.0, 12.5)
    assert status.message == "training day1.jsonl"
    assert status.extra == {"micro_batch": 4, "devices": ["cpu"]}
    assert status.started_at == started
    assert_aware(status.heartbeat_at)
    time.sleep(0.01)
    ledger.heartbeat(
        worker_id="w2", pid=11, state=WorkerState.IDLE, model_loaded=True, started_at=started
    )
    assert ledger.worker_status().worker_id == "w2"
    assert ledger.worker_status().extra == {}
    assert ledger.prune_workers(keep=1) == 1
    assert ledger.prune_workers(keep=1) == 0
    assert ledger.worker_status().worker_id == "w2"


def test_naive_datetimes_are_refused(ledger: Ledger) -> None:
    with pytest.raises(StatementError, match="aware datetimes only"):
        ledger.heartbeat(
            worker_id="w1",
            pid=1,
            state=WorkerState.IDLE,
            model_loaded=False,
            started_at=datetime.now(),
        )


def test_checkpoints_upsert_on_name_and_step(ledger: Ledger) -> None:
    ledger.record_checkpoint(name="step-00000100", kind="step", step=100, path="/c/old")
    ledger.record_checkpoint(name="step-00000100", kind="step", step=100, path="/c/step-100")
    ledger.record_checkpoint(name="gold", kind="gold", step=100, path="/c/gold")
    ledger.record_checkpoint(name="step-00000050", kind="step", step=50, path="/c/step-50")
    rows = ledger.list_checkpoints()
    assert [(r["name"], r["step"], r["path"]) for r in rows] == [
        ("step-00000050", 50, "/c/step-50"),
        ("step-00000100", 100, "/c/step-100"),
        ("gold", 100, "/c/gold"),
    ]
    assert_aware(rows[0]["created_at"])
    assert [r["path"] for r in ledger.list_checkpoints(kind="gold")] == ["/c/gold"]
    with pytest.raises(ValueError, match="kind"):
        ledger.record_checkpoint(name="x", kind="best", step=1, path="/x")
