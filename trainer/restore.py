"""Restoring a checkpoint's model and optimizer into a lineage being resumed.

The weights load one tensor at a time into a model of the checkpoint's architecture
(``trainer.weights``), and the optimizer takes the saved moments where they fit exactly;
otherwise it starts fresh and says so loudly (ARCHITECTURE.md rule 3). A built-in lineage
whose model settings changed since it last opened keeps every weight whose name and shape
still fit; a Hugging Face lineage's architecture never changes (``trainer.hf_lineage``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from trainer.adaptation import Adaptation, check_same_adaptation, describe, trainable_count
from trainer.adapted_model import model_for_checkpoint
from trainer.checkpoint import LoadedCheckpoint, model_tensors_names
from trainer.config import LineageSpec, ModelConfig, TrainConfig
from trainer.hf_lineage import rebuild_hf
from trainer.hf_model import HfCausalLM, is_hf_config
from trainer.model import GPT
from trainer.optim import build_optimizer, check_layout, load_moments
from trainer.presets import model_config_for
from trainer.records.state import TrainingState
from trainer.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def spec_record(spec: LineageSpec) -> dict[str, Any]:
    """What the settings said about the model when the lineage was opened (not dropout,
    which may change freely)."""
    return {"preset": spec.preset, "tokenizer": spec.tokenizer, "overrides": dict(spec.overrides)}


def restore_hf(
    found: LoadedCheckpoint, *, spec: LineageSpec, train: TrainConfig, device: torch.device
) -> tuple[HfCausalLM, torch.optim.AdamW, list[dict[str, Any]]]:
    """A Hugging Face model with the checkpoint's weights and optimizer moments (its
    architecture never changes within a lineage: the source is checked above)."""
    model = rebuild_hf(found.config, spec)
    found.load_into(model)
    model.to(device)
    return model, _restored_optimizer(found, model, train=train, device=device), []


def restore_adapted(
    found: LoadedCheckpoint,
    *,
    state: TrainingState,
    spec: LineageSpec,
    train: TrainConfig,
    device: torch.device,
) -> tuple[torch.nn.Module, torch.optim.AdamW]:
    """A lineage with LoRA or an extended vocabulary: the same structure rebuilt in the
    recorded order (``trainer.adapted_model``), its tensors loaded, the optimizer's
    recorded groups checked (a mismatch is an error, never a fresh optimizer)."""
    adaptation = Adaptation.from_dict(state.adaptation)
    check_same_adaptation(adaptation, spec, where=found.path.parent)
    if not is_hf_config(found.config):
        found = dataclasses.replace(found, config={**found.config, "dropout": spec.dropout})
    model = model_for_checkpoint(
        found,
        block_size=spec.overrides.get("block_size"),
        unfreeze_at=spec.unfreeze_base_rows_at_step,
    )
    model.to(device)
    optimizer = _restored_optimizer(found, model, train=train, device=device)
    log.info(
        "%s rebuilt: %s; %s of %s parameters train",
        found.path.name,
        describe(adaptation),
        f"{trainable_count(model):,}",
        f"{model.num_params():,}",
    )
    return model, optimizer


def _restored_optimizer(
    found: LoadedCheckpoint, model: torch.nn.Module, *, train: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    """The optimizer with the saved moments, in the groups the checkpoint recorded. Saved
    state that does not fit an unchanged model is an error (OptimizerStateError), never a
    silent fresh optimizer: it was altered or written for another model."""
    optimizer = build_optimizer(model, train)
    check_layout(found.training_state.get("optimizer_layout"), model, where=found.path.name)
    load_moments(optimizer, found.optimizer_state(map_location=device), where=found.path.name)
    return optimizer


def restore_builtin(
    found: LoadedCheckpoint,
    *,
    wanted: ModelConfig,
    saved: ModelConfig,
    train: TrainConfig,
    device: torch.device,
) -> tuple[GPT, torch.optim.AdamW, list[dict[str, Any]]]:
    """The model of ``wanted``'s architecture with the checkpoint's weights, and its
    optimizer with the saved moments where they fit (rule 3); the notices of a reset."""
    notices: list[dict[str, Any]] = []
    model = GPT(wanted)
    if wanted.shape_key() == saved.shape_key():
        found.load_into(model)
        model.to(device)
        return model, _restored_optimizer(found, model, train=train, device=device), []
    kept, dropped = _load_fitting(model, found.weights())
    model.to(device)
    optimizer = build_optimizer(model, train)
    changed = {
        k: (v, wanted.to_dict()[k])
        for k, v in saved.shape_key().items()
        if wanted.to_dict()[k] != v
    }
    notices.append(
        _reset_notice(
            found, f"architecture changed {changed}; kept {kept} tensors, re-initialised {dropped}"
        )
    )
    return model, optimizer, notices


def wanted_config(
    state: TrainingState,
    spec: LineageSpec,
    *,
    saved: ModelConfig,
    tokenizer: Tokenizer,
    found: LoadedCheckpoint,
) -> ModelConfig:
    """The checkpoint's architecture, unless the model settings changed since the lineage
    last opened: only then is the preset (with its overrides) an intended change. So a
    lineage started from another checkpoint (``--init-from``) keeps that architecture."""
    keep = ModelConfig.from_dict({**saved.to_dict(), "dropout": spec.dropout})
    recorded, now = state.model_spec, spec_record(spec)
    if recorded.get("tokenizer", now["tokenizer"]) != now["tokenizer"]:
        log.warning(
            "model.tokenizer is %r but the lineage was started with %r; it keeps the tokenizer "
            "saved in %s (a lineage never changes its tokenizer: to train these weights with "
            "another one, start a new lineage from them with `traind train --init-from "
            "<this checkpoint>` and model.tokenizer set, into an empty paths.checkpoints)",
            now["tokenizer"],
            recorded["tokenizer"],
            found.path.name,
        )
    same = {k: v for k, v in recorded.items() if k != "tokenizer"} == {
        k: v for k, v in now.items() if k != "tokenizer"
    }
    if recorded and same:
        return keep
    state.model_spec = {**now, "tokenizer": recorded.get("tokenizer", now["tokenizer"])}
    return model_config_for(
        spec.preset, vocab_size=tokenizer.vocab_size, dropout=spec.dropout, overrides=spec.overrides
    )


def _reset_notice(found: LoadedCheckpoint, problem: str) -> dict[str, Any]:
    return {
        "checkpoint": found.path.name,
        "global_step": found.step,
        "reason": f"optimizer state in {found.path.name} cannot be used ({problem}); "
        "weights kept, optimizer moments start fresh",
    }


def _load_fitting(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> tuple[int, int]:
    """Copy saved tensors whose name and shape still fit; return (kept, re-initialised).

    A tensor that only gained rows (the embedding and head of a larger ``vocab_size``)
    keeps every saved row, and its new rows start as the mean of them: growing the
    vocabulary never re-initialises what was learned (new tokens belong in
    ``traind extend-vocab``, which also keeps the old rows frozen)."""
    own = model.state_dict()
    names = model_tensors_names(model)
    fitting = {k: v for k, v in saved.items() if k in names and own[k].shape == v.shape}
    for name in names:
        old, new = saved.get(name), own[name]
        if old is not None and name not in fitting and _only_more_rows(old, new):
            grown = old.mean(dim=0, keepdim=True).expand(new.shape[0] - old.shape[0], -1)
            fitting[name] = torch.cat((old, grown.to(old.dtype)), dim=0)
    model.load_state_dict(fitting, strict=False)
    return len(fitting), len(names) - len(fitting)


def _only_more_rows(old: torch.Tensor, new: torch.Tensor) -> bool:
    return (
        old.dim() == new.dim() == 2 and old.shape[1] == new.shape[1] and old.shape[0] < new.shape[0]
    )


def apply_batch_settings(state: TrainingState, train: TrainConfig) -> None:
    """The micro-batch and accumulation of the settings, where they changed since the
    checkpoint (else the split in force stays: it may be an OOM-reduced one)."""
    configured = (train.micro_batch_size, train.grad_accum_steps)
    if tuple(state.configured_batch) == configured:
        return  # keep the split in force, which may be an OOM-reduced one
    log.info(
        "batch settings changed from micro %d x accum %d to micro %d x accum %d",
        *state.configured_batch,
        *configured,
    )
    state.micro_batch_size, state.grad_accum_steps = configured
    state.configured_batch = configured


def log_changes(saved: dict[str, Any], train: TrainConfig) -> None:
    """Say which training settings changed since the checkpoint."""
    for key, value in train.to_dict().items():
        if key in saved and saved[key] != value and key not in ("seed",):
            log.info("train.%s changed since the checkpoint: %r -> %r", key, saved[key], value)
