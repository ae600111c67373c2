"""A training-memory plan, from the model's own config, checked against the CUDA cap (rule 7).

Activations follow Korthikanti et al. (2022) for a fused (flash) attention kernel: about
``34 * seq * batch * width`` bytes per layer at 16-bit for a 4x MLP, here split into
``18 * width`` for attention and norms and ``4 * intermediate`` for the MLP, so a SwiGLU or
any Hugging Face ``intermediate_size`` counts as it is; plus the fp32 logits and their
gradient. With activation checkpointing only each layer's input is kept, and one layer's
activations are alive again while it is recomputed. ``batch_multiplier`` counts anything
that concatenates inputs into one forward (preference pairs, augmentations): leaving it
out is how estimates undershoot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.model import swiglu_hidden

GIB = 2**30


@dataclass(frozen=True, kw_only=True)
class MemoryEstimate:
    """Bytes needed to train, by kind."""

    params: int
    """Weights (fp32 master copy), frozen ones included."""
    grads: int
    """Gradients (fp32) of the parameters that train."""
    optimizer: int
    """AdamW moments (two fp32 tensors per parameter that trains)."""
    activations: int
    """Saved activations and logits of one micro-batch, as configured."""
    activations_full: int = 0
    """The same without activation checkpointing."""
    activations_checkpointed: int = 0
    """The same with activation checkpointing."""

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations

    def describe(self) -> str:
        return (
            f"~{self.total / GIB:.2f} GiB (weights {self.params / GIB:.2f}, grads "
            f"{self.grads / GIB:.2f}, AdamW {self.optimizer / GIB:.2f}, activations "
            f"{self.activations / GIB:.2f})"
        )

    def table(self) -> str:
        """The plan as rows, with the activations both with and without checkpointing."""
        fixed = self.params + self.grads + self.optimizer
        rows = [
            ("weights (fp32)", self.params),
            ("gradients (fp32)", self.grads),
            ("AdamW moments", self.optimizer),
            ("activations", self.activations_full),
            ("activations, checkpointed", self.activations_checkpointed),
            ("total", fixed + self.activations_full),
            ("total, checkpointed", fixed + self.activations_checkpointed),
        ]
        return "\n".join(f"  {name:<28}{size / GIB:>10.2f} GiB" for name, size in rows)


def _intermediate(config: Any) -> int:
    """Width of the MLP's hidden layer: the config's own, else the built-in's rule."""
    width = getattr(config, "intermediate", None)
    if width:
        return int(width)
    if getattr(config, "mlp_type", "gelu") == "swiglu":
        return swiglu_hidden(config.n_embd)
    return 4 * config.n_embd


def estimate_training_memory(
    config: Any,
    *,
    n_params: int,
    micro_batch: int,
    n_trainable: int | None = None,
    batch_multiplier: int = 1,
    activation_bytes: int = 2,
    activation_checkpointing: bool = False,
) -> MemoryEstimate:
    """Estimate for one micro-batch of full-length sequences.

    ``config`` is a built-in ``ModelConfig`` or a ``trainer.hf_model.HfModelConfig``
    (anything with ``n_layer``, ``n_embd``, ``vocab_size`` and ``block_size``).
    ``activation_bytes`` is 2 under bf16 autocast and 4 in fp32. ``n_trainable`` (LoRA,
    frozen rows) is what has gradients and AdamW moments; default: every parameter.
    """
    if micro_batch < 1 or batch_multiplier < 1:
        raise ValueError("micro_batch and batch_multiplier must be at least 1")
    trainable = n_params if n_trainable is None else n_trainable
    tokens = micro_batch * batch_multiplier * config.block_size
    per_layer = tokens * (18 * config.n_embd + 4 * _intermediate(config)) * activation_bytes // 2
    logits = 2 * tokens * config.vocab_size * 4  # fp32 logits and their gradient
    full = config.n_layer * per_layer + logits
    kept_inputs = config.n_layer * tokens * config.n_embd * activation_bytes
    checkpointed = kept_inputs + per_layer + logits
    return MemoryEstimate(
        params=4 * n_params,
        grads=4 * trainable,
        optimizer=8 * trainable,
        activations=checkpointed if activation_checkpointing else full,
        activations_full=full,
        activations_checkpointed=checkpointed,
    )
