"""The optimizer and its learning rate.

AdamW with decoupled weight decay on matrices only, and a strict fit check for loading
saved optimizer state (torch does not check moment shapes itself). The learning rate is
a pure function of the global step (ARCHITECTURE.md rule 2): nothing here keeps state,
so file boundaries, restarts and resumes cannot reset or skip the schedule.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trainer.config import TrainConfig


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for _name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # Norm gains, biases (1-D) and nothing else escape decay; embeddings decay like GPT-2.
        (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    on_cuda = next(model.parameters()).is_cuda
    return torch.optim.AdamW(
        groups,
        lr=config.learning_rate,
        betas=(config.beta1, config.beta2),
        fused=True if on_cuda else None,
    )


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
