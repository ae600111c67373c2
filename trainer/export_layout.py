"""What an export folder holds, by model: the Hugging Face layout wherever there is one.

* A Hugging Face lineage exports what ``save_pretrained`` would write: its ``config.json``
  (with the export's dtype), the weights under their own names, ``generation_config.json``
  and the tokenizer with its ``tokenizer_config.json``. ``AutoModelForCausalLM`` and
  ``AutoTokenizer.from_pretrained`` load the folder.
* The built-in GPT exports in the layout of the Hugging Face architecture it matches
  (``trainer.hf_layout``): Llama for rope + swiglu + rmsnorm, GPT-2 for learned + gelu +
  layernorm. ``export.json`` keeps the built-in config too, so ``traind generate`` loads it
  back into the built-in model without transformers.
* A built-in architecture with no Hugging Face equivalent (a logit soft-cap, rope with a
  GELU MLP, ...) keeps traind's own layout, and ``export.json`` says why (``hf_layout``
  null, ``no_hf_reason``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint import load_model_weights, model_tensors_names, tied_aliases
from trainer.config import LineageSpec, ModelConfig
from trainer.hf_layout import from_hf, hf_architecture, to_hf
from trainer.hf_lineage import rebuild_hf
from trainer.hf_model import HfCausalLM, is_hf_config
from trainer.model import GPT
from trainer.tokenizer import Tokenizer
from trainer.weights import load_weights_into, read_tensors

log = logging.getLogger(__name__)

_TOLD: set[str] = set()
"""Reasons for traind's own layout already logged as a warning by this process."""
_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


@dataclass(frozen=True, kw_only=True)
class ExportLayout:
    """The files of one export, ready to be written."""

    config: dict[str, Any]
    """``config.json``."""
    names: list[str]
    """The tensors' names, in writing order."""
    tensor: Callable[[str], torch.Tensor]
    """The tensor of a name, at the model's precision (the writer casts it)."""
    notes: dict[str, Any]
    """What ``export.json`` says about the layout (``hf_layout``, ``no_hf_reason``, ...)."""
    parameters: int
    """Elements stored (a layout may store more than the model has, e.g. GPT-2's zero
    biases for a bias-free model)."""
    generation_config: dict[str, Any] | None = None
    """``generation_config.json`` (Hugging Face layouts only)."""
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    """``tokenizer_config.json``: the tokenizer's own, or a minimal one naming its tokens."""


def layout_for(
    model: torch.nn.Module, config: dict[str, Any], *, dtype: torch.dtype, tokenizer: Tokenizer
) -> ExportLayout:
    """How ``model`` (of ``config``) is exported in ``dtype`` (named in its config)."""
    if is_hf_config(config):
        return _hf_lineage(model, config, dtype=dtype, tokenizer=tokenizer)
    traind_config = ModelConfig.from_dict(config)
    architecture, reason = hf_architecture(traind_config)
    if architecture is None:
        # Once per process: the reason is the same at every file's export.
        level = logging.INFO if reason in _TOLD else logging.WARNING
        _TOLD.add(reason)
        log.log(
            level,
            "the export keeps traind's own layout: %s; Hugging Face loaders cannot read it "
            "(traind generate can)",
            reason,
        )
        return _traind(model, config, tokenizer=tokenizer, reason=reason)
    state = model.state_dict()
    fp32 = {name: state[name].detach() for name in model_tensors_names(model)}
    hf_config, tensors = to_hf(traind_config, tensors=fp32)
    hf_config = {**hf_config, **_token_ids(tokenizer), **_dtype_keys(dtype)}
    return ExportLayout(
        config=hf_config,
        names=list(tensors),
        tensor=tensors.__getitem__,
        notes={"hf_layout": architecture, "traind_config": config},
        parameters=sum(t.numel() for t in tensors.values()),
        generation_config=_generation_config(tokenizer),
        tokenizer_config=_tokenizer_config(tokenizer),
    )


def _hf_lineage(
    model: torch.nn.Module, config: dict[str, Any], *, dtype: torch.dtype, tokenizer: Tokenizer
) -> ExportLayout:
    state = model.state_dict()
    return ExportLayout(
        config={**config, **_dtype_keys(dtype)},
        names=model_tensors_names(model),
        tensor=state.__getitem__,
        notes={"hf_layout": config.get("model_type")},
        parameters=_stored(model),
        generation_config=_generation_config(tokenizer),
        tokenizer_config=_tokenizer_config(tokenizer),
    )


def _traind(
    model: torch.nn.Module, config: dict[str, Any], *, tokenizer: Tokenizer, reason: str
) -> ExportLayout:
    state = model.state_dict()
    return ExportLayout(
        config=config,
        names=model_tensors_names(model),
        tensor=state.__getitem__,
        notes={"hf_layout": None, "no_hf_reason": reason},
        parameters=_stored(model),
        tokenizer_config=_tokenizer_config(tokenizer),
    )


def load_exported_model(
    path: Path, *, config: dict[str, Any], info: dict[str, Any], dtype: torch.dtype
) -> torch.nn.Module:
    """The model of an export folder, on the CPU in ``dtype``, by the layout it was written in."""
    traind_config = info.get("traind_config")
    if isinstance(traind_config, dict):
        model = empty_model(traind_config, dtype=dtype)
        load_model_weights(model, from_hf(model.config, tensors=read_tensors(path)))
        return model
    hf_keys = ("dtype", "torch_dtype")  # the export's own dtype; the caller chose ``dtype``
    model = empty_model({k: v for k, v in config.items() if k not in hf_keys}, dtype=dtype)
    load_weights_into(model, path, aliases=tied_aliases(model))
    return model


def empty_model(config: dict[str, Any], *, dtype: torch.dtype) -> GPT | HfCausalLM:
    """A model of ``config`` (the built-in one's or a Hugging Face ``config.json``) on the
    CPU in ``dtype``, for weights to be loaded into. The random init does not advance the
    global RNG of a process that may be training."""
    if is_hf_config(config):
        return rebuild_hf(config, LineageSpec()).to(dtype)
    with torch.random.fork_rng(devices=[]):
        model = GPT(ModelConfig.from_dict(config))
    if dtype != torch.float32:
        # Cast the weights only: buffers (the rotary tables) stay float32, because the
        # model rotates in float32 to keep far positions precise.
        for param in model.parameters():
            param.data = param.data.to(dtype)
    return model


def _stored(model: torch.nn.Module) -> int:
    # parameters() yields a tied matrix once, as the weights file stores it.
    return sum(p.numel() for p in model.parameters())


def _dtype_keys(dtype: torch.dtype) -> dict[str, str]:
    # transformers 5 reads "dtype"; earlier versions read "torch_dtype".
    name = _DTYPE_NAMES[dtype]
    return {"dtype": name, "torch_dtype": name}


def _token_ids(tokenizer: Tokenizer) -> dict[str, int | None]:
    return {
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
    }


def _generation_config(tokenizer: Tokenizer) -> dict[str, Any]:
    """The generation defaults Hugging Face loaders read: when to stop, what pads."""
    return {k: v for k, v in _token_ids(tokenizer).items() if v is not None}


def _tokenizer_config(tokenizer: Tokenizer) -> dict[str, Any]:
    """The tokenizer's own settings, or the few that ``AutoTokenizer`` needs to load a bare
    ``tokenizer.json`` with its end-of-text and pad tokens."""
    own = json.loads(tokenizer.config_json() or "{}")
    if own:
        return own
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": tokenizer.decode([tokenizer.eos_id]),
        "pad_token": tokenizer.decode([tokenizer.pad_id]),
        "clean_up_tokenization_spaces": False,
    }
