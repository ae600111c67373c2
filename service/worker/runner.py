"""``traind train FILE...``: train files in order without the daemon.

Same checkpoints, lineage and event-log rules as the daemon's worker. Re-running the
same command after a crash resumes: files the lineage has completed (by content hash)
are skipped with a message, and the interrupted file continues at its exact position.

Run it as ``traind train a.jsonl b.jsonl [--config traind.toml]``.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from service.config.settings import Settings
from service.signals import StopFlag
from trainer.records.checkpoints import (
    EXPORT_DIR,
    EXPORT_INFO,
    float_or_none,
    int_or_none,
    read_json_object,
)
from trainer.records.storage import file_sha256

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2
EXIT_DISK_FULL = 75
"""EX_TEMPFAIL: out of disk space; free some and run the same command again."""
EXIT_GROUP_FAILED = 70
"""EX_SOFTWARE: a torchrun rank hung or died; run the same command again to resume."""


@dataclass(frozen=True, kw_only=True)
class PlannedFile:
    """One command-line file with its content hash."""

    path: Path
    """The file as given."""
    sha256: str
    """Its content hash (identity in the lineage)."""


def plan_files(files: list[Path]) -> list[PlannedFile]:
    planned, seen = [], set()
    for path in files:
        sha = file_sha256(path)
        if sha in seen:
            log.warning("skipping %s: the same content appears earlier on the command line", path)
            continue
        seen.add(sha)
        planned.append(PlannedFile(path=path, sha256=sha))
    return planned


def train_files(
    settings: Settings,
    files: list[Path],
    *,
    init_from: Path | None = None,
    from_gold: bool = False,
    new_lineage: bool = False,
    stop: StopFlag | None = None,
) -> int:
    """Train ``files`` in order on the configured lineage; returns a process exit code."""
    from trainer.distributed import CollectiveTimeoutError
    from trainer.records.storage import DiskFullError

    try:
        return _train(
            settings,
            files,
            init_from=init_from,
            from_gold=from_gold,
            new_lineage=new_lineage,
            stop=stop,
        )
    except DiskFullError as exc:
        log.error("%s; then run the same command again: it resumes from its last checkpoint", exc)
        return EXIT_DISK_FULL
    except CollectiveTimeoutError:
        # Said and recorded (collective_timeout); the last committed checkpoint stands.
        log.error("run the same command again: it resumes from the last committed checkpoint")
        return EXIT_GROUP_FAILED


def _train(
    settings: Settings,
    files: list[Path],
    *,
    init_from: Path | None,
    from_gold: bool,
    new_lineage: bool,
    stop: StopFlag | None,
) -> int:
    from trainer.distributed import leave_group, rank_from_env

    if stop is None:
        stop = StopFlag()
        stop.install()
    if rank_from_env() != 0:
        return _follow(settings)  # a torchrun rank other than 0: rank 0 decides
    try:
        return _lead(settings, files, init_from, from_gold, new_lineage, stop)
    finally:
        leave_group()


def _follow(settings: Settings) -> int:
    """Under ``traind train --nproc-per-node N``: a rank other than 0 trains what rank 0
    decides (``trainer.follower``)."""
    from service.worker.opening import open_trainer
    from trainer.distributed import leave_group
    from trainer.follower import follow

    try:
        return follow(lambda: open_trainer(settings))
    finally:
        leave_group()


def _lead(settings, files, init_from, from_gold, new_lineage, stop) -> int:
    from service.worker.opening import open_trainer
    from trainer.checkpoint import CheckpointError
    from trainer.evaluate import EvalSetError
    from trainer.lineage import LineageError
    from trainer.opening import LineageLockedError
    from trainer.tokenizer import TokenizerError

    planned = plan_files(files)
    try:
        # Not waiting for the lineage lock: beside a running daemon this is refused at once.
        given = {planned_file.sha256: planned_file.path for planned_file in planned}
        trainer = open_trainer(
            settings,
            init_from=init_from,
            from_gold=from_gold,
            new_lineage=new_lineage,
            # A replayed drop whose cache is gone can be tokenized again only from a file
            # on this command line: traind train keeps no record of earlier runs' files.
            source_of=given.get,
        )
    except (LineageError, LineageLockedError, CheckpointError, TokenizerError, EvalSetError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    try:
        return _train_planned(trainer, planned, settings=settings, stop=stop)
    finally:
        trainer.close()


def _train_planned(
    trainer, planned: list[PlannedFile], *, settings: Settings, stop: StopFlag
) -> int:
    from trainer.loop import FileOutcome

    state = trainer.state
    todo = _in_lineage_order(state, _not_yet_trained(state, planned))
    if todo is None:
        return EXIT_USAGE
    rejected = []
    for item in todo:
        if stop():
            break
        outcome = _train_one(trainer, item, stop=stop)
        if outcome is None:
            rejected.append(item.path)
        elif outcome is FileOutcome.STOPPED:
            log.warning(
                "stopped at step %d (checkpoint saved); run the same command again to resume",
                state.global_step,
            )
            return 128 + (stop.signum or signal.SIGTERM)
    if stop() and trainer.unsaved_steps:
        trainer.save_checkpoint(reason="stop")
    trainer.finish()
    log.info("done: %s", run_summary(settings, state))
    if rejected:
        log.error("%d file(s) rejected: %s", len(rejected), ", ".join(str(p) for p in rejected))
        return EXIT_REJECTED
    return 128 + stop.signum if stop() else EXIT_OK


def run_summary(settings: Settings, state) -> str:
    """Where the lineage ends this run: its step and files, its gold and its export (the
    two models a person takes away)."""
    parts = [
        f"global step {state.global_step}",
        f"{len(state.files_completed)} files in the lineage",
    ]
    gold = state.gold or {}
    gold_step, gold_loss = int_or_none(gold.get("step")), float_or_none(gold.get("val_loss"))
    if gold_step is None:
        parts.append("no gold yet")
    elif gold_loss is None:
        parts.append(f"gold at step {gold_step}")
    else:
        parts.append(f"gold at step {gold_step} (val loss {gold_loss:.4f})")
    parts.append(_export_summary(settings))
    return "; ".join(parts)


def _export_summary(settings: Settings) -> str:
    if not settings.export.enabled:
        return "export off (export.enabled = false)"
    folder = settings.run_paths().checkpoints / EXPORT_DIR
    info = read_json_object(folder / EXPORT_INFO)
    step = int_or_none((info or {}).get("step"))
    if step is None:
        # With export.from = "gold", there is none until the first gold.
        return f"no export yet (export.from = {settings.export.source!r})"
    return f"export {folder} at step {step}"


def _not_yet_trained(state, planned: list[PlannedFile]) -> list[PlannedFile]:
    """The planned files the lineage has not completed (the others are said to be skipped)."""
    todo = []
    for item in planned:
        done = state.completed(item.sha256)
        if done is not None:
            log.info(
                "skipping %s: already trained (as %s, steps %d-%d)",
                item.path,
                done.name,
                done.start_step,
                done.end_step,
            )
        else:
            todo.append(item)
    return todo


def _in_lineage_order(state, todo: list[PlannedFile]) -> list[PlannedFile] | None:
    """``todo`` with the file the lineage is in the middle of first; None (said why) if it
    is not among them."""
    current = state.current_file
    if current is None:
        return todo
    match = next((item for item in todo if item.sha256 == current.sha256), None)
    if match is None:
        log.error(
            "the lineage is in the middle of %s (sha256 %s…, step %d of %d-%d); pass that file "
            "again to finish it first",
            current.name,
            current.sha256[:12],
            state.global_step,
            current.start_step,
            current.target_step,
        )
        return None
    return [match, *(item for item in todo if item is not match)]


def _train_one(trainer, item: PlannedFile, *, stop: StopFlag):
    """Train one file; its FileOutcome, or None if it was rejected (with an event)."""
    from trainer.records.formats import DataError

    try:
        data = trainer.prepare(item.path, sha256=item.sha256)
    except DataError as exc:
        log.error("rejected %s: %s", item.path, exc)
        trainer.events.emit(
            "file_rejected", file=item.path.name, sha256=item.sha256, reason=str(exc)
        )
        return None
    return trainer.train_file(data, name=item.path.name, should_stop=stop)
