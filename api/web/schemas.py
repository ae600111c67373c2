"""The shapes of the REST API's requests and responses (docs/api.md), as pydantic models.

Only the API's edge uses pydantic: the routes turn the ledger's frozen records into
these models with the ``*_out`` functions below, and FastAPI renders them into the
OpenAPI document at ``/openapi.json`` (and ``/docs``).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.ledger import Control, FileRecord, FileState
from trainer.records.checkpoints import Kind


class _Out(BaseModel):
    # Frozen: a response is built once and rendered; nothing should edit it on the way.
    model_config = ConfigDict(frozen=True)


class ErrorOut(_Out):
    """Every error response: one sentence a person can act on."""

    detail: str = Field(description="What went wrong and what to do about it.")


class LivezOut(_Out):
    status: Literal["ok"] = Field(description="Always ok: the process answers.")


class CheckOut(_Out):
    ok: bool = Field(description="Whether this check passed.")
    detail: str | None = Field(None, description="Why it failed (null when it passed).")


class ReadyOut(_Out):
    status: Literal["ready", "not ready"]
    checks: dict[str, CheckOut] = Field(
        description="ledger, schema, worker, inbox_watcher, stopping: each with ok and detail."
    )


class LineProblemOut(_Out):
    line: int | None = Field(description="1-based line number; null for the whole file.")
    reason: str = Field(description="What is wrong with it and what to do.")


class FileOut(_Out):
    """Everything the ledger knows of one drop."""

    id: int = Field(description="Ledger id (arrival order).")
    name: str = Field(description="The name it arrived under (a label; identity is sha256).")
    path: str = Field(description="Where the file is now (accepted/, rejected/, duplicates/).")
    sha256: str | None = Field(description="Content hash (null if it could not be read).")
    size: int = Field(description="Bytes on disk when it was checked.")
    format: str | None = Field(description="text, prompt_completion or messages.")
    n_examples: int = Field(description="Valid examples.")
    n_invalid: int = Field(description="Invalid lines.")
    invalid_lines: list[LineProblemOut] = Field(
        description="The first invalid lines, with reasons."
    )
    state: FileState
    priority: int = Field(description="Higher trains first; ties by arrival.")
    error: str | None = Field(
        description="Why it was rejected, failed, cancelled, rolled back or is a duplicate "
        "(null otherwise)."
    )
    start_step: int | None = Field(
        description="Global step when its training started. For a rolled_back file, the "
        "steps are those it had: the lineage no longer holds them."
    )
    target_step: int | None = Field(description="start_step + its fixed step budget.")
    end_step: int | None = Field(description="Global step when it finished.")
    attempts: int = Field(
        description="Times training it crashed the worker (clean stops and restarts do not "
        "count); at worker.max_attempts it fails. Retry starts it at 0."
    )
    lease_owner: str | None = Field(description="Worker holding the claim, while training.")
    lease_expires_at: datetime | None
    duplicate_of: int | None = Field(description="For a duplicate: the file with that content.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    cancel_requested_at: datetime | None = Field(
        description="When cancelling it was asked while it trained (it stops at a step "
        "boundary, then becomes cancelled)."
    )


class RetryOut(FileOut):
    """The record after a retry; for a rejected file, also where it was put back."""

    requeued_as: str | None = Field(
        None,
        description="For a rejected file: its name back in the inbox, where the watcher "
        "checks it again and records it under a new id (this record stays rejected).",
    )


class QueueOut(_Out):
    items: list[FileOut] = Field(description="Files by arrival (ledger id).")
    total: int = Field(description="How many files match the filter in all.")
    limit: int
    offset: int


class CurrentFileOut(_Out):
    id: int
    name: str | None
    start_step: int | None
    target_step: int | None
    progress: float | None = Field(description="0 to 1 of the file's step budget.")


class GoldPointOut(_Out):
    step: int | None = Field(description="Global step of the gold checkpoint.")
    val_loss: float | None = Field(description="Its validation loss, when known.")


class ExportOut(_Out):
    path: str = Field(description="The export folder.")
    from_: str | None = Field(
        alias="from",
        description='What it follows (export.from): "latest" or "gold"; null for an export '
        "written by traind export.",
    )
    source_checkpoint: str | None = Field(
        description="The checkpoint it holds (step-NNNNNNNN or gold); null when written from "
        "the model in memory between checkpoints."
    )
    step: int | None = Field(description="Global step of its weights.")
    lineage_id: str | None
    reason: str | None = Field(
        description="Why it was written: file_end, gold, rollback, restore, requested, ..."
    )
    dtype: str | None
    created_at: str | None
    complete: bool = Field(description="Its manifest.json exists (written last).")


class SampleOut(_Out):
    prompt: str = Field(description="One of eval.prompts.")
    completion: str = Field(description="The model's greedy completion of it.")


class LastEvalOut(_Out):
    step: int | None
    val_loss: float | None
    timestamp: str | None
    sets: dict[str, float | None] = Field(
        default_factory=dict, description="Each named eval set's loss."
    )
    samples: list[SampleOut] = Field(
        default_factory=list, description="Each of eval.prompts with its greedy completion."
    )


class ForgettingDropOut(_Out):
    """One earlier drop's held-out loss now against its best."""

    file: str | None = Field(description="The drop's name in accepted/ (<id:06d>-<name>).")
    sha256: str | None = Field(description="Its content hash.")
    end_step: int | None = Field(description="Global step at which its training ended.")
    loss: float | None = Field(description="Loss of its held-out part at this evaluation.")
    best: float | None = Field(description="The lowest loss of its held-out part ever measured.")
    best_step: int | None = Field(description="Global step at which best was measured.")
    increase: float | None = Field(
        description="loss / best - 1, a fraction (0.1: 10% worse than its best; never negative)."
    )
    sequences: int | None = Field(description="Held-out sequences scored.")


