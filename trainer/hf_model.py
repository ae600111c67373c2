"""Hugging Face causal LMs as traind models (``model.source = "hf:/path/to/dir"``).

:class:`HfCausalLM` wraps an ``AutoModelForCausalLM`` so the rest of the trainer sees what
it sees in the built-in GPT: ``forward(ids)`` returns float32 logits and no loss (the
trainer computes its own token-weighted loss, ARCHITECTURE.md rule 4), ``num_params()``,
``generate(...)``, and a ``state_dict`` under the Hugging Face names (``model.layers.0...``),
so checkpoints and exports are keyed exactly as ``save_pretrained`` keys them.

transformers is an optional extra (``pip install 'traind[hf]'``): it is imported only here,
and only when a Hugging Face model is used. Models load from a local folder only
(``local_files_only``), in float32 with SDPA attention; on CUDA the step runs under bf16
autocast like the built-in model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.config import HF_PREFIX
from trainer.model import GPT

log = logging.getLogger(__name__)

DEFAULT_MAX_BLOCK = 2048
"""Longest training window by default, whatever context the model was pretrained for
(``model.overrides.block_size`` sets another)."""
_UNHASHED = ("_name_or_path", "transformers_version")
"""Keys of config.json that say where or with what it was saved, not what the model is."""


class HfModelError(RuntimeError):
    """A Hugging Face model that cannot be used; the message says what to do."""


def is_hf_config(config: dict[str, Any]) -> bool:
    """Whether a checkpoint's ``config.json`` is a Hugging Face config (not the built-in's)."""
    return "model_type" in config


def source_folder(source: str) -> Path:
    """The folder of an ``hf:`` source."""
    if not source.startswith(HF_PREFIX):
        raise ValueError(f"{source!r} is not an hf: source")
    return Path(source[len(HF_PREFIX) :]).expanduser()


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of a config's canonical JSON, without the keys that only say where it came from."""
    kept = {k: v for k, v in config.items() if k not in _UNHASHED}
    canonical = json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a Hugging Face model folder; HfModelError names the folder."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HfModelError(
            f"{folder} has no config.json: model.source = 'hf:<folder>' needs a folder written "
            "by save_pretrained (config.json and *.safetensors)"
        ) from None
    except (OSError, ValueError) as exc:
        raise HfModelError(f"{path} is unreadable: {exc}") from exc
    if not isinstance(config, dict) or not is_hf_config(config):
        raise HfModelError(f"{path} is not a Hugging Face config (no model_type)")
    return config


@dataclass(frozen=True, kw_only=True)
class HfModelConfig:
    """A Hugging Face model's architecture, as the trainer needs it."""

    config: dict[str, Any]
    """The model's ``config.json`` (what checkpoints and exports hold)."""
    block_size: int
    """Longest training window, in tokens."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.config)

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def n_layer(self) -> int:
        return int(self._text("num_hidden_layers", "n_layer"))

    @property
    def n_embd(self) -> int:
        return int(self._text("hidden_size", "n_embd"))

    @property
    def intermediate(self) -> int | None:
        """Width of the MLP's hidden layer, where the config says it."""
        width = self.config.get("intermediate_size") or self.config.get("n_inner")
        return int(width) if width else None

    def _text(self, *keys: str) -> Any:
        for key in keys:
            if key in self.config:
                return self.config[key]
        raise HfModelError(f"config.json has none of {keys}")


def block_size_for(config: dict[str, Any], *, wanted: int | None = None) -> int:
    """The training window: ``wanted`` if given (at most the model's context), else the
    model's context capped at ``DEFAULT_MAX_BLOCK``."""
    context = int(config.get("max_position_embeddings") or config.get("n_positions") or 0)
    if wanted is not None:
        if context and wanted > context:
            raise HfModelError(
                f"model.overrides.block_size = {wanted} is longer than the model's context "
                f"({context} positions)"
            )
        return wanted
    return min(context, DEFAULT_MAX_BLOCK) if context else DEFAULT_MAX_BLOCK


class HfCausalLM(nn.Module):
    """A Hugging Face causal LM with the built-in GPT's calling conventions."""

    def __init__(self, hf: nn.Module, *, config: HfModelConfig) -> None:
        super().__init__()
        self.hf = hf
        self.config = config

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab), float32. Batches are right-padded, so the causal mask alone
        keeps real tokens from attending to padding, as in the built-in model."""
        if idx.shape[1] > self.config.block_size:
            raise ValueError(
                f"sequence length {idx.shape[1]} exceeds the block_size {self.config.block_size}"
            )
        return self.hf(input_ids=idx, use_cache=False).logits.float()

    def num_params(self) -> int:
        """Parameters, a tied matrix counted once."""
        return sum(p.numel() for p in self.parameters())

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        # The Hugging Face names, so checkpoints are keyed like save_pretrained's files.
        return self.hf.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        return self.hf.load_state_dict(state_dict, strict=strict, assign=assign)

    def enable_activation_checkpointing(self) -> None:
        """Recompute each layer's activations in the backward pass instead of keeping them."""
        if not getattr(self.hf, "supports_gradient_checkpointing", False):
            raise HfModelError(
                f"{type(self.hf).__name__} does not support activation checkpointing; "
                "set train.activation_checkpointing = false"
            )
        # transformers renamed the method in 5.x; the old name warns where the new exists.
        enable = getattr(self.hf, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.hf.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )

    generate = GPT.generate
    """The built-in model's sampler: it needs only ``self(ids)`` and ``config.block_size``."""


@cache
def transformers_module() -> Any:
    """transformers, with its progress bars off; HfModelError says how to install it."""
    try:
        import transformers
    except ImportError as exc:
        raise HfModelError(
            "Hugging Face models need the hf extra: pip install 'traind[hf]' "
            f"(transformers >= 5): {exc}"
        ) from exc
    transformers.utils.logging.disable_progress_bar()
    return transformers


def load_pretrained(folder: Path, *, block_size: int | None = None) -> HfCausalLM:
    """The model saved in ``folder`` (no hub access), float32, SDPA attention."""
    config = read_config(folder)
    auto = transformers_module().AutoModelForCausalLM
    try:
        hf = auto.from_pretrained(
            folder, local_files_only=True, dtype=torch.float32, attn_implementation="sdpa"
        )
    except (OSError, ValueError, KeyError) as exc:
        raise HfModelError(f"cannot load the model in {folder}: {exc}") from exc
    wrapped = HfModelConfig(config=config, block_size=block_size_for(config, wanted=block_size))
    return HfCausalLM(hf, config=wrapped)


def build_from_config(config: HfModelConfig) -> HfCausalLM:
    """An untrained model of ``config``'s architecture, for weights to be loaded into; the
    random init does not advance the global RNG of a process that may be training."""
    transformers = transformers_module()
    try:
        hf_config = transformers.AutoConfig.for_model(**config.config)
    except (ValueError, KeyError) as exc:
        raise HfModelError(f"config.json does not describe a known model: {exc}") from exc
    with torch.random.fork_rng(devices=[]):
        hf = transformers.AutoModelForCausalLM.from_config(
            hf_config, dtype=torch.float32, attn_implementation="sdpa"
        )
    return HfCausalLM(hf, config=config)
