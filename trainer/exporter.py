"""Keeping ``checkpoints/export`` on its source: the model users deploy.

``export.from`` names the source (``trainer.config.ExportConfig.source``):

* ``latest``: the lineage at the end of its newest file. Written after each file, after a
  rollback to gold (the lineage then is gold), and at start when the export is missing,
  broken, another lineage's, or holds steps the lineage no longer has.
* ``gold``: the guarded best checkpoint. Written at each new gold (from the model in
  memory, which is gold at that moment), after a rollback, and at start or on request
  from the ``gold`` folder when the export is not gold's (a crash between the two
  writes, a changed setting). There is no export until the first gold.

``export.json`` says where the export came from (``from``, ``source_checkpoint``,
``step``, ``lineage_id``); ``/v1/status`` shows it. Each write is atomic
(``trainer.export.write_export``, ARCHITECTURE.md rule 8).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from trainer.adaptation import Adaptation
from trainer.adapter_export import write_adapter_export
from trainer.checkpoint import CheckpointError, read_checkpoint
from trainer.checkpointer import Checkpointer
from trainer.config import ExportConfig
from trainer.distributed import SOLO, Group
from trainer.export import checkpoint_model, plain_model, verify_export, write_export
from trainer.records.checkpoints import (
    EXPORT_DIR,
    EXPORT_INFO,
    GOLD_DIR,
    STATE,
    int_or_none,
    read_json_object,
    step_folder,
)
from trainer.records.traces import owner
from trainer.tokenizer import Tokenizer, TokenizerError

log = logging.getLogger(__name__)


class Exporter:
    """Writes the lineage's export from the source ``export.from`` names."""

    def __init__(
        self, checkpointer: Checkpointer, *, config: ExportConfig, group: Group = SOLO
    ) -> None:
        self.checkpointer = checkpointer
        """Holds the lineage, its root and events, and waits out a full disk."""
        self.config = config
        self.group = group
        """In a torchrun group rank 0 alone writes the export; under FSDP from the
        committed folder of the step (no rank holds the whole model in memory)."""
        self._said_no_gold = False

    @property
    def follows_gold(self) -> bool:
        return self.config.source == "gold"

    # ------------------------------------------------------------- when the source moves
    def after_file(self, *, reason: str = "file_end") -> Path | None:
        """A file ended (or the model changed between files, ``reason``): with
        ``latest``, the export follows it."""
        if self.config.enabled and not self.follows_gold:
            return self.write(reason=reason)
        return None

    def after_gold(self) -> Path | None:
        """A new gold was committed: with ``gold``, the export follows it (the model in
        memory is gold at this moment)."""
        if self.config.enabled and self.follows_gold and self.group.leader:
            return self._write_live(reason="gold", source_checkpoint=GOLD_DIR)
        return None

    def after_rollback(self) -> Path | None:
        """The lineage went back to gold: whatever the source, the export is gold now."""
        if not self.config.enabled:
            return None
        return self.write(reason="rollback")

    def restore(self) -> Path | None:
        """At start: write the export again if it is not what its source holds now (a
        crash between two writes, a person, a rollback, a changed ``export.from``)."""
        if not self.config.enabled or not self.group.leader:
            return None
        problem = self._off_source()
        if problem is None:
            return None
        log.warning("checkpoints/%s %s; writing it again", EXPORT_DIR, problem)
        return self.write(reason="restore")

    # ------------------------------------------------------------- writing
    def write(self, *, reason: str) -> Path | None:
        """Write the export from its source now; None with ``gold`` before any gold."""
        if not self.group.leader:
            return None
        if not self.follows_gold:
            return self._write_live(reason=reason, source_checkpoint=None)
        gold_step = self._gold_step()
        if gold_step is None:
            if not self._said_no_gold:
                log.info('export.from = "gold": no export until the first gold checkpoint')
                self._said_no_gold = True
            return None
        state = self.checkpointer.state
        if gold_step == state.global_step and state.gold and state.gold.get("step") == gold_step:
            # The model in memory is gold (just promoted, or just rolled back to it).
            return self._write_live(reason=reason, source_checkpoint=GOLD_DIR)
        return self._write_folder(reason=reason)

    def _write_live(self, *, reason: str, source_checkpoint: str | None) -> Path:
        checkpointer = self.checkpointer
        state, lineage = checkpointer.state, checkpointer.lineage
        if source_checkpoint is None and not checkpointer.unsaved_steps:
            # Only a committed checkpoint is a source one can go back to.
            source_checkpoint = step_folder(state.global_step)
        if self.group.sharded:
            if source_checkpoint is None:
                raise RuntimeError("an FSDP group exports a committed checkpoint only")
            return self._write_folder(reason=reason, folder=source_checkpoint)
        info = self._info(
            step=state.global_step, reason=reason, source_checkpoint=source_checkpoint
        )
        return self._timed(
            reason,
            info,
            lambda: self._write_model(
                lineage.model,
                config=lineage.model_config.to_dict(),
                adaptation=state.adaptation,
                tokenizer=lineage.tokenizer,
                info=info,
            ),
        )

    def _write_folder(self, *, reason: str, folder: str = GOLD_DIR) -> Path | None:
        """Export the ``gold`` folder itself (the model in memory is not gold); None, with
        the reason logged, when gold cannot be read: the export stays as it is, and
        training goes on (a broken gold is no reason to stop learning)."""
        try:
            loaded = read_checkpoint(self.checkpointer.root / folder)
            model = checkpoint_model(loaded, device=torch.device("cpu"), dtype=torch.float32)
            tokenizer = Tokenizer.from_files(loaded.tokenizer_json, loaded.tokenizer_config_json)
        except (CheckpointError, TokenizerError) as exc:
            log.error(
                "cannot export %s, checkpoints/%s stays as it is: %s", folder, EXPORT_DIR, exc
            )
            return None
        info = self._info(step=loaded.step, reason=reason, source_checkpoint=folder)
        return self._timed(
            reason,
            info,
            lambda: self._write_model(
                model,
                config=loaded.config,
                adaptation=loaded.training_state.get("adaptation") or {},
                tokenizer=tokenizer,
                info=info,
            ),
        )

    def _write_model(
        self,
        model: torch.nn.Module,
        *,
        config: dict[str, Any],
        adaptation: dict[str, Any],
        tokenizer: Tokenizer,
        info: dict[str, Any],
    ) -> Path:
        root, export = self.checkpointer.root, self.config
        if export.adapter_only:
            return write_adapter_export(
                root,
                model=model,
                adaptation=Adaptation.from_dict(adaptation),
                config=config,
                tokenizer_json=tokenizer.to_json(),
                tokenizer_config_json=tokenizer.config_json(),
                info=info,
                dtype=export.dtype,
            )
        model, config = plain_model(model, config, adaptation)
        return write_export(
            root,
            model=model,
            config=config,
            tokenizer_json=tokenizer.to_json(),
            tokenizer_config_json=tokenizer.config_json(),
            shard_bytes=self.checkpointer.train.shard_bytes,
            dtype=export.dtype,
            info=info,
        )

    def _info(self, *, step: int, reason: str, source_checkpoint: str | None) -> dict[str, Any]:
        """Where the export comes from, for ``export.json``."""
        return {
            "step": step,
            "lineage_id": self.checkpointer.state.lineage_id,
            "from": self.config.source,
            "source_checkpoint": source_checkpoint,
            "reason": reason,
        }

    def _timed(self, reason: str, info: dict[str, Any], write) -> Path:
        checkpointer = self.checkpointer
        started = time.monotonic()
        checkpointer.refuse_foreign(EXPORT_DIR)
        path = checkpointer.with_space(write)
        duration = time.monotonic() - started
        log.info(
            "export written to %s (%s, from %s, %s, step %d, %.2fs)",
            path,
            self.config.dtype,
            info["source_checkpoint"] or "the model in memory",
            reason,
            info["step"],
            duration,
        )
        written = read_json_object(path / EXPORT_INFO) or {}
        checkpointer.events.emit(
            "export_saved",
            step=info["step"],
            path=str(path),
            dtype=self.config.dtype,
            hf_layout=written.get("hf_layout"),
            source=self.config.source,
            source_checkpoint=info["source_checkpoint"],
            reason=reason,
            duration_s=round(duration, 3),
        )
        return path

    # ------------------------------------------------------------- checking
    def _gold_step(self) -> int | None:
        """The step of this lineage's gold folder, or None when it has none."""
        gold = self.checkpointer.root / GOLD_DIR
        if owner(gold) != self.checkpointer.state.lineage_id:
            return None
        return int_or_none((read_json_object(gold / STATE) or {}).get("global_step"))

    def _off_source(self) -> str | None:
        """Why the export is not what its source holds now, or None."""
        state = self.checkpointer.state
        folder = self.checkpointer.root / EXPORT_DIR
        if self.follows_gold:
            wanted = self._gold_step()
            if wanted is None:
                return None
        elif not state.files_completed:
            return None
        problem = verify_export(folder, deep=False)
        if problem is not None:
            return f"is not usable ({problem})"
        info = read_json_object(folder / EXPORT_INFO) or {}
        step = int_or_none(info.get("step"))
        if info.get("lineage_id") != state.lineage_id:
            return "is not this lineage's"
        if step is None:
            return "does not say its step"
        if self.follows_gold:
            if step != wanted or info.get("source_checkpoint") != GOLD_DIR:
                return f"holds step {step}, not gold's (step {wanted})"
            return None
        if step > state.global_step:
            return f"holds step {step}, which the lineage (at step {state.global_step}) left"
        last_end = state.files_completed[-1].end_step
        if step < last_end or info.get("from") == "gold":
            return f"holds step {step}, not the end of the newest file (step {last_end})"
        return None