class ForgettingOut(_Out):
    """The newest forgetting report: how much worse earlier drops' held-out parts have got."""

    step: int | None = Field(description="Global step of the evaluation that measured it.")
    worst: ForgettingDropOut = Field(description="The measured drop with the largest increase.")
    measured: int | None = Field(
        description="Drops scored at that evaluation (a bounded sample; oldest and newest "
        "always included)."
    )
    drops_total: int | None = Field(
        description="Drops the lineage has completed that have a held-out part."
    )
    threshold: float | None = Field(
        description="gold.forgetting_threshold (a fraction): gold is blocked when the worst "
        "increase is above it; null when that guard is off."
    )


class WorkerOut(_Out):
    id: str | None
    pid: int | None
    state: str | None
    model_loaded: bool
    heartbeat_age_s: float | None = Field(description="Seconds since its last report.")


class MemoryOut(_Out):
    """What the worker measured at its latest heartbeat (null: not measured there)."""

    host_rss_bytes: int | None = Field(description="The worker process's resident set.")
    device_allocated_bytes: int | None = Field(description="CUDA: bytes in live tensors.")
    device_reserved_bytes: int | None = Field(
        description="CUDA: bytes the caching allocator holds."
    )
    device_peak_bytes: int | None = Field(
        description="CUDA: the most bytes allocated at once since the current file started."
    )
    estimate_bytes: int | None = Field(
        description="The start-up plan: weights, gradients, AdamW moments, activations."
    )


class StatusOut(_Out):
    state: Literal["training", "paused", "idle", "stopping", "error"]
    desired_state: Literal["running", "paused"]
    global_step: int | None
    current_file: CurrentFileOut | None
    train_loss: float | None
    lr: float | None
    tokens_per_s: float | None
    eta_s: float | None = Field(description="Seconds to the end of the current file.")
    memory: MemoryOut | None = Field(
        None, description="The worker's memory at its latest heartbeat; null when none is fresh."
    )
    eta_queue_s: float | None = Field(
        description="Estimate of the seconds until the queue is empty: the current file's "
        "ETA plus each queued file's size in bytes times epochs_per_file, taken as tokens "
        "(exact for the byte tokenizer, about 4 bytes a token otherwise), at the current "
        "tokens/s. Null when no rate is known."
    )
    last_eval: LastEvalOut | None = Field(description="The newest eval event, if any.")
    gold: GoldPointOut | None
    export: ExportOut | None = Field(
        None, description="Where checkpoints/export came from (its export.json), if any."
    )
    forgetting: ForgettingOut | None = Field(
        None,
        description="The newest evaluation's forgetting report (the held-out part of earlier "
        "drops scored again): its worst drop; null before any evaluation measured one.",
    )
    queue: dict[str, int] = Field(description="How many files are in each state.")
    worker: WorkerOut
    error: str | None = Field(description="The fatal error that stops the service, if any.")


