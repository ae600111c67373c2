"""Restoring a checkpoint's model and optimizer into a lineage being resumed.

The weights load one tensor at a time into a model of the checkpoint's architecture
(``trainer.weights``), and the optimizer takes the saved moments where they fit exactly;
otherwise it starts fresh and says so loudly (ARCHITECTURE.md rule 3). A built-in lineage
whose model settings changed since it last opened keeps every weight whose name and shape
still fit; a Hugging Face lineage's architecture never changes (``trainer.hf_lineage``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from trainer.checkpoint import LoadedCheckpoint, model_tensors_names
from trainer.config import LineageSpec, ModelConfig, TrainConfig
from trainer.hf_lineage import rebuild_hf
from trainer.hf_model import HfCausalLM
from trainer.model import GPT
from trainer.optim import build_optimizer, optimizer_state_mismatch
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
    return model, *_restored_optimizer(found, model, train=train, device=device)


def _restored_optimizer(
    found: LoadedCheckpoint, model: torch.nn.Module, *, train: TrainConfig, device: torch.device
) -> tuple[torch.optim.AdamW, list[dict[str, Any]]]:
    """The optimizer with the saved moments, or fresh ones and the notice why (rule 3)."""
    optimizer = build_optimizer(model, train)
    moments = found.optimizer_state(map_location=device)
    problem = optimizer_state_mismatch(optimizer, moments)
    if problem is None:
        optimizer.load_state_dict(moments)
        return optimizer, []
    return optimizer, [_reset_notice(found, problem)]


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
        return model, *_restored_optimizer(found, model, train=train, device=device)
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
    """Copy saved tensors whose name and shape still fit; return (kept, re-initialised)."""
    own = model.state_dict()
    names = model_tensors_names(model)
    fitting = {k: v for k, v in saved.items() if k in names and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    return len(fitting), len(names) - len(fitting)
