"""AdamW with decoupled weight decay on matrices only, and a strict fit check for
loading saved optimizer state (torch does not check moment shapes itself)."""

from __future__ import annotations

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
