"""The ledger's tables as SQLAlchemy 2 declarative models.

Only the ledger's query modules touch these; everything else gets the frozen records of
``service.ledger.records`` (each row class has a ``record()`` method that makes one).
The schema is created by Alembic (``migrations/versions``); ``tests/service/
test_migrations.py`` checks that the migrations and these models agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from service.ledger.records import (
    Control,
    DesiredState,
    FileRecord,
    FileState,
    LineProblem,
    WorkerState,
    WorkerStatus,
)
from trainer.records.checkpoints import Kind

# Deterministic constraint names: Alembic needs names to alter or drop constraints later,
# and SQLite's batch mode (table copy) needs them to carry constraints across.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

CHECKPOINT_KINDS: tuple[str, ...] = get_args(Kind)
"""What a recorded checkpoint folder is: ``step``, ``gold`` or ``export``."""


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime in Python, whatever the database keeps.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so the value is stored as
    naive UTC text (which also sorts and compares correctly as text) and comes back aware.
    """

    impl = DateTime
    cache_ok = True

    def __init__(self) -> None:
        super().__init__(timezone=True)

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            # A naive time is ambiguous (local? UTC?); refuse it rather than guess.
            raise ValueError(f"the ledger stores aware datetimes only, got naive {value!r}")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: Any) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


class Base(DeclarativeBase):
    """Declarative base; its ``metadata`` is Alembic's target."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class FileRow(Base):
    """One drop (see ``FileRecord`` for what each column means)."""

    __tablename__ = "files"
    __table_args__ = (
        CheckConstraint(_in("state", FileState), name="state"),
        # AUTOINCREMENT: ids are shown to people, so SQLite must never reuse one.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(1024))
    path: Mapped[str] = mapped_column(Text, index=True)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str | None] = mapped_column(String(32))
    n_examples: Mapped[int] = mapped_column(Integer)
    n_invalid: Mapped[int] = mapped_column(Integer)
    invalid_lines: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True)
    priority: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    start_step: Mapped[int | None] = mapped_column(BigInteger)
    target_step: Mapped[int | None] = mapped_column(BigInteger)
    end_step: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    duplicate_of: Mapped[int | None] = mapped_column(Integer, ForeignKey("files.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lineage_id: Mapped[str | None] = mapped_column(String(64))

    def record(self) -> FileRecord:
        """This row as a frozen record."""
        return FileRecord(
            id=self.id,
            name=self.name,
            path=self.path,
            sha256=self.sha256,
            size=self.size,
            format=self.format,
            n_examples=self.n_examples,
            n_invalid=self.n_invalid,
            invalid_lines=tuple(
                LineProblem(line=item.get("line"), reason=str(item.get("reason", "")))
                for item in self.invalid_lines or ()
            ),
            state=FileState(self.state),
            priority=self.priority,
            error=self.error,
            start_step=self.start_step,
            target_step=self.target_step,
            end_step=self.end_step,
            attempts=self.attempts,
            lease_owner=self.lease_owner,
            lease_expires_at=self.lease_expires_at,
            duplicate_of=self.duplicate_of,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            updated_at=self.updated_at,
            cancel_requested_at=self.cancel_requested_at,
            lineage_id=self.lineage_id,
        )


class ControlRow(Base):
    """The operator's wishes: a single row, id 1, created by the first migration."""

    __tablename__ = "control"
    __table_args__ = (
        CheckConstraint("id = 1", name="single_row"),
        CheckConstraint(_in("desired_state", DesiredState), name="desired_state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    desired_state: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    checkpoint_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rollback_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    export_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    eval_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    def record(self) -> Control:
        """This row as a frozen record."""
        return Control(
            desired_state=DesiredState(self.desired_state),
            updated_at=self.updated_at,
            checkpoint_requested_at=self.checkpoint_requested_at,
            rollback_requested_at=self.rollback_requested_at,
            export_requested_at=self.export_requested_at,
            eval_requested_at=self.eval_requested_at,
        )


class WorkerRow(Base):
    """One worker process's latest heartbeat (see ``WorkerStatus``)."""

    __tablename__ = "workers"

    worker_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    model_loaded: Mapped[bool] = mapped_column(Boolean)
    global_step: Mapped[int | None] = mapped_column(BigInteger)
    # No foreign key: a status report must never fail because of what it mentions.
    file_id: Mapped[int | None] = mapped_column(Integer)
    start_step: Mapped[int | None] = mapped_column(BigInteger)
    target_step: Mapped[int | None] = mapped_column(BigInteger)
    loss: Mapped[float | None] = mapped_column(Double)
    lr: Mapped[float | None] = mapped_column(Double)
    tokens_per_s: Mapped[float | None] = mapped_column(Double)
    eta_s: Mapped[float | None] = mapped_column(Double)
    message: Mapped[str | None] = mapped_column(Text)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)

    def record(self) -> WorkerStatus:
        """This row as a frozen record."""
        return WorkerStatus(
            worker_id=self.worker_id,
            pid=self.pid,
            state=WorkerState(self.state),
            model_loaded=self.model_loaded,
            global_step=self.global_step,
            file_id=self.file_id,
            start_step=self.start_step,
            target_step=self.target_step,
            loss=self.loss,
            lr=self.lr,
            tokens_per_s=self.tokens_per_s,
            eta_s=self.eta_s,
            message=self.message,
            started_at=self.started_at,
            heartbeat_at=self.heartbeat_at,
            extra=dict(self.extra or {}),
        )


class CheckpointRow(Base):
    """A checkpoint folder the worker committed."""

    __tablename__ = "checkpoints"
    __table_args__ = (
        UniqueConstraint("name", "step"),
        CheckConstraint(_in("kind", CHECKPOINT_KINDS), name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    step: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    def record(self) -> dict[str, Any]:
        """This row as a plain dict (JSON-safe but for ``created_at``)."""
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "step": self.step,
            "path": self.path,
            "created_at": self.created_at,
        }
