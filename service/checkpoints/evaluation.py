"""The torch side of ``traind eval --checkpoint DIR``: score a saved model on the eval sets.

The sets and the selection are the worker's (``[eval]`` of the settings, the lineage's
seed, the held-out part of its latest files), so the losses compare with the ``eval``
events of training. The result is appended to the event log as a normal ``eval`` event
with ``trigger = "checkpoint"`` and the folder it scored; it decides nothing about gold
(only the worker does). The trainer is imported inside the function, so importing this
module costs no more than the settings.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from service.config.settings import Settings
from trainer.records.checkpoints import STATE, int_or_none, read_json_object
from trainer.records.events import EVAL_SET_PREFIX, EventLog, round_loss

log = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """A folder or eval set that cannot be scored; the message says which and why."""


def evaluate_checkpoint(settings: Settings, *, folder: Path) -> dict[str, Any]:
    """Score the model in ``folder`` (a ``step-*`` or ``gold`` checkpoint, an export, or a
    checkpoints folder: its newest checkpoint) on CPU; returns the ``eval`` event written."""
    import torch

    from trainer.evaluate import EvalSetError, Evaluator
    from trainer.export import ExportError, load_for_generation
    from trainer.records.state import newest_training_state

    evaluation = settings.eval_config()
    try:
        loaded = load_for_generation(Path(folder), device="cpu", dtype="fp32")
    except (ExportError, ValueError) as exc:
        raise EvaluationError(str(exc)) from None
    # The checkpoint's own state, else (an export) the lineage's newest one: its seed
    # fixes the selection, its files the "recent" set.
    state = read_json_object(loaded.path / STATE) or (
        newest_training_state(settings.paths.checkpoints) or {}
    )
    seed = int_or_none(state.get("seed"))
    try:
        evaluator = Evaluator(
            evaluation,
            tokenizer=loaded.tokenizer,
            block_size=loaded.model.config.block_size,
            cache_dir=settings.run_paths().cache,
            seed=settings.train.seed if seed is None else seed,
        )
    except EvalSetError as exc:
        raise EvaluationError(str(exc)) from None
    evaluator.restore_recent(
        [
            (f["name"], f["sha256"], float(f.get("holdout_fraction") or 0.0))
            for f in state.get("files_completed") or ()
            if f.get("name") and f.get("sha256")
        ]
    )
    if not evaluator.has_work:
        raise EvaluationError(
            "nothing to evaluate: name an eval set (eval.sets), hold part of each drop out "
            "(eval.holdout_fraction > 0) or give prompts (eval.prompts)"
        )
    result = evaluator.evaluate(
        loaded.model, device=torch.device("cpu"), autocast=contextlib.nullcontext
    )
    sets = {name: round_loss(loss) for name, loss in result.losses.items()}
    deciding = evaluation.deciding_set
    return EventLog(settings.run_paths().events).emit(
        "eval",
        step=loaded.info.get("step"),
        trigger="checkpoint",
        checkpoint=str(loaded.path),
        lineage_id=loaded.info.get("lineage_id"),
        val_loss=sets.get(deciding) if deciding else None,
        val_set=deciding,
        **{f"{EVAL_SET_PREFIX}{name}": loss for name, loss in sets.items()},
        eval_duration_s=round(result.duration_s, 3),
        samples=result.samples,
    )
