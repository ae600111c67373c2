"""Named architecture presets and the one function that turns them into a ModelConfig.

Presets hold architecture only: shapes and, for the ``*-llama`` ones, the rope / SwiGLU /
RMSNorm choices that make the model exportable as a Llama (``trainer.hf_layout``). The
vocabulary size comes from the tokenizer at lineage creation and is padded up to a
multiple of 64 (friendlier matmul shapes, and room for a few added special tokens without
a reshape).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from trainer.config import ModelConfig

PRESETS: dict[str, dict[str, Any]] = {
    "test": {
        "description": "unit tests only: 2 layers, width 32",
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        "block_size": 64,
    },
    "test-llama": {
        "description": "unit tests only: 2 layers, width 32, Llama-shaped (rope, SwiGLU, RMSNorm)",
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        "block_size": 64,
        "pos_encoding": "rope",
        "mlp_type": "swiglu",
        "norm_type": "rmsnorm",
    },
    "tiny": {
        "description": "CPU demo, ~0.9M params with a byte vocabulary",
        "n_layer": 4,
        "n_head": 4,
        "n_embd": 128,
        "block_size": 256,
    },
    "tiny-llama": {
        "description": "CPU demo, Llama-shaped (rope, SwiGLU, RMSNorm), ~0.9M params with a byte vocabulary",
        "n_layer": 4,
        "n_head": 4,
        "n_embd": 128,
        "block_size": 256,
        "pos_encoding": "rope",
        "mlp_type": "swiglu",
        "norm_type": "rmsnorm",
    },
    "small": {
        "description": "~11M params with a byte vocabulary; fine on a laptop",
        "n_layer": 6,
        "n_head": 6,
        "n_embd": 384,
        "block_size": 256,
    },
    "gpt2-124m": {
        "description": "GPT-2 small shape, ~124M params with the GPT-2 vocabulary (GPU)",
        "n_layer": 12,
        "n_head": 12,
        "n_embd": 768,
        "block_size": 1024,
    },
    "gpt-750m": {
        "description": "GPT-2 large shape, ~774M params with the GPT-2 vocabulary (big GPU)",
        "n_layer": 36,
        "n_head": 20,
        "n_embd": 1280,
        "block_size": 1024,
    },
}

_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelConfig))


def padded_vocab_size(n: int, *, multiple: int = 64) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    if n <= 0 or multiple <= 0:
        raise ValueError("vocabulary size and multiple must be positive")
    return multiple * math.ceil(n / multiple)


def model_config_for(
    preset: str,
    *,
    vocab_size: int,
    dropout: float = 0.0,
    overrides: dict[str, Any] | None = None,
) -> ModelConfig:
    """Build the ModelConfig of ``preset`` for a tokenizer with ``vocab_size`` tokens.

    ``overrides`` replace preset fields (any ModelConfig field). An overridden
    ``vocab_size`` may reserve extra rows but never fewer than the tokenizer needs.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    fields = {k: v for k, v in PRESETS[preset].items() if k != "description"}
    fields["dropout"] = dropout
    fields["vocab_size"] = vocab_size
    for key, value in (overrides or {}).items():
        if key not in _FIELDS:
            raise ValueError(
                f"unknown architecture override {key!r}; allowed: {', '.join(sorted(_FIELDS))}"
            )
        fields[key] = value
    if fields["vocab_size"] < vocab_size:
        raise ValueError(
            f"vocab_size override {fields['vocab_size']} is smaller than the tokenizer's "
            f"vocabulary ({vocab_size})"
        )
    fields["vocab_size"] = padded_vocab_size(fields["vocab_size"])
    return ModelConfig(**fields)
