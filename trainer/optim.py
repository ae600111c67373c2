"""The optimizer and its learning rate.

AdamW with decoupled weight decay on matrices only, its parameter groups in a stable order
that every checkpoint records by name (``optimizer_layout``), and a strict fit check for
loading saved optimizer state (torch checks neither names nor moment shapes). Parameters
that may train later (the base rows of an extended vocabulary, ``trainer.vocab``) are in
the groups from the start: without a gradient AdamW skips them entirely, decay included,
and the groups never change shape when they start to train. The learning rate is
a pure function of the global step (ARCHITECTURE.md rule 2): nothing here keeps state,
so file boundaries, restarts and resumes cannot reset or skip the schedule.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trainer.config import TrainConfig
from trainer.vocab import base_row_parameters


class OptimizerStateError(RuntimeError):
    """Saved optimizer state that does not fit the lineage's parameters; says what to do."""


def optimizer_layout(model: torch.nn.Module) -> list[list[str]]:
    """The names of the parameters in each group of the optimizer ``build_optimizer``
    makes for ``model``, in order: decayed matrices, then the rest."""
    return [[name for name, _ in group] for group in _groups(model)]


def _groups(model: torch.nn.Module) -> list[list[tuple[str, torch.nn.Parameter]]]:
    decay, no_decay = [], []
    for name, param in _optimized(model):
        # Norm gains, biases (1-D) and nothing else escape decay; embeddings decay like GPT-2.
        (decay if param.dim() >= 2 else no_decay).append((name, param))
    return [decay, no_decay]


def _optimized(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of what the optimizer holds, in the model's order: what trains,
    and the frozen base rows of an extended vocabulary (they may train later)."""
    later = {id(p) for p in base_row_parameters(model)}
    inner = getattr(model, "hf", model)  # Hugging Face names, as checkpoints store them
    return [(n, p) for n, p in inner.named_parameters() if p.requires_grad or id(p) in later]


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = ([param for _, param in group] for group in _groups(model))
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    device = next(model.parameters()).device
    return torch.optim.AdamW(
        groups,
        lr=config.learning_rate,
        betas=(config.beta1, config.beta2),
        fused=fused_for(device),
    )


def fused_for(device: torch.device) -> bool | None:
    """Whether AdamW takes its fused kernel on ``device`` (one kernel over all tensors):
    on CUDA and on CPU, where it is several times faster than the per-op ``foreach`` path
    (the small preset's step: 5.3 ms against 16.9 ms on 2 cores). Its numbers differ from
    foreach's in the last bits, the same on every run: exact resume holds, since a
    lineage always steps with the one kernel. None elsewhere: torch picks."""
    return True if device.type in ("cuda", "cpu") else None


def optimizer_state_mismatch(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> str | None:
    """None if ``saved`` fits ``optimizer``'s parameters exactly, else why it does not."""
    try:
        groups = saved["param_groups"]
        state = saved["state"]
    except (KeyError, TypeError):
        return "the saved optimizer state is not an optimizer state_dict"
    live = optimizer.param_groups
    if len(groups) != len(live):
        return f"{len(groups)} parameter groups saved, {len(live)} now"
    index = 0
    for saved_group, live_group in zip(groups, live, strict=True):
        if len(saved_group["params"]) != len(live_group["params"]):
            return (
                f"a parameter group had {len(saved_group['params'])} tensors, "
                f"now {len(live_group['params'])}"
            )
        for param in live_group["params"]:
            moments = state.get(index, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in moments and tuple(moments[key].shape) != tuple(param.shape):
                    return (
                        f"parameter #{index} has shape {tuple(param.shape)}, saved moments "
                        f"{tuple(moments[key].shape)}"
                    )
            index += 1
    return None


def check_layout(recorded: list[list[str]] | None, model: torch.nn.Module, *, where: str) -> None:
    """Refuse a model whose optimizer groups differ from the ones a checkpoint recorded
    (``where`` names it): its moments would go to the wrong parameters. None (a checkpoint
    from before the layout was recorded) is not checked."""
    if not recorded:
        return
    live = optimizer_layout(model)
    if [list(g) for g in recorded] == live:
        return
    pairs = list(zip(recorded, live, strict=False))
    index = next((i for i, (saved, now) in enumerate(pairs) if list(saved) != now), len(pairs))
    if index < len(pairs):
        saved, now = pairs[index]
        gone = [n for n in saved if n not in now][:3]
        new = [n for n in now if n not in saved][:3]
        detail = f"missing now {gone}, new {new}" if gone or new else "another order"
    else:
        detail = f"{len(recorded)} groups recorded, {len(live)} now"
    raise OptimizerStateError(
        f"the optimizer state in {where} was saved for other parameters than this model "
        f"trains (group {index}: {detail}). traind does not start a fresh optimizer silently: "
        "set the model settings (model.lora, new tokens) back to what the lineage was "
        "trained with, or start a new lineage from these weights"
    )


def load_moments(optimizer: torch.optim.Optimizer, saved: dict[str, Any], *, where: str) -> None:
    """Load saved moments that fit exactly; OptimizerStateError says what does not."""
    problem = optimizer_state_mismatch(optimizer, saved)
    if problem is not None:
        raise OptimizerStateError(
            f"the optimizer state in {where} does not fit the model ({problem}); it was "
            "altered or written for another model. traind does not start a fresh optimizer "
            "silently: move this checkpoint aside to resume from the one before it"
        )
    optimizer.load_state_dict(saved)


def lr_at(step: int, config: TrainConfig) -> float:
    """The learning rate for the optimizer step that takes the model from ``step`` to ``step+1``."""
    if step < 0:
        raise ValueError(f"global step cannot be negative, got {step}")
    peak = config.learning_rate
    warmup = config.warmup_steps
    if step < warmup:
        # (step + 1) so the very first update is not wasted at lr 0.
        return peak * (step + 1) / warmup
    if config.lr_schedule == "constant":
        return peak
    if config.lr_schedule == "inverse_sqrt":
        return peak * math.sqrt(max(warmup, 1) / (step + 1))
    if config.lr_schedule == "cosine":
        floor = peak * config.min_lr_ratio
        progress = min(1.0, (step - warmup) / max(1, config.lr_decay_steps))
        return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}")
