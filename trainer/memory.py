"""A training-memory estimate, logged at start and checked against the CUDA cap (rule 7).

Activations follow Korthikanti et al. (2022) for a fused (flash) attention kernel:
about ``34 * seq * batch * width`` bytes per layer at 16-bit, plus the fp32 logits and
their gradient. ``batch_multiplier`` counts anything that concatenates inputs into one
forward (preference pairs, augmentations): leaving it out is how estimates undershoot.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config import ModelConfig


@dataclass(frozen=True, kw_only=True)
class MemoryEstimate:
    """Bytes needed to train, by kind."""

    params: int
    """Weights (fp32 master copy)."""
    grads: int
    """Gradients (fp32)."""
    optimizer: int
    """AdamW moments (two fp32 tensors per parameter)."""
    activations: int
    """Saved activations and logits of one micro-batch."""

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations

    def describe(self) -> str:
        gib = 2**30
        return (
            f"~{self.total / gib:.2f} GiB (weights {self.params / gib:.2f}, grads "
            f"{self.grads / gib:.2f}, AdamW {self.optimizer / gib:.2f}, activations "
            f"{self.activations / gib:.2f})"
        )


def estimate_training_memory(
    config: ModelConfig,
    *,
    n_params: int,
    micro_batch: int,
    batch_multiplier: int = 1,
    activation_bytes: int = 2,
) -> MemoryEstimate:
    """Estimate for one micro-batch of full-length sequences.

    ``activation_bytes`` is 2 under bf16 autocast and 4 in fp32.
    """
    if micro_batch < 1 or batch_multiplier < 1:
        raise ValueError("micro_batch and batch_multiplier must be at least 1")
    rows = micro_batch * batch_multiplier
    tokens = rows * config.block_size
    per_layer = 34 * tokens * config.n_embd * activation_bytes // 2
    logits = 2 * tokens * config.vocab_size * 4  # fp32 logits and their gradient
    return MemoryEstimate(
        params=4 * n_params,
        grads=4 * n_params,
        optimizer=8 * n_params,
        activations=config.n_layer * per_layer + logits,
    )
