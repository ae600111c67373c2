"""Opening a Trainer: the lineage held (``trainer.opening``), the Trainer built, and what
a start writes (a rollback committed, ``training_start``, a new lineage's first
checkpoint, an export put back on its source).

In a torchrun group rank 0 opens first and tells the others what it opened, with its
settings (:func:`trainer.opening.announce_open`); they build the same Trainer with them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.config import EvalConfig, ExportConfig, GoldConfig, LineageSpec, RunPaths, TrainConfig
from trainer.distributed import DistConfig
from trainer.memory_use import host_rss_bytes
from trainer.opening import OpenRequest, announce_open, check_memory, hold_lineage
from trainer.records.events import EventLog
from trainer.records.storage import DiskFullError
from trainer.replay import SourceFinder
from trainer.rollback import commit_rollback


def open_trainer(
    cls: type,
    *,
    spec: LineageSpec,
    train: TrainConfig,
    paths: RunPaths,
    init_from: Path | None = None,
    events: EventLog | None = None,
    lock_wait_s: float = 0.0,
    evaluation: EvalConfig | None = None,
    gold: GoldConfig | None = None,
    export: ExportConfig | None = None,
    from_gold: bool = False,
    rollback_request: str | None = None,
    in_progress: dict | None = None,
    new_lineage: bool = False,
    expected_lineage: str | None = None,
    on_disk_full: Callable[[DiskFullError], None] | None = None,
    source_of: SourceFinder | None = None,
    distributed: DistConfig | None = None,
) -> Any:
    """Open (or start) the lineage under ``paths.checkpoints`` and hold it.

    ``from_gold`` first rolls it back to gold (newer checkpoints are kept under
    ``rolled-back/``) for the operator's request of ``rollback_request`` (ISO time),
    made while ``in_progress`` (``name``, ``sha256``) was trained; a rollback a crash
    interrupted is finished first, whatever is asked. ``new_lineage``,
    ``expected_lineage``: :func:`trainer.lineage.open_lineage`. ``source_of`` finds a
    finished drop's source by sha256, for a replay whose cache entry is gone.
    ``distributed``: how a torchrun group trains (``trainer.distributed``); rank 0
    opens and decides, the other ranks follow (``trainer.follower``)."""
    baseline_rss = host_rss_bytes()  # what the memory plan leaves out: torch, the interpreter
    held = hold_lineage(
        OpenRequest(
            spec=spec,
            train=train,
            paths=paths,
            events=events,
            lock_wait_s=lock_wait_s,
            init_from=init_from,
            from_gold=from_gold,
            rollback_request=rollback_request,
            in_progress=in_progress,
            new_lineage=new_lineage,
            expected_lineage=expected_lineage,
            distributed=distributed,
        )
    )
    announce_open(held, init_from=init_from, configs=(spec, train, evaluation, gold, export))
    if held.configs is not None:  # a rank other than 0 takes rank 0's settings
        _spec, train, evaluation, gold, export = held.configs
    try:
        trainer = cls(
            held,
            train=train,
            paths=paths,
            evaluation=evaluation,
            gold=gold,
            export=export,
            on_disk_full=on_disk_full,
            source_of=source_of,
            distributed=distributed,
        )
    except BaseException:
        held.lock.release()
        raise
    trainer.memory.baseline_rss = baseline_rss
    try:
        start(trainer)
    except BaseException:
        trainer.close()
        raise
    return trainer


def start(trainer: Any) -> None:
    """What opening does once the lineage is held: record a retired lineage or a
    rollback, say that training starts, and write what a crash may have cut off."""
    lineage = trainer.lineage
    if lineage.retired is not None:
        trainer.events.emit("lineage_retired", kept_in=str(lineage.retired))
    for event, fields in lineage.announcements:
        trainer.events.emit(event, **fields)
    if trainer.rollback is not None:
        commit_rollback(trainer.rollback, checkpointer=trainer.checkpointer)
        trainer.exporter.after_rollback()
    memory = check_memory(
        lineage,
        train=trainer.train,
        device=trainer.device,
        half_precision=trainer.steps.half_precision,
        shards=trainer.group.world_size if trainer.group.sharded else 1,
    )
    trainer.memory.estimate_bytes = memory.total
    trainer.session.start(
        lineage,
        device=trainer.device,
        memory=memory,
        train=trainer.train,
        evaluation=trainer.evaluation,
        gold=trainer.gold_config,
    )
    if lineage.resumed_from is None:
        trainer.checkpointer.save(reason="lineage_start")
    if trainer.rollback is None:
        trainer.exporter.restore()
    trainer.evaluator.restore_recent(
        [(f.name, f.sha256, f.holdout_fraction) for f in trainer.state.files_completed]
    )
