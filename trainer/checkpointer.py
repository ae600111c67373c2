"""The lineage's checkpointer: step checkpoints, gold, the export, and what is unsaved.

A :class:`trainer.loop.Trainer` owns one. At an optimizer-step boundary it writes what
the lineage holds (model, optimizer, tokenizer, and the training state with its RNG) as
``step-NNNNNNNN`` or as ``gold``, each atomically
(``trainer.checkpoint``, ARCHITECTURE.md rule 8), and knows how many steps the newest
checkpoint is behind. A full disk is waited out through ``on_disk_full``; one lineage
never overwrites another's gold or export (rule 15). The export is ``trainer.exporter``'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from trainer.adaptation import Adaptation, saved_names
from trainer.checkpoint import (
    CheckpointContent,
    CheckpointError,
    rotate,
    write_checkpoint,
)
from trainer.config import TrainConfig
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
    ) -> None:
        self.lineage = lineage
        self.root = root
        self.train = train
        self.events = events
        self.on_checkpoint: Callable[[Path, int, list[Path]], None] | None = None
        """Called after each committed checkpoint with (folder, step, folders rotated out)."""
        self.on_gold: Callable[[Path, int], None] | None = None
        """Called after each promotion to gold with (folder, step)."""
        self.on_disk_full = on_disk_full
        """Called when a checkpoint, gold or export write finds the disk full: it returns
        when the write is worth trying again, or raises to give up (see ``with_space``)."""
        self.last_saved_step = -1 if lineage.resumed_from is None else self.state.global_step
        """The step of the newest step checkpoint this process knows to be committed."""
        self.saves = 0
        """Step checkpoints committed by this process (tells a caller whether one was
        written while it looked away)."""

    @property
    def state(self) -> TrainingState:
        return self.lineage.state

    @property
    def unsaved_steps(self) -> int:
        """Optimizer steps taken since the newest step checkpoint."""
        return self.state.global_step - self.last_saved_step

    def save(self, *, reason: str) -> Path:
        """Commit the state at this optimizer-step boundary as ``step-NNNNNNNN``."""
        state = self.state
        started = time.monotonic()
        content = self._content()
        path = self.with_space(
            lambda: write_checkpoint(self.root, step_folder(state.global_step), content)
        )
        self.last_saved_step = state.global_step
        self.saves += 1
        removed = rotate(self.root, keep=self.train.keep_checkpoints, protect=(path,))
        if self.on_checkpoint is not None:
            self.on_checkpoint(path, state.global_step, removed)
        duration = time.monotonic() - started
        log.info("checkpoint %s saved (%s, %.2fs)", path.name, reason, duration)
        self.events.emit(
            "checkpoint_saved",
            step=state.global_step,
            path=str(path),
            reason=reason,
            duration_s=round(duration, 3),
            rotated=[p.name for p in removed],
        )
        return path

    def save_gold(self) -> Path:
        """Write the state at this step as ``gold`` (atomic, like every checkpoint), then
        tell ``on_gold``."""
        self.refuse_foreign(GOLD_DIR)
        content = self._content()
        path = self.with_space(lambda: write_checkpoint(self.root, GOLD_DIR, content))
        if self.on_gold is not None:
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
