"""Alembic migrations of the ledger: found without an alembic.ini, upgrade from nothing,
agree with the models, and go down and up again."""

from __future__ import annotations

import importlib.resources
import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from service.ledger import DesiredState, FileState, Ledger, migrate
from service.ledger.models import Base

TABLES = {"files", "control", "workers", "checkpoints"}


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_the_migrations_package_is_found_without_alembic_ini(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # nowhere near the repository's files
    config = migrate.alembic_config("sqlite:///x.db")
    assert config.config_file_name is None
    location = Path(config.get_main_option("script_location"))
    assert location == Path(str(importlib.resources.files("migrations")))
    assert (location / "env.py").is_file()
    assert (location / "script.py.mako").is_file()
    assert (location / "versions" / "__init__.py").is_file()
    revisions = [s.revision for s in ScriptDirectory.from_config(config).walk_revisions()]
    assert revisions[-1] == "0001_initial"
    assert migrate.head_revision() == revisions[0]


def test_upgrade_from_empty_to_head(url: str) -> None:
    assert migrate.current_revision(url) is None
    migrate.upgrade(url)
    assert migrate.current_revision(url) == migrate.head_revision()
    assert tables(url) == TABLES
    migrate.upgrade(url)  # again: nothing to do
    assert migrate.current_revision(url) == migrate.head_revision()


def test_the_first_migration_creates_the_control_row(url: str) -> None:
    migrate.upgrade(url)
    with Ledger(url) as ledger:
        assert ledger.at_head()
        assert ledger.get_control().desired_state is DesiredState.RUNNING


def test_models_and_migrated_schema_agree(url: str) -> None:
    migrate.upgrade(url)
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_downgrade_to_base_and_upgrade_again(url: str) -> None:
    with Ledger.open(url) as ledger:
        ledger.record_checkpoint(name="step-1", kind="step", step=1, path="/c")
    migrate.downgrade(url, revision="base")
    assert migrate.current_revision(url) is None
    assert tables(url) == set()
    migrate.upgrade(url)
    assert tables(url) == TABLES
    with Ledger.open(url) as ledger:
        assert ledger.list_checkpoints() == []
        assert ledger.get_control().desired_state is DesiredState.RUNNING


def test_the_config_keeps_a_percent_in_the_url() -> None:
    # Alembic's config interpolates "%": a URL-escaped password must come out intact.
    url = "postgresql+psycopg://traind:p%40ss@localhost/traind"
    assert migrate.alembic_config(url).get_main_option("sqlalchemy.url") == url


def test_alembic_commands_work_on_a_url_alone(url: str) -> None:
    # The path `alembic upgrade` / `alembic check` take: env.py opens its own engine.
    config = migrate.alembic_config(url)
    command.upgrade(config, "head")
    assert migrate.current_revision(url) == migrate.head_revision()
    command.check(config)  # raises if the models need a migration the versions lack


def test_a_crash_mid_migration_leaves_nothing_half_done(url: str) -> None:
    # SQLite DDL is transactional under the ledger's own BEGIN: all of a migration or none.
    with Ledger(url) as ledger:
        with pytest.raises(RuntimeError, match="crash"), ledger.engine.begin() as connection:
            migrate.upgrade_connection(connection)
            raise RuntimeError("crash after the DDL, before the commit")
        assert not ledger.at_head()
    assert migrate.current_revision(url) is None
    assert tables(url) == set()


def test_processes_starting_together_all_open_the_ledger(url: str) -> None:
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


def test_a_ledger_from_a_newer_traind_is_refused_clearly(url: str) -> None:
    migrate.upgrade(url)
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    finally:
        engine.dispose()
    with pytest.raises(migrate.MigrationError, match=r"'9999_future'.*a newer traind"):
        Ledger.open(url)


def test_0005_lets_a_0004_ledger_hold_rolled_back_files(url: str) -> None:
    # A 0004 ledger (rows written as that schema knows them: the models move on) with a
    # duplicate's link to its twin across the copy SQLite makes of the table, and ids
    # reserved above its rows.
    migrate.upgrade(url, revision="0004_file_lineage")
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(INSERT_0004), {"state": "done", "duplicate_of": None})
            connection.execute(text(INSERT_0004), {"state": "duplicate", "duplicate_of": 1})
            connection.execute(text("UPDATE sqlite_sequence SET seq = 40 WHERE name = 'files'"))
            with pytest.raises(IntegrityError):
                connection.execute(text("UPDATE files SET state = 'rolled_back'"))
        migrate.upgrade(url)
        with Ledger(url) as ledger:
            with ledger.engine.begin() as connection:
                connection.execute(text("UPDATE files SET state = 'rolled_back' WHERE id = 1"))
                with pytest.raises(IntegrityError):
                    connection.execute(text("UPDATE files SET state = 'lost' WHERE id = 1"))
            assert ledger.get_file(1).state is FileState.ROLLED_BACK
            assert ledger.get_file(2).duplicate_of == 1
            new = ledger.record_file(
                name="c.jsonl", path="/c", sha256="c" * 64, size=1, format="text", n_examples=1
            )
            assert new.id == 41  # the reserved ids stay reserved
        with engine.connect() as connection:
            schema = text("SELECT sql FROM sqlite_master WHERE name = 'files'")
            assert "AUTOINCREMENT" in connection.execute(schema).scalar()
        # Down again: a rolled-back file was done before the state existed.
        migrate.downgrade(url, revision="0004_file_lineage")
        with engine.begin() as connection:
            states = connection.execute(text("SELECT state FROM files ORDER BY id")).scalars()
            assert list(states) == ["done", "duplicate", "queued"]
            with pytest.raises(IntegrityError):
                connection.execute(text("UPDATE files SET state = 'rolled_back'"))
    finally:
        engine.dispose()


INSERT_0004 = (
    "INSERT INTO files (name, path, sha256, size, n_examples, n_invalid, invalid_lines, state, "
    "priority, attempts, duplicate_of, created_at, updated_at) VALUES ('a.jsonl', '/a', NULL, "
    "1, 1, 0, '[]', :state, 0, 0, :duplicate_of, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
)
