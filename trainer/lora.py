"""Low-rank adapters through peft, injected in place: the model object is never replaced.

``peft.inject_adapter_in_model`` wraps the targeted linear layers of the built-in GPT or of
the Hugging Face model inside :class:`trainer.hf_model.HfCausalLM` (``model.hf``) and
freezes everything else; ``modules_to_save`` get a trained copy beside the frozen original.
Because no ``PeftModel`` replaces the model, the parameters the optimizer holds are the
ones that train, and a checkpoint's tensors load into them under the names they were
saved with (``trainer.adaptation``). peft is an optional extra (``pip install
'traind[lora]'``), imported only here and only when LoRA is configured. The adapters'
random initialisation runs on a generator of its own (seeded from the lineage's seed), so
it never moves the training RNG.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

import torch
from torch import nn

from trainer.config import LoraConfig

log = logging.getLogger(__name__)

ADAPTER = "default"
"""peft's name for the one adapter traind trains."""
PEFT_PREFIX = "base_model.model."
"""What ``PeftModel`` puts before the base model's names in an adapter file."""


class LoraError(RuntimeError):
    """LoRA settings that cannot be applied; the message says what to do."""


@cache
def peft_module() -> Any:
    """peft; LoraError says how to install it."""
    try:
        import peft
    except ImportError as exc:
        raise LoraError(
            f"[model.lora] needs the lora extra: pip install 'traind[lora]' (peft): {exc}"
        ) from exc
    return peft


def inner_model(model: nn.Module) -> nn.Module:
    """The module adapters go into: the Hugging Face model itself, else the model."""
    return getattr(model, "hf", model)


def default_targets(model: nn.Module) -> list[str]:
    """Every linear layer but the output head, by the last part of its name."""
    inner = inner_model(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    head = head if head is not None else getattr(inner, "lm_head", None)
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in inner.named_modules()
        if isinstance(module, nn.Linear) and module is not head and name
    }
    return sorted(names)


def peft_config(config: LoraConfig, model: nn.Module) -> Any:
    """peft's ``LoraConfig`` for traind's."""
    peft = peft_module()
    return peft.LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules) or default_targets(model),
        modules_to_save=list(config.modules_to_save) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def inject(model: nn.Module, config: LoraConfig, *, seed: int) -> None:
    """Add adapters to ``model`` in place and freeze everything else but them and the
    ``modules_to_save``; the adapters start as peft starts them (B zero: no change yet)."""
    inner = inner_model(model)
    names = {name for name, _ in inner.named_modules()}
    for wanted in config.modules_to_save:
        if not any(n == wanted or n.endswith(f".{wanted}") for n in names):
            raise LoraError(f"model.lora.modules_to_save: the model has no module {wanted!r}")
    _refuse_tied(inner, config.modules_to_save)
    linear = [n for n, m in inner.named_modules() if isinstance(m, nn.Linear)]
    for wanted in config.target_modules:
        if not any(n == wanted or n.endswith(f".{wanted}") for n in linear):
            raise LoraError(
                f"model.lora.target_modules: no linear layer is named or ends with {wanted!r}; "
                f"the model's linear layers end with {', '.join(default_targets(model))} "
                "(and the output head)"
            )
    settings = peft_config(config, model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            peft_module().inject_adapter_in_model(settings, inner, adapter_name=ADAPTER)
        except ValueError as exc:
            raise LoraError(f"model.lora.target_modules: {exc}") from exc


def _refuse_tied(inner: nn.Module, wanted: tuple[str, ...]) -> None:
    """A module trained in full as a copy must not share a weight with another module (a
    head tied to the embedding): the copy would untie them, and no export could hold both."""
    for name, module in inner.named_modules():
        if not any(name == w or name.endswith(f".{w}") for w in wanted):
            continue
        own = {p.untyped_storage().data_ptr() for p in module.parameters()}
        outside = [
            other
            for other, param in inner.named_parameters(remove_duplicate=False)
            if not other.startswith(f"{name}.") and param.untyped_storage().data_ptr() in own
        ]
        if outside:
            raise LoraError(
                f"model.lora.modules_to_save names {name!r}, whose weight is tied to "
                f"{outside[0]!r}; a trained copy would untie them. Leave it out (LoRA on the "
                "other layers adapts the model), or use a model with an untied head"
            )


def is_lora_layer(module: nn.Module) -> bool:
    return isinstance(module, peft_module().tuners.lora.LoraLayer)


def is_saved_copy(module: nn.Module) -> bool:
    """Whether ``module`` is peft's wrapper of a ``modules_to_save`` module."""
    return isinstance(module, peft_module().utils.other.ModulesToSaveWrapper)


def merged_linear(module: nn.Module) -> dict[str, torch.Tensor]:
    """A LoRA layer's weight with its adapter folded in (and its bias), computed on the
    side: the layer itself is never merged, so training goes on with the same bits."""
    base = module.get_base_layer()
    with torch.no_grad():
        weight = base.weight + module.get_delta_weight(ADAPTER).to(base.weight.dtype)
    tensors = {"weight": weight}
    if getattr(base, "bias", None) is not None:
        tensors["bias"] = base.bias.detach()
    return tensors


def saved_copy(module: nn.Module) -> nn.Module:
    """The trained copy of a ``modules_to_save`` module."""
    return module.modules_to_save[ADAPTER]


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter as ``PeftModel.save_pretrained`` writes it (names under ``PEFT_PREFIX``)."""
    peft = peft_module()
    state = peft.get_peft_model_state_dict(inner_model(model), adapter_name=ADAPTER)
    return {f"{PEFT_PREFIX}{name}": tensor.detach() for name, tensor in state.items()}


def adapter_config(model: nn.Module, *, base: str) -> dict[str, Any]:
    """``adapter_config.json`` for ``PeftModel.from_pretrained`` on the model at ``base``:
    the settings peft injected the adapters with."""
    settings = inner_model(model).peft_config[ADAPTER].to_dict()
    settings["base_model_name_or_path"] = base
    settings["target_modules"] = sorted(settings["target_modules"])
    if settings.get("modules_to_save") is not None:
        settings["modules_to_save"] = sorted(settings["modules_to_save"])
    return {k: v for k, v in settings.items() if _json_safe(v)}


def _json_safe(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, list, dict, type(None)))
