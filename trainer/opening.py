"""Opening a lineage for training: the lock, recovery, rollbacks, and the first records.

Mixed into :class:`trainer.loop.Trainer` (``Trainer.open``). Opening takes the lineage
lock, clears what an interrupted write left, finishes an interrupted rollback to gold
(or does a requested one), resumes or starts the lineage (never a silent new one: design
rule 15), and then records the start: ``training_start``, the first checkpoint of a new
lineage, the export a crash may have cut off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from trainer.checkpoint import recover_root
from trainer.config import EvalConfig, ExportConfig, GoldConfig, LineageSpec, RunPaths, TrainConfig
from trainer.gold import GOLD
from trainer.lineage import LineageError, LostCheckpointsError, open_lineage, resolve_device
from trainer.lock import LineageLock
from trainer.memory import MemoryEstimate, estimate_training_memory
from trainer.records.events import EventLog
from trainer.records.space import DiskFullError
from trainer.rollback import Rollback, interrupted_rollback, roll_back_to_gold

if TYPE_CHECKING:
    from trainer.loop import Trainer

log = logging.getLogger(__name__)


class Opening:
    """``Trainer.open`` and what it does once the lineage is held."""

    @classmethod
    def open(
        cls,
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
    ) -> Trainer:
        """Open (or start) the lineage under ``paths.checkpoints`` and hold it.

        ``from_gold`` first rolls the lineage back to its gold checkpoint (newer
        checkpoints are kept under ``rolled-back/``), for the operator's request made at
        ``rollback_request`` (ISO time), while ``in_progress`` (``name``, ``sha256``) was
        being trained. A rollback a crash interrupted is finished first, whatever is asked.
        ``new_lineage`` and ``expected_lineage``: see :func:`trainer.lineage.open_lineage`.
        ``on_disk_full``: see ``Trainer.on_disk_full``.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size > 1:
            # Every rank would train the whole file and write the same checkpoints.
            raise LineageError(
                f"WORLD_SIZE={world_size}: multi-process (torchrun) training is not supported by "
                "this version; run a single process per lineage"
            )
        device = resolve_device(train.device)
        if device.type == "cuda":
            if train.cuda_memory_fraction is not None:
                torch.cuda.set_per_process_memory_fraction(train.cuda_memory_fraction, device)
            torch.backends.cuda.matmul.allow_tf32 = True
        root = paths.checkpoints
        lock = LineageLock(root)
        lock.acquire(wait_s=lock_wait_s)
        try:
            recover_root(root)
            events = events or EventLog(paths.events)
            rollback = interrupted_rollback(root)
            if rollback is None and from_gold:
                rollback = roll_back_to_gold(
                    root, request=rollback_request, in_progress=in_progress
                )
            options = dict(
                spec=spec,
                train=train,
                device=device,
                init_from=init_from,
                new_lineage=new_lineage,
                expected=expected_lineage,
            )
            try:
                lineage = open_lineage(root, **options)
            except LostCheckpointsError:
                if train.on_lost_checkpoints != "gold" or not (root / GOLD).is_dir():
                    raise
                log.warning(
                    "no usable step checkpoint in %s; continuing the lineage from gold "
                    '(train.on_lost_checkpoints = "gold")',
                    root,
                )
                rollback = roll_back_to_gold(root)
                lineage = open_lineage(root, **options)
            trainer = cls(
                lineage,
                train=train,
                paths=paths,
                events=events,
                device=device,
                evaluation=evaluation,
                gold=gold,
                export=export,
            )
        except BaseException:
            lock.release()
            raise
        trainer._lock = lock
        trainer.on_disk_full = on_disk_full
        try:
            trainer._start(rollback)
        except BaseException:
            trainer.close()
            raise
        return trainer

    def _start(self, rollback: Rollback | None) -> None:
        """What opening does once the lineage is held: record a rollback or a retired
        lineage, say that training starts, and write what a crash may have cut off."""
        lineage, events, state = self.lineage, self.events, self.state
        if lineage.retired is not None:
            events.emit("lineage_retired", kept_in=str(lineage.retired))
        if rollback is not None:
            self.rollback = rollback
            self.record_rollback(rollback)
        memory = self._check_memory()
        for notice in lineage.notices:
            events.emit("optimizer_reset", **notice)
        self._reconcile_file_complete()
        events.emit(
            "training_start",
            global_step=state.global_step,
            resumed_from=str(lineage.resumed_from) if lineage.resumed_from else None,
            lineage_id=state.lineage_id,
            device=str(self.device),
            # CPU results are the same at any thread count; recorded for reports all the same.
            threads=torch.get_num_threads(),
            model={"parameters": self.model.num_params(), **lineage.model_config.to_dict()},
            train_config=self.train.to_dict(),
            eval_config=self.evaluation.to_dict(),
            gold_config=self.gold_config.to_dict(),
            gold_step=state.gold["step"] if state.gold else None,
            memory_estimate_bytes=memory.total,
            files_completed=len(state.files_completed),
            current_file=state.current_file.name if state.current_file else None,
        )
        if lineage.resumed_from is None:
            self.save_checkpoint(reason="lineage_start")
        self.restore_export()
        self.evaluator.restore_recent(
            [(f.name, f.sha256, f.holdout_fraction) for f in state.files_completed]
        )

    def _check_memory(self) -> MemoryEstimate:
        """Log the training-memory estimate; warn when it will not fit under the CUDA cap."""
        estimate = estimate_training_memory(
            self.lineage.model_config,
            n_params=self.model.num_params(),
            micro_batch=self.state.micro_batch_size,
            activation_bytes=2 if self.steps.half_precision else 4,
        )
        log.info(
            "memory estimate at micro-batch %d: %s",
            self.state.micro_batch_size,
            estimate.describe(),
        )
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            cap = total * (self.train.cuda_memory_fraction or 1.0)
            if estimate.total > cap:
                log.warning(
                    "the estimate exceeds the %.1f GiB this process may use; expect OOM recovery "
                    "to shrink the micro-batch, or lower train.micro_batch_size",
                    cap / 2**30,
                )
        return estimate
