"""``traind extend-vocab``: add tokens to an existing lineage, between files.

Under the lineage's lock (so never while a daemon trains it): the newest checkpoint is
opened, the tokens are added to the tokenizer (ids after the current ones), the embedding
and an untied head grow by one row per token (``trainer.vocab``: the mean of the base rows,
a parameter of its own; the base rows stay bit-frozen), and the optimizer is rebuilt with
every moment carried over by parameter name (the embedding's moments go with it to its
base rows, new rows start with none). The result is committed as the checkpoint of the same
global step (atomically replacing it), then the export is rewritten and a
``vocab_extended`` event written. A file in progress or set aside unfinished is refused:
its data position counts sequences of the old tokenization.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from trainer.adaptation import (
    Adaptation,
    AdaptationError,
    embedding_rows,
    extend,
    extension_event,
    refuse_saved_token_modules,
    set_trainable,
)
from trainer.checkpointer import Checkpointer
from trainer.config import ExportConfig, LineageSpec, RunPaths, TrainConfig
from trainer.exporter import Exporter
from trainer.lineage import LineageError
from trainer.opening import OpenRequest, hold_lineage
from trainer.optim import build_optimizer, optimizer_layout
from trainer.records.events import EventLog
from trainer.vocab import ORIGINAL

log = logging.getLogger(__name__)


def extend_vocabulary(
    tokens: list[str],
    *,
    spec: LineageSpec,
    train: TrainConfig,
    paths: RunPaths,
    export: ExportConfig,
) -> dict[str, Any] | None:
    """Add ``tokens`` to the lineage under ``paths``; the ``vocab_extended`` event's fields,
    or None when the tokenizer knew every one of them already."""
    events = EventLog(paths.events)
    held = hold_lineage(
        OpenRequest(
            spec=spec,
            train=train,
            paths=paths,
            events=events,
            expected_lineage="traind extend-vocab extends an existing lineage (for a new one, "
            "set model.new_tokens)",
        )
    )
    try:
        lineage = held.lineage
        state = lineage.state
        unfinished = [f.name for f in (state.current_file, *state.parked) if f is not None]
        if unfinished:
            raise LineageError(
                f"{', '.join(unfinished)} is trained partly: its data position counts sequences "
                "of the current tokenizer. Extend the vocabulary between files: let it finish "
                "(or cancel it: traind cancel), then run traind extend-vocab again"
            )
        tokenizer, added = lineage.tokenizer.with_added_tokens(tokens)
        if not added:
            log.info("the tokenizer knows every token of the file already; nothing to do")
            return None
        before = Adaptation.from_dict(state.adaptation)
        adaptation = before.with_tokens(
            added,
            base_rows=lineage.tokenizer.vocab_size,
            model_rows=embedding_rows(lineage.model),
            at_step=state.global_step,
        )
        old_layout = optimizer_layout(lineage.model)
        old_moments = lineage.optimizer.state_dict()
        try:
            refuse_saved_token_modules(lineage.model, adaptation)
            extend(lineage.model, adaptation, since=len(before.tokens))
            set_trainable(
                lineage.model,
                adaptation,
                step=state.global_step,
                unfreeze_at=spec.unfreeze_base_rows_at_step,
            )
        except AdaptationError as exc:
            raise LineageError(str(exc)) from None
        lineage.optimizer = build_optimizer(lineage.model, train)
        carry_moments(
            lineage.optimizer,
            old_moments,
            old_layout=old_layout,
            new_layout=optimizer_layout(lineage.model),
        )
        lineage.tokenizer = tokenizer
        state.adaptation = adaptation.to_dict()
        checkpointer = Checkpointer(lineage, root=paths.checkpoints, train=train, events=events)
        checkpointer.save(reason="vocab_extended")
        fields = extension_event(adaptation, lineage.model)
        events.emit("vocab_extended", **fields)
        if state.files_completed:
            # Gold (and so a gold export) still has the old rows: only "latest" moves.
            Exporter(checkpointer, config=export).after_file(reason="vocab_extended")
        return fields
    finally:
        held.lock.release()


def carry_moments(
    optimizer: torch.optim.Optimizer,
    saved: dict[str, Any],
    *,
    old_layout: list[list[str]],
    new_layout: list[list[str]],
) -> None:
    """Give the new optimizer the saved moments of each parameter by name. A weight that
    became an extension's base rows keeps its own; a parameter whose rows grew keeps them
    for its old rows, zeros for the new (as AdamW starts a parameter)."""
    old_index = {name: i for i, name in enumerate(n for group in old_layout for n in group)}
    new_names = [n for group in new_layout for n in group]
    state: dict[int, Any] = {}
    for index, name in enumerate(new_names):
        source = old_index.get(name)
        if source is None and name.endswith(ORIGINAL):
            source = old_index.get(name[: -len(ORIGINAL)] + ".weight")
        moments = saved["state"].get(source) if source is not None else None
        if moments is None:
            continue
        param = _param_at(optimizer, index)
        state[index] = {k: _fit(v, param) for k, v in moments.items()}
    new_state = optimizer.state_dict()
    new_state["state"] = state
    optimizer.load_state_dict(new_state)


def _param_at(optimizer: torch.optim.Optimizer, index: int) -> torch.Tensor:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return params[index]


def _fit(value: Any, param: torch.Tensor) -> Any:
    """A moment tensor cut or zero-padded along its rows to ``param``'s shape."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape == param.shape:
        return value
    rows = param.shape[0]
    if value.shape[0] >= rows:
        return value[:rows].clone()
    pad = torch.zeros(
        (rows - value.shape[0], *value.shape[1:]), dtype=value.dtype, device=value.device
    )
    return torch.cat((value, pad), dim=0)
