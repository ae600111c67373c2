"""The lineage's checkpointer: step checkpoints, gold, the export, and what is unsaved.

A :class:`trainer.loop.Trainer` owns one. At an optimizer-step boundary it writes what
the lineage holds (model, optimizer, tokenizer, and the training state with its RNG) as
``step-NNNNNNNN`` or as ``gold``, each atomically
(``trainer.checkpoint``, ARCHITECTURE.md rule 8), and knows how many steps the newest
checkpoint is behind. A full disk is waited out through ``on_disk_full``; one lineage
never overwrites another's gold or export (rule 15). The export is ``trainer.exporter``'s.

With ``train.async_checkpoints`` an interval checkpoint is a host copy taken at the step
boundary and written on a background thread (``trainer.background``), one at a time;
every other checkpoint waits for it, then is written before ``save`` returns. A
background save is collected on the training thread (``poll`` at every step boundary,
the next ``save``, ``drain`` before closing): only then is it counted, rotated, reported
to ``on_checkpoint`` and logged as ``checkpoint_saved``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from trainer.adaptation import Adaptation, saved_names
from trainer.background import OneInFlight, host_copy
from trainer.checkpoint import (
    CheckpointContent,
    CheckpointError,
    fault_at,
    rotate,
    write_checkpoint,
)
from trainer.config import TrainConfig
from trainer.distributed import SOLO, Group
from trainer.group_checkpoint import begin_for_group, write_for_group
from trainer.lineage import Lineage
from trainer.optim import optimizer_layout
from trainer.records.checkpoints import GOLD_DIR, RETIRED_DIR, step_folder
from trainer.records.events import EventLog
from trainer.records.state import TrainingState
from trainer.records.storage import DiskFullError
from trainer.records.traces import owner
from trainer.rng import capture_rng

T = TypeVar("T")

log = logging.getLogger(__name__)

BACKGROUND_REASONS = frozenset({"interval"})
"""Reasons whose checkpoint may be written in the background: nothing waits on them. Any
other (a file's end before ``file_complete``, a stop before the process ends, a pause,
a rollback...) is committed before ``save`` returns."""


@dataclass(frozen=True, kw_only=True)
class PendingSave:
    """A step checkpoint being written in the background."""

    step: int
    """The global step it holds."""
    reason: str
    """Why it was taken."""
    path: Path
    """Where it appears once committed."""
    snapshot_s: float
    """Seconds the caller was blocked to start it (waiting for the one before, copying)."""


class Checkpointer:
    """Writes the lineage's checkpoints, gold and export under ``root``."""

    def __init__(
        self,
        lineage: Lineage,
        *,
        root: Path,
        train: TrainConfig,
        events: EventLog,
        on_disk_full: Callable[[DiskFullError], None] | None = None,
        group: Group = SOLO,
    ) -> None:
        self.lineage = lineage
        self.group = group
        """In a torchrun group every rank writes each checkpoint with the others
        (``trainer.group_checkpoint``), synchronously; rank 0 alone commits, rotates and
        reports it."""
        self.names: tuple[str, ...] = ()
        """The model's tensors a group checkpoint holds (``trainer.parallel.Parallel``)."""
        self.root = root
        self.train = train
        self.events = events
        self.on_checkpoint: Callable[[Path, int, list[Path]], None] | None = None
        """Called after each committed checkpoint with (folder, step, folders rotated out)."""
        self.on_gold: Callable[[Path, int], None] | None = None
        """Called after each promotion to gold with (folder, step)."""
        self.before_save: Callable[[], None] = lambda: None
        """Called before any save: the trainer accounts for steps not yet read back from
        the device (``trainer.readback``), so no committed state lacks them."""
        self.on_disk_full = on_disk_full
        """Called when a checkpoint, gold or export write finds the disk full: it returns
        when the write is worth trying again, or raises to give up (see ``with_space``)."""
        self.last_saved_step = -1 if lineage.resumed_from is None else self.state.global_step
        """The step of the newest step checkpoint this process knows to be committed."""
        self.saves = 0
        """Step checkpoints committed by this process and collected (tells a caller
        whether one was written while it looked away)."""
        self.pending: PendingSave | None = None
        """The step checkpoint being written in the background, if any."""
        self._background = OneInFlight(name="checkpoint-writer")

    @property
    def state(self) -> TrainingState:
        return self.lineage.state

    @property
    def unsaved_steps(self) -> int:
        """Optimizer steps taken since the newest step checkpoint known to be committed
        (a save still in flight does not count until it is collected)."""
        return self.state.global_step - self.last_saved_step

    def save(self, *, reason: str) -> Path:
        """Commit the state at this optimizer-step boundary as ``step-NNNNNNNN``.

        A save in flight is waited for and collected first. With ``train.async_checkpoints``
        an ``interval`` save is a host copy handed to the background writer: its folder is
        returned at once and appears when the write commits. Every other one is committed
        before this returns."""
        saves = self.saves
        self.before_save()
        if self.saves != saves and self.last_saved_step == self.state.global_step:
            # Settling rewound and committed this very boundary (reason ``rollback``).
            return self.root / step_folder(self.state.global_step)
        started = time.monotonic()
        # A background save that ran out of space is covered by this one, written now.
        failed = self._settle(wait=True)
        if reason in BACKGROUND_REASONS and self.train.async_checkpoints and failed is None:
            return self._save_later(reason=reason, started=started)
        return self._save_now(reason=reason, started=started)

    def poll(self, *, wait: bool = False) -> None:
        """At an optimizer-step boundary: collect the background save if it has ended
        (``wait``: once it has). A failure is raised here, as a synchronous save would
        have raised it; one for lack of space goes to ``on_disk_full`` and is covered by
        a synchronous save of this boundary."""
        failed = self._settle(wait=wait)
        if failed is not None:
            self._save_now(reason=failed.reason, started=time.monotonic())

    def drain(self, *, strict: bool = True) -> None:
        """Wait for the background save and collect it (before closing or finishing). A
        failure is raised (``strict``) or logged; nothing is saved again here, as the
        caller may not be at a step boundary: the previous checkpoint stands, and the
        steps after it are trained again, exactly as after a crash."""
        try:
            self._collect(wait=True)
        except Exception:
            if strict:
                raise
            log.exception(
                "a background checkpoint write failed; the newest committed one is step %d",
                self.last_saved_step,
            )

    def _save_now(self, *, reason: str, started: float) -> Path:
        began = time.monotonic()
        step = self.state.global_step
        content = self._content()
        path = self.with_space(lambda: self._write(step_folder(step), content))
        self._committed(
            path,
            step=step,
            reason=reason,
            duration_s=time.monotonic() - began,
            blocked_s=0.0,
            since=started,
            background=False,
        )
        return path

    def _save_later(self, *, reason: str, started: float) -> Path:
        step = self.state.global_step
        name = step_folder(step)
        if self.group.distributed:
            # Every rank copies its shards to host memory now (DCP's async_save); the
            # thread waits for all of them, and rank 0 then commits the folder.
            finish = begin_for_group(
                self.root,
                name,
                self._content(),
                group=self.group,
                names=self.names,
                fault=fault_at("checkpoint"),
            )
            self._background.start(finish)
        else:
            snapshot = self._snapshot(self._content())
            self._background.start(lambda: self._write(name, snapshot))
        self.pending = PendingSave(
            step=step, reason=reason, path=self.root / name, snapshot_s=time.monotonic() - started
        )
        return self.pending.path

    def _settle(self, *, wait: bool) -> PendingSave | None:
        """Collect the background save (``_collect``); one that found the disk full is
        reported to ``on_disk_full`` (which waits for space, or raises to give up) and
        returned, for the caller to cover with a synchronous save."""
        pending = self.pending
        try:
            self._collect(wait=wait)
        except DiskFullError as exc:
            if self.on_disk_full is None:
                raise
            log.warning("background checkpoint %s found the disk full", pending.path.name)
            self.on_disk_full(exc)
            return pending
        return None

    def _collect(self, *, wait: bool) -> None:
        """Take the background save's outcome, if it has ended (``wait``: once it has):
        account for it as committed, or raise what the write raised."""
        pending = self.pending
        outcome = self._background.collect(wait=wait)
        if pending is None or outcome is None:
            return
        self.pending = None
        collecting = time.monotonic()
        if outcome.error is not None:
            outcome.error.add_note(f"(raised by the background write of {pending.path.name})")
            raise outcome.error
        self._committed(
            outcome.value,
            step=pending.step,
            reason=pending.reason,
            duration_s=pending.snapshot_s + outcome.seconds,
            blocked_s=pending.snapshot_s,
            since=collecting,
            background=True,
        )

    def _committed(
        self,
        path: Path,
        *,
        step: int,
        reason: str,
        duration_s: float,
        blocked_s: float,
        since: float,
        background: bool,
    ) -> None:
        """What follows a committed step checkpoint, on the training thread: count it,
        rotate, ``on_checkpoint``, the log line and ``checkpoint_saved``. Training was
        blocked ``blocked_s`` before ``since`` (the copy of a background save), then from
        ``since`` until now."""
        self.last_saved_step = step
        self.saves += 1
        if not self.group.leader:
            return
        removed = rotate(self.root, keep=self.train.keep_checkpoints, protect=(path,))
        if self.on_checkpoint is not None:
            self.on_checkpoint(path, step, removed)
        blocking = blocked_s + time.monotonic() - since
        log.info(
            "checkpoint %s saved (%s, %.2fs, training blocked %.2fs%s)",
            path.name,
            reason,
            duration_s,
            blocking,
            ", written in the background" if background else "",
        )
        self.events.emit(
            "checkpoint_saved",
            step=step,
            path=str(path),
            reason=reason,
            duration_s=round(duration_s, 3),
            blocking_s=round(blocking, 3),
            rotated=[p.name for p in removed],
            **{"async": background},
        )

    def save_gold(self) -> Path:
        """Write the state at this step as ``gold`` (atomic, like every checkpoint), then
        tell ``on_gold``. A background save is collected first: one write at a time."""
        self.before_save()
        self.poll(wait=True)
        if self.group.leader:
            self.refuse_foreign(GOLD_DIR)
        content = self._content()
        path = self.with_space(lambda: self._write(GOLD_DIR, content))
        if self.on_gold is not None and self.group.leader:
            self.on_gold(path, self.state.global_step)
        return path

    def with_space(self, write: Callable[[], T]) -> T:
        """``write()``; when the disk is full, ``on_disk_full`` (if set) waits for space
        and it is tried again, so no step is lost and no file is blamed. Without it, the
        DiskFullError goes to the caller (``traind train`` stops with it)."""
        while True:
            try:
                return write()
            except DiskFullError as exc:
                if self.on_disk_full is None:
                    raise
                self.on_disk_full(exc)

    def _write(self, name: str, content: CheckpointContent) -> Path:
        """Write and commit ``content`` as ``root/name`` (on either thread: it touches
        nothing but the folder)."""
        if self.group.distributed:
            return write_for_group(
                self.root,
                name,
                content,
                group=self.group,
                names=self.names,
                fault=fault_at("checkpoint"),
            )
        return write_checkpoint(self.root, name, content)

    def _snapshot(self, content: CheckpointContent) -> CheckpointContent:
        """``content`` as a copy in host memory, for a write while training goes on."""
        return host_copy(content)

    def _content(self) -> CheckpointContent:
        """Everything at this optimizer-step boundary, as a checkpoint holds it."""
        lineage, state = self.lineage, self.state
        state.rng = capture_rng()
        state.train_config = self.train.to_dict()
        state.accum_micro_step = 0
        state.optimizer_layout = optimizer_layout(lineage.model)
        adaptation = Adaptation.from_dict(state.adaptation)
        return CheckpointContent(
            model=lineage.model,
            optimizer_state=lineage.optimizer.state_dict(),
            config=lineage.model_config.to_dict(),
            tokenizer_json=lineage.tokenizer.to_json(),
            training_state=state.to_dict(),
            tokenizer_config_json=lineage.tokenizer.config_json(),
            shard_bytes=self.train.shard_bytes,
            names=tuple(saved_names(lineage.model, adaptation)) if adaptation.lora else None,
        )

    def refuse_foreign(self, name: str) -> None:
        """One lineage never overwrites another's gold or export (ARCHITECTURE.md rule 15)."""
        folder = self.root / name
        other = owner(folder)
        if other is not None and other != self.state.lineage_id:
            raise CheckpointError(
                f"{folder} belongs to lineage {other[:8]}, not to this one "
                f"({self.state.lineage_id[:8]}); traind never overwrites another lineage's "
                f"{name}: move it aside (e.g. under {self.root / RETIRED_DIR}/)"
            )