class UploadOut(_Out):
    name: str = Field(description="The file's name in the inbox (server-made).")
    label: str = Field(description="The client's file name, reduced to [A-Za-z0-9._-].")
    bytes: int = Field(description="Bytes received.")


class ControlOut(_Out):
    desired_state: Literal["running", "paused"]
    updated_at: datetime
    checkpoint_requested_at: datetime | None
    rollback_requested_at: datetime | None = None
    export_requested_at: datetime | None = None
    eval_requested_at: datetime | None = None


class CheckpointOut(_Out):
    name: str = Field(description="Folder name: step-NNNNNNNN, gold or export.")
    kind: Kind
    step: int | None = Field(description="Global step it holds.")
    created_at: datetime | None
    path: str
    complete: bool = Field(description="Its manifest.json exists (written last).")
    recorded: bool = Field(description="The ledger recorded it when it was committed.")


class CheckpointsOut(_Out):
    items: list[CheckpointOut] = Field(
        description="The folders under paths.checkpoints, by kind (step, gold, export), then step."
    )


class GoldDecisionOut(_Out):
    id: int = Field(description="Its 1-based line number in events.jsonl.")
    event: Literal["gold_checkpoint", "gold_blocked"]
    timestamp: str | None
    step: int | None
    val_loss: float | None
    reason: str | None = Field(description="Why gold was blocked (gold_blocked only).")
    details: dict[str, Any] = Field(description="The event's other fields.")


class GoldOut(_Out):
    gold: GoldPointOut | None = Field(description="The current gold checkpoint, if any.")
    history: list[GoldDecisionOut] = Field(description="Decisions, oldest first.")


class SettingsOut(_Out):
    revision: int = Field(
        description="One more at each start and each accepted reload (SIGHUP); the worker "
        "takes a new revision up from the next file."
    )
    loaded_at: str = Field(description="When these settings were loaded (ISO 8601, UTC).")
    worker_revision: int | None = Field(
        None,
        description="The revision the worker trains with, from its latest heartbeat (lower "
        "than revision until it reaches the end of its file); null before it reports.",
    )
    config_file: str | None = Field(description="The settings file, or null when none is used.")
    settings: dict[str, dict[str, Any]] = Field(
        description="Every section and key in force, as traind.toml names them; server.token "
        "and the password in ledger.url are redacted."
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in {
        401: "Missing or wrong bearer token",
        404: "No such file",
        409: "The file's state does not allow it",
        413: "The upload is larger than watcher.max_file_bytes",
        422: "Malformed request",
        507: "No room on the server's disk for the upload",
    }.items()
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` entries documenting these error codes."""
    return {code: ERRORS[code] for code in codes}


def file_out(record: FileRecord) -> FileOut:
    """A ledger record as the API shows it."""
    fields = dataclasses.asdict(record)
    return FileOut.model_validate(fields)


def retry_out(record: FileRecord, *, requeued_as: str | None = None) -> RetryOut:
    return RetryOut.model_validate({**dataclasses.asdict(record), "requeued_as": requeued_as})


def control_out(control: Control) -> ControlOut:
    return ControlOut(
        desired_state=control.desired_state.value,
        updated_at=control.updated_at,
        checkpoint_requested_at=control.checkpoint_requested_at,
        rollback_requested_at=control.rollback_requested_at,
        export_requested_at=control.export_requested_at,
        eval_requested_at=control.eval_requested_at,
    )
