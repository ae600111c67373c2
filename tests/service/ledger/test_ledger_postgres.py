"""The ledger on a real PostgreSQL server: migrations, dedupe, SKIP LOCKED claims under
concurrency, leases, control and heartbeats.

The server is started for this module from the local PostgreSQL binaries (``initdb`` on
PATH or under /usr/lib/postgresql/*/bin), in a temporary folder, listening only on a unix
socket there; each test gets a fresh database. PostgreSQL refuses to run as root, so as
root the server runs as the ``postgres`` system user (through ``runuser``, else ``su``).
Without the binaries, that user or psycopg, the module is skipped with the reason.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError

from service.ledger import DesiredState, FileState, Ledger, LedgerError, WorkerState, migrate
from service.ledger.drops import NewDrop
from service.ledger.models import Base
from tests.ledgercheck import assert_claims_never_shared

PORT = 5432  # only names the socket file: the server listens on no TCP port


def _bin_dir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        # /usr/local/bin/initdb may be a link; pg_ctl and postgres live beside the target.
        return Path(found).resolve().parent
    candidates = list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not candidates:
        return None
    newest = max(candidates, key=lambda path: float(path.parts[-3]))
    return newest.parent


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", "postgres", "--", *command]
    return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(command)]


def _run(command: list[str], *, log: Path | None = None) -> None:
    result = subprocess.run(
        _as_server_user(command), capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        server_log = log.read_text() if log and log.exists() else ""
        raise RuntimeError(
            f"{shlex.join(command)} failed ({result.returncode}):\n"
            f"{result.stdout}{result.stderr}{server_log}"
        )


@pytest.fixture(scope="module")
def server() -> Iterator[Path]:
    """A PostgreSQL server for this module; yields its socket folder."""
    pytest.importorskip("psycopg", reason="psycopg (the PostgreSQL driver) is not installed")
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed: no initdb on PATH or in /usr/lib/postgresql")
    if not (bin_dir / "pg_ctl").exists():
        pytest.skip(f"PostgreSQL is not installed completely: no pg_ctl in {bin_dir}")
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("PostgreSQL cannot run as root and there is no 'postgres' user")
    # Not under pytest's tmp_path: its folders are private to root, and the server user
    # must be able to reach its data and socket folders.
    base = Path(tempfile.mkdtemp(prefix="traind-pg-", dir="/tmp"))
    data, sockets, log = base / "data", base / "sockets", base / "server.log"
    sockets.mkdir()
    base.chmod(0o755)
    if owner is not None:
        for path in (base, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    try:
        _run(
            [
                str(bin_dir / "initdb"),
                *("-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"),
                *("--locale=C", "--no-sync", "--no-instructions"),
            ]
        )
        # -F: no fsync (a throwaway server); listen_addresses='': unix socket only.
        options = f"-k {sockets} -p {PORT} -F -c listen_addresses='' -c shared_buffers=16MB"
        pg_ctl = str(bin_dir / "pg_ctl")
        _run([pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "30", "-o", options, "start"])
        try:
            yield sockets
        finally:
            _run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], log=log)
    finally:
        shutil.rmtree(base, ignore_errors=True)


_databases = itertools.count()


@pytest.fixture
def url(server: Path) -> str:
    """A fresh, empty database on the module's server."""
    import psycopg

    name = f"ledger_{next(_databases)}"
    with psycopg.connect(
        host=str(server), port=PORT, user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@/{name}?host={server}&port={PORT}"


@pytest.fixture
def ledger(url: str) -> Iterator[Ledger]:
    with Ledger.open(url) as opened:
        yield opened


def sha(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def drop(ledger: Ledger, name: str, content: str | None = None, **kw):
    return ledger.record_file(
        name=name,
        path=f"/inbox/{name}",
        sha256=sha(content or name),
        size=10,
        format="text",
        n_examples=3,
        **kw,
    )


def test_migrations_reach_head_and_agree_with_the_models(url: str) -> None:
    assert migrate.current_revision(url) is None
    with Ledger.open(url) as ledger:
        assert ledger.at_head()
        with ledger.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    migrate.downgrade(url)
    assert migrate.current_revision(url) is None
    migrate.upgrade(url)
    assert migrate.current_revision(url) == migrate.head_revision()


def test_0005_recreates_the_state_check_with_rolled_back(url: str) -> None:
    migrate.upgrade(url, revision="0004_file_lineage")
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(INSERT_0004), {"state": "done"})
        migrate.upgrade(url)
        with engine.begin() as connection:
            connection.execute(text("UPDATE files SET state = 'rolled_back'"))
            with pytest.raises(IntegrityError), connection.begin_nested():
                connection.execute(text("UPDATE files SET state = 'lost'"))
        migrate.downgrade(url, revision="0004_file_lineage")
        with engine.begin() as connection:
            assert connection.execute(text("SELECT state FROM files")).scalar() == "done"
            with pytest.raises(IntegrityError), connection.begin_nested():
                connection.execute(text("UPDATE files SET state = 'rolled_back'"))
    finally:
        engine.dispose()


INSERT_0004 = (
    "INSERT INTO files (name, path, sha256, size, n_examples, n_invalid, invalid_lines, state, "
    "priority, attempts, created_at, updated_at) VALUES ('a.jsonl', '/a', NULL, 1, 1, 0, '[]', "
    ":state, 0, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
)
"""A row of the 0004 schema, written as that schema knows it (the models move on)."""


def test_ledgers_opened_together_migrate_once(url: str) -> None:
    opened: list[bool] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        with Ledger.open(url) as ledger:
            opened.append(ledger.at_head())

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert opened == [True] * 4


def test_record_dedupe_and_round_trip(ledger: Ledger) -> None:
    first = drop(ledger, "day1.jsonl", "same")
    assert first.state is FileState.QUEUED
    assert first.created_at.tzinfo is not None and first.created_at.utcoffset() == timedelta(0)
    assert ledger.get_file(first.id) == first
    again = drop(ledger, "copy.jsonl", "same")
    assert again.state is FileState.DUPLICATE and again.duplicate_of == first.id
    assert again.error == f"same content as file #{first.id} (day1.jsonl), still queued"
    ledger.cancel(first.id)
    assert drop(ledger, "third.jsonl", "same").state is FileState.QUEUED
    counts = ledger.counts_by_state()
    assert set(counts) == set(FileState)
    assert (counts[FileState.QUEUED], counts[FileState.CANCELLED]) == (1, 1)
    with pytest.raises(LedgerError, match="no file #999"):
        ledger.cancel(999)


def test_simultaneous_drops_of_one_content_queue_it_once(url: str) -> None:
    ledgers = [Ledger.open(url, migrate=i == 0) for i in range(6)]
    barrier = threading.Barrier(len(ledgers))
    states: list[FileState] = []

    def record(index: int) -> None:
        barrier.wait()
        states.append(drop(ledgers[index], f"copy{index}.jsonl", "same").state)

    try:
        threads = [threading.Thread(target=record, args=(i,)) for i in range(len(ledgers))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        for each in ledgers:
            each.close()
    assert sorted(states) == sorted([FileState.QUEUED] + [FileState.DUPLICATE] * 5)


def test_a_batch_of_drops_dedupes_inside_itself_and_notes_its_paths(ledger: Ledger) -> None:
    old = drop(ledger, "old.jsonl", "old")
    batch = [
        NewDrop(name=n, path=f"/inbox/{n}", sha256=sha(c), size=1, format="text", n_examples=1)
        for n, c in (("a.jsonl", "x"), ("b.jsonl", "x"), ("c.jsonl", "old"))
    ]
    a, b, c = ledger.record_drops(batch)
    assert a.state is FileState.QUEUED
    assert (b.duplicate_of, c.duplicate_of) == (a.id, old.id)
    assert b.error == f"same content as file #{a.id} (a.jsonl), still queued"
    ledger.set_paths({r.id: f"/inbox/accepted/{r.id:06d}-{r.name}" for r in (a, b, c)})
    assert [r.name for r in ledger.files_in("/inbox")] == ["old.jsonl"]
    assert ledger.get_file(b.id).path == f"/inbox/accepted/{b.id:06d}-b.jsonl"


def test_claim_next_skips_a_row_another_transaction_holds(ledger: Ledger) -> None:
    first = drop(ledger, "first.jsonl")
    second = drop(ledger, "second.jsonl")
    with ledger.engine.connect() as other, other.begin():
        other.execute(text("SELECT id FROM files WHERE id = :id FOR UPDATE"), {"id": first.id})
        # Not blocked by the lock on the first file: SKIP LOCKED moves on to the second.
        assert ledger.claim_next(worker_id="w1", lease_s=60).id == second.id
    assert ledger.claim_next(worker_id="w2", lease_s=60).id == first.id


def test_concurrent_claims_never_share_a_file(url: str) -> None:
    workers = 4
    ledgers = [Ledger.open(url, migrate=i == 0) for i in range(workers)]
    try:
        assert_claims_never_shared(ledgers, drop=drop, rounds=5, per_round=12)
    finally:
        for each in ledgers:
            each.close()


def test_leases_renew_expire_and_are_reaped(ledger: Ledger) -> None:
    record = drop(ledger, "a.jsonl")
    claimed = ledger.claim_next(worker_id="w1", lease_s=60)
    ledger.set_steps(record.id, start_step=5, target_step=30)
    assert ledger.renew_lease(record.id, worker_id="w1", lease_s=60)
    assert not ledger.renew_lease(record.id, worker_id="w2", lease_s=60)
    assert ledger.claim(record.id, worker_id="w2", lease_s=60) is None
    assert ledger.reap_expired() == []
    later = datetime.now(UTC) + timedelta(seconds=120)
    assert ledger.reap_expired(now=later) == [record.id]
    reaped = ledger.get_file(record.id)
    assert reaped.state is FileState.QUEUED and reaped.lease_owner is None
    assert (reaped.start_step, reaped.target_step) == (5, 30)
    retaken = ledger.claim(record.id, worker_id="w2", lease_s=60)
    # A lapsed lease is not a crash (rule 13).
    assert retaken.attempts == 0 and retaken.started_at == claimed.started_at
    ledger.complete(record.id, start_step=5, end_step=30)
    ledger.complete(record.id, start_step=5, end_step=30)
    assert ledger.get_file(record.id).state is FileState.DONE
    assert drop(ledger, "again.jsonl", "a.jsonl").error.endswith("already done")


def test_control_heartbeat_and_checkpoints(ledger: Ledger) -> None:
    assert ledger.get_control().desired_state is DesiredState.RUNNING
    ledger.set_desired_state(DesiredState.PAUSED)
    assert ledger.get_control().desired_state is DesiredState.PAUSED
    started = datetime.now(UTC)
    for step in (1, 2):
        ledger.heartbeat(
            worker_id="w1",
            pid=1,
            state=WorkerState.TRAINING,
            model_loaded=True,
            started_at=started,
            global_step=step,
            extra={"step": step},
        )
    status = ledger.worker_status()
    assert (status.global_step, status.extra, status.started_at) == (2, {"step": 2}, started)
    assert status.heartbeat_at.tzinfo is not None
    assert ledger.prune_workers(keep=1) == 0
    ledger.record_checkpoint(name="step-2", kind="step", step=2, path="/a")
    ledger.record_checkpoint(name="step-2", kind="step", step=2, path="/b")
    assert [c["path"] for c in ledger.list_checkpoints()] == ["/b"]


def test_restored_ids_and_new_ids_never_collide(ledger: Ledger) -> None:
    """A lost ledger rebuilt under the ids the inbox's file names carry: the sequence that
    hands out new ids must move past them (PostgreSQL does not do that by itself)."""
    from service.ledger import FileState

    restored = ledger.restore_file(
        file_id=12,
        state=FileState.QUEUED,
        name="day3.jsonl",
        path="/inbox/accepted/000012-day3.jsonl",
        sha256=sha("day3"),
        size=10,
        format="text",
        n_examples=2,
    )
    assert restored.id == 12
    assert drop(ledger, "next.jsonl").id == 13
    ledger.ensure_ids_above(30)
    assert drop(ledger, "later.jsonl").id == 31
    # A crash then reclaims: the crash is counted, the live worker's lease is kept.
    ledger.claim(31, worker_id="w1", lease_s=0)
    assert ledger.reap_expired(alive="w1") == []
    (crashed,) = ledger.record_crash(worker_id="w1", reason="killed", max_attempts=3)
    assert crashed.attempts == 1 and crashed.state is FileState.QUEUED
