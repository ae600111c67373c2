"""The training state of a checkpoint (``training_state.json``) as a summary a person or a
script reads: the lineage's files and their step ranges, the file in progress, counters,
evaluations and gold records, without the RNG states.

Reads ``format_version`` 1 to 5 (2 adds ``eval_history``, ``gold``, ``gold_history`` and
per-file holdout counts; 3 adds each file's step size, parked files and the files
rollbacks undid; 4 the adaptation and the optimizer's groups; 5 each file's replayed
tokens; an older file simply has none). Plain JSON in, frozen
dataclasses out: no torch, so ``traind inspect`` can use it anywhere. Unlike
``TrainingState.from_dict``, a field that is missing or odd (hand edits happen) is shown
as unknown, not refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainer.records.checkpoints import float_or_none, int_or_none

KNOWN_FORMAT = 5
"""Newest ``training_state.json`` format_version whose fields this module knows (kept
apart from ``state.FORMAT_VERSION``: a new version's fields must be added here too)."""


@dataclass(frozen=True, kw_only=True)
class EvalRecord:
    """An evaluation (``eval_history``) or a gold promotion (``gold``, ``gold_history``)."""

    step: int | None
    """Global step evaluated."""
    val_loss: float | None
    """Validation loss."""
    train_loss: float | None = None
    """Training loss at that step."""
    sets: dict[str, Any] = field(default_factory=dict)
    """Loss on each named eval set."""
    prev_best: float | None = None
    """Gold records only: the best validation loss before this one."""
    promoted_at: str | None = None
    """Gold records only: when it became gold (ISO time)."""


@dataclass(frozen=True, kw_only=True)
class LineageFile:
    """A finished file of the lineage (an entry of ``files_completed``)."""

    name: str
    """File name when it was trained (identity is ``sha256``)."""
    sha256: str
    """Content hash."""
    start_step: int
    """Global step at the file's start."""
    end_step: int
    """Global step at its end."""
    steps: int
    """``end_step - start_step``."""
    n_sequences: int | None
    """Training sequences."""
    tokens: int | None
    """Input tokens processed."""
    mean_loss: float | None
    """Mean training loss over its steps."""
    duration_s: float | None
    """Training seconds."""
    completed_at: str | None
    """When it finished (ISO time)."""
    holdout_fraction: float | None = None
    """Share of its sequences held out for validation (format 2; None before)."""
    n_holdout: int | None = None
    """Sequences held out (format 2; None before)."""
    replayed_tokens: int | None = None
    """Input tokens of earlier drops replayed in its steps (format 5; None before)."""


@dataclass(frozen=True, kw_only=True)
class CurrentFile:
    """The file in progress (``current_file``)."""

    name: str
    """File name as given."""
    sha256: str
    """Content hash."""
    start_step: int
    """Global step when it started."""
    target_step: int
    """Step it ends at, fixed when it started."""
    progress: float
    """Share of its steps done (0 to 1)."""
    epoch: int | None
    """Pass over the file in progress (0-based)."""
    cursor: int | None
    """Sequences of its epoch-concatenated order consumed."""
    n_sequences: int | None
    """Training sequences."""
    tokens: int | None
    """Input tokens processed so far."""
    elapsed_s: float | None
    """Training seconds so far."""
    started_at: str | None
    """When it started (ISO time)."""
    holdout_fraction: float | None = None
    """Share held out for validation (format 2)."""
    n_holdout: int | None = None
    """Sequences held out (format 2)."""
    replayed_tokens: int | None = None
    """Input tokens of earlier drops replayed in its steps so far (format 5)."""
    sequences_per_step: int | None = None
    """Sequences each of its optimizer steps takes, fixed when it started (format 3)."""
    parked_at: int | None = None
    """For a parked file: the step it was set aside at (format 3)."""


@dataclass(frozen=True, kw_only=True)
class TrainingSummary:
    """What ``training_state.json`` says, without the RNG states."""

    format_version: int
    """Layout version of the file."""
    lineage_id: str | None
    """Identifies the lineage across its checkpoints."""
    created_at: str | None
    """When the lineage started."""
    seed: int | None
    """The lineage's seed."""
    global_step: int
    """Optimizer steps taken by the lineage."""
    tokens_processed: int | None
    """Input tokens processed by the lineage."""
    current_file: CurrentFile | None
    """The file in progress, if any."""
    lineage: tuple[LineageFile, ...]
    """Finished files, in training order."""
    micro_batch_size: int | None
    """Micro-batch in force."""
    grad_accum_steps: int | None
    """Accumulation in force."""
    configured_batch: tuple[int, ...] | None
    """(micro, accum) as configured; differs from the pair in force after OOM recovery."""
    nan_skips_total: int
    """Optimizer steps skipped for non-finite loss or gradients."""
    rollbacks: int
    """Rollbacks to a good checkpoint."""
    oom_recoveries: int
    """Micro-batch halvings after running out of memory."""
    optimizer_resets: tuple[dict[str, Any], ...]
    """When and why the optimizer state started fresh."""
    init_from: dict[str, Any] | None
    """Where the starting weights came from, if not initialised fresh."""
    model_spec: dict[str, Any]
    """Model settings the lineage was last opened with."""
    adaptation: dict[str, Any]
    """LoRA settings and base, vocabulary extension (``{}`` for a plain lineage)."""
    train_config: dict[str, Any]
    """Hyper-parameters in force at the save."""
    eval_history: tuple[EvalRecord, ...] = ()
    """Evaluations, oldest first (format 2)."""
    gold: EvalRecord | None = None
    """The current gold record (format 2)."""
    gold_history: tuple[EvalRecord, ...] = ()
    """Gold promotions, oldest first (format 2)."""
    parked: tuple[CurrentFile, ...] = ()
    """Files set aside unfinished (cancelled, failed, rolled back): a retry continues
    each where it stopped (format 3)."""
    files_rolled_back: tuple[dict[str, Any], ...] = ()
    """Files finished after gold that rollbacks to gold undid on purpose (format 3)."""


def summarize_training(raw: dict[str, Any], *, notes: list[str]) -> TrainingSummary:
    """The summary of a parsed ``training_state.json``; what looks wrong goes to ``notes``.

    KeyError, TypeError or ValueError: a field every version has is missing or malformed.
    """
    version = int(raw.get("format_version", 1))
    if version > KNOWN_FORMAT:
        notes.append(
            f"format_version {version} is newer than this traind knows; fields it "
            "does not know are left out"
        )
    lineage = tuple(_lineage_file(f) for f in raw.get("files_completed") or ())
    step = int(raw["global_step"])
    current = _current_file(raw["current_file"], step) if raw.get("current_file") else None
    # Steps outside every finished file: a file cancelled or abandoned part-way.
    edge = 0
    for file in lineage:
        if file.start_step != edge:
            notes.append(f"steps {edge} → {file.start_step} belong to no finished file")
        edge = file.end_step
    end = current.start_step if current else step
    if end != edge:
        notes.append(f"steps {edge} → {end} belong to no finished file")
    gold = raw.get("gold")
    batch = raw.get("configured_batch")
    return TrainingSummary(
        format_version=version,
        lineage_id=raw.get("lineage_id"),
        created_at=raw.get("created_at"),
        seed=int_or_none(raw.get("seed")),
        global_step=step,
        tokens_processed=int_or_none(raw.get("tokens_processed")),
        current_file=current,
        lineage=lineage,
        micro_batch_size=int_or_none(raw.get("micro_batch_size")),
        grad_accum_steps=int_or_none(raw.get("grad_accum_steps")),
        configured_batch=tuple(int(n) for n in batch) if batch else None,
        nan_skips_total=int(raw.get("nan_skips_total") or 0),
        rollbacks=int(raw.get("rollbacks") or 0),
        oom_recoveries=int(raw.get("oom_recoveries") or 0),
        optimizer_resets=tuple(raw.get("optimizer_resets") or ()),
        init_from=raw.get("init_from"),
        model_spec=dict(raw.get("model_spec") or {}),
        adaptation=dict(raw.get("adaptation") or {})
        if isinstance(raw.get("adaptation"), dict)
        else {},
        train_config=dict(raw.get("train_config") or {}),
        eval_history=tuple(_eval(r) for r in raw.get("eval_history") or ()),
        gold=_eval(gold) if isinstance(gold, dict) else None,
        gold_history=tuple(_eval(r) for r in raw.get("gold_history") or ()),
        parked=tuple(_current_file(f, step) for f in raw.get("parked") or ()),
        files_rolled_back=tuple(raw.get("files_rolled_back") or ()),
    )


def _lineage_file(raw: dict[str, Any]) -> LineageFile:
    start, end = int(raw["start_step"]), int(raw["end_step"])
    return LineageFile(
        name=str(raw["name"]),
        sha256=str(raw["sha256"]),
        start_step=start,
        end_step=end,
        steps=end - start,
        n_sequences=int_or_none(raw.get("n_sequences")),
        tokens=int_or_none(raw.get("tokens")),
        mean_loss=float_or_none(raw.get("mean_loss")),
        duration_s=float_or_none(raw.get("duration_s")),
        completed_at=raw.get("completed_at"),
        holdout_fraction=float_or_none(raw.get("holdout_fraction")),
        n_holdout=int_or_none(raw.get("n_holdout")),
        replayed_tokens=int_or_none(raw.get("replayed_tokens")),
    )


def _current_file(raw: dict[str, Any], step: int) -> CurrentFile:
    start, target = int(raw["start_step"]), int(raw["target_step"])
    cursor, n_sequences = int_or_none(raw.get("cursor")), int_or_none(raw.get("n_sequences"))
    epoch = int_or_none(raw.get("epoch"))
    if epoch is None and cursor is not None and n_sequences:
        epoch = cursor // n_sequences
    return CurrentFile(
        name=str(raw["name"]),
        sha256=str(raw["sha256"]),
        start_step=start,
        target_step=target,
        progress=min(1.0, max(0.0, (step - start) / (target - start))) if target > start else 1.0,
        epoch=epoch,
        cursor=cursor,
        n_sequences=n_sequences,
        tokens=int_or_none(raw.get("tokens")),
        elapsed_s=float_or_none(raw.get("elapsed_s")),
        started_at=raw.get("started_at"),
        holdout_fraction=float_or_none(raw.get("holdout_fraction")),
        n_holdout=int_or_none(raw.get("n_holdout")),
        sequences_per_step=int_or_none(raw.get("sequences_per_step")),
        parked_at=int_or_none(raw.get("parked_at")),
        replayed_tokens=int_or_none(raw.get("replayed_tokens")),
    )


def _eval(raw: dict[str, Any]) -> EvalRecord:
    return EvalRecord(
        step=int_or_none(raw.get("step")),
        val_loss=float_or_none(raw.get("val_loss")),
        train_loss=float_or_none(raw.get("train_loss")),
        sets=dict(raw.get("sets") or {}),
        prev_best=float_or_none(raw.get("prev_best")),
        promoted_at=raw.get("promoted_at"),
    )
