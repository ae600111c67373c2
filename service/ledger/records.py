"""What the ledger hands out: plain frozen records, never ORM objects.

Every process (watcher, worker, API) reads and writes the ledger through
``service.ledger.Ledger``; these records are the vocabulary they share. (The file states
themselves live in ``trainer.records.lifecycle``, which the command line reads too.)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from trainer.records.lifecycle import FileState

ACTIVE_STATES = (FileState.QUEUED, FileState.TRAINING, FileState.DONE)
"""A drop whose content matches a file in one of these states is a duplicate (not one of
a ``rolled_back`` file: the lineage no longer holds it)."""


class DesiredState(enum.StrEnum):
    """What the operator wants the worker to do."""

    RUNNING = "running"
    PAUSED = "paused"


class WorkerState(enum.StrEnum):
    """What the worker reports it is doing."""

    STARTING = "starting"
    IDLE = "idle"
    TRAINING = "training"
    PAUSED = "paused"
    STOPPING = "stopping"
    ERROR = "error"


@dataclass(frozen=True, kw_only=True)
class LineProblem:
    """One bad line of a drop."""

    line: int | None
    """1-based line number (None for a problem with the whole file)."""
    reason: str
    """What is wrong and what to do, as a person would want to read it."""


@dataclass(frozen=True, kw_only=True)
class FileRecord:
    """One drop, as the ledger knows it."""

    id: int
    """Ledger id (arrival order)."""
    name: str
    """The file name it arrived under (a label; identity is ``sha256``)."""
    path: str
    """Where the file is now (the watcher moves accepted and rejected files)."""
    sha256: str | None
    """Content hash (None if the file could not be read)."""
    size: int
    """Bytes on disk when it was checked."""
    format: str | None
    """``text``, ``prompt_completion`` or ``messages``; None if unknown."""
    n_examples: int
    """Valid examples."""
    n_invalid: int
    """Invalid lines."""
    invalid_lines: tuple[LineProblem, ...]
    """The first invalid lines (capped), with reasons."""
    state: FileState
    """Current state."""
    priority: int
    """Higher trains first; ties by arrival."""
    error: str | None
    """Why it was rejected, failed, cancelled, rolled back or is a duplicate: a reason a
    person can act on."""
    start_step: int | None
    """Global step when its training started (fixed then, rule 1). For a rolled-back file,
    the steps are the ones it had: the lineage no longer holds them."""
    target_step: int | None
    """``start_step + steps_for_file`` (fixed then, rule 1)."""
    end_step: int | None
    """Global step when it finished."""
    attempts: int
    """Times training it ended in a crash of the worker (not a clean stop, a released
    claim, a lapsed lease or a restart: ARCHITECTURE.md rule 13); ``retry`` starts it at 0."""
    lease_owner: str | None
    """Worker id holding the claim, while training."""
    lease_expires_at: datetime | None
    """When the claim lapses unless renewed (UTC)."""
    duplicate_of: int | None
    """For a duplicate: the id of the file with the same content."""
    created_at: datetime
    """When it was recorded (UTC)."""
    started_at: datetime | None
    """First claim (UTC)."""
    finished_at: datetime | None
    """Reached done, failed, rejected, duplicate or cancelled (UTC)."""
    updated_at: datetime
    """Last change (UTC)."""
    cancel_requested_at: datetime | None = None
    """When cancelling it was asked while it trained (the worker stops at a step boundary)."""
    lineage_id: str | None = None
    """The lineage that trained it (set when it is done), so that a lineage can tell its own
    files from an earlier lineage's."""


@dataclass(frozen=True, kw_only=True)
class Control:
    """The operator's wishes, shared through the ledger."""

    desired_state: DesiredState
    """running or paused."""
    updated_at: datetime
    """When it last changed (UTC)."""
    checkpoint_requested_at: datetime | None = None
    """When a checkpoint was last asked for (the worker saves one if it has none newer)."""
    rollback_requested_at: datetime | None = None
    """When a rollback of the lineage to its gold checkpoint was last asked for."""
    export_requested_at: datetime | None = None
    """When an export (half-precision copy for inference) was last asked for."""
    eval_requested_at: datetime | None = None
    """When an evaluation was last asked for (``POST /v1/eval``, ``traind eval``)."""


@dataclass(frozen=True, kw_only=True)
class WorkerStatus:
    """The worker's latest heartbeat."""

    worker_id: str
    """Unique per worker process start."""
    pid: int
    """Process id."""
    state: WorkerState
    """What it is doing."""
    model_loaded: bool
    """The model is resident (the worker is ready)."""
    global_step: int | None
    """Lineage step."""
    file_id: int | None
    """File being trained."""
    start_step: int | None
    """That file's start step."""
    target_step: int | None
    """That file's target step."""
    loss: float | None
    """Recent training loss."""
    lr: float | None
    """Learning rate in force."""
    tokens_per_s: float | None
    """Recent throughput."""
    eta_s: float | None
    """Seconds to the end of the current file."""
    message: str | None
    """Free text (e.g. the last error)."""
    started_at: datetime
    """When the worker process started (UTC)."""
    heartbeat_at: datetime
    """Last report (UTC)."""
    extra: dict = field(default_factory=dict)
    """Anything else worth showing (JSON-safe)."""
