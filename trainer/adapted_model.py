"""Building the model of an adapted lineage, and the plain model it amounts to.

A LoRA lineage's checkpoints hold only what trains; its frozen base is a reference
(``Adaptation.base``: ``hf:<folder>``, ``checkpoint:<folder>`` from ``--init-from``, or
``init``, the seeded random init of the built-in GPT) and the sha256 of its weights, checked
whenever the base is loaded again. ``model_for_checkpoint`` rebuilds any adapted
checkpoint's model in the one order (base weights, extension, adapters, trainable flags,
saved tensors); ``merged_model`` folds adapters and new rows into a plain model of the
base architecture for exports.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.adaptation import (
    Adaptation,
    AdaptationError,
    apply,
    describe,
    embedding_rows,
    trainable_count,
)
from trainer.checkpoint import (
    CheckpointError,
    LoadedCheckpoint,
    load_model_weights,
    model_tensors_names,
    read_checkpoint,
)
from trainer.config import BUILTIN_SOURCE, LineageSpec, ModelConfig
from trainer.hf_model import (
    HfModelConfig,
    block_size_for,
    build_from_config,
    is_hf_config,
    load_pretrained,
    source_folder,
)
from trainer.lora import inner_model
from trainer.model import GPT
from trainer.tokenizer import Tokenizer

log = logging.getLogger(__name__)

INIT_SOURCE = "init"
"""A built-in LoRA lineage's base when it started from no weights: the seeded random init."""

CHECKPOINT_PREFIX = "checkpoint:"
"""A LoRA base taken from a checkpoint folder (``--init-from``)."""


def weights_sha256(model: nn.Module) -> str:
    """sha256 of a model's tensors (names and bytes, in state-dict order): what a LoRA
    lineage records of its base, whatever files it was read from."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in model_tensors_names(model):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def base_model(
    config: dict[str, Any], *, source: str, seed: int, block_size: int | None
) -> nn.Module:
    """The base model of a LoRA lineage, with its weights, from ``source``."""
    if source.startswith("hf:"):
        folder = source_folder(source)
        if not (folder / "config.json").is_file():
            raise AdaptationError(
                f"the LoRA lineage's base model {folder} is gone; its checkpoints hold only the "
                "adapters. Put the base model back at that path (the same weights: their sha256 "
                "is checked)"
            )
        return load_pretrained(folder, block_size=block_size)
    if source.startswith(CHECKPOINT_PREFIX):
        folder = Path(source[len(CHECKPOINT_PREFIX) :])
        try:
            found = read_checkpoint(folder)
        except CheckpointError as exc:
            raise AdaptationError(
                f"the LoRA lineage's base checkpoint cannot be read ({exc}); its checkpoints "
                "hold only the adapters: put the base back at that path"
            ) from None
        model = empty_base(found.config, block_size=block_size)
        found.load_into(model)
        return model
    if source == INIT_SOURCE:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return GPT(ModelConfig.from_dict(config))
    raise AdaptationError(f"unknown LoRA base source {source!r}")


def empty_base(config: dict[str, Any], *, block_size: int | None) -> nn.Module:
    """An untrained model of ``config`` (built-in or Hugging Face), for weights to load into."""
    if is_hf_config(config):
        return build_from_config(
            HfModelConfig(config=config, block_size=block_size_for(config, wanted=block_size))
        )
    with torch.random.fork_rng(devices=[]):
        return GPT(ModelConfig.from_dict(config))


def check_base(model: nn.Module, adaptation: Adaptation) -> None:
    """Refuse a base whose weights are not the ones the lineage was started on."""
    assert adaptation.base is not None
    found = weights_sha256(model)
    if found != adaptation.base.get("sha256"):
        raise AdaptationError(
            f"the LoRA lineage's base ({adaptation.base.get('source')}) has other weights than "
            f"when the lineage started (sha256 {found[:12]}, recorded "
            f"{str(adaptation.base.get('sha256'))[:12]}): the adapters were trained on that "
            "base. Put the original base back, or start a new lineage on the new one"
        )


def model_for_checkpoint(
    found: LoadedCheckpoint, *, block_size: int | None = None, unfreeze_at: int | None = None
) -> nn.Module:
    """The model of a checkpoint of an adapted lineage, its weights loaded, on the CPU."""
    state = found.training_state
    adaptation = Adaptation.from_dict(state.get("adaptation"))
    seed = int(state.get("seed", 0))
    if adaptation.lora is not None:
        assert adaptation.base is not None
        model = base_model(
            found.config, source=adaptation.base["source"], seed=seed, block_size=block_size
        )
        check_base(model, adaptation)
    else:
        model = empty_base(found.config, block_size=block_size)
    apply(model, adaptation, seed=seed, step=found.step, unfreeze_at=unfreeze_at)
    found.load_into(model, partial=adaptation.lora is not None)
    return model


def lora_base_source(source: str, *, init_from: Path | None) -> str:
    """Where a new LoRA lineage's base comes from."""
    if init_from is not None:
        return f"{CHECKPOINT_PREFIX}{init_from.resolve()}"
    if source == BUILTIN_SOURCE:
        return INIT_SOURCE
    return source


def merged_config(config: dict[str, Any], adaptation: Adaptation) -> dict[str, Any]:
    """The architecture of the merged model: the base's, with the vocabulary's rows."""
    if not adaptation.extended:
        return dict(config)
    return {**config, "vocab_size": adaptation.rows}


def merged_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors with adapters folded in, ``modules_to_save`` replaced by their
    trained copies and extended weights whole, under the base model's names."""
    from trainer import lora

    out: dict[str, torch.Tensor] = {}
    # peft only where the model has its layers: an extension alone does not need it.
    adapted = any(type(m).__module__.startswith("peft.") for m in model.modules())

    def walk(module: nn.Module, prefix: str) -> None:
        if adapted and lora.is_lora_layer(module):
            for key, tensor in lora.merged_linear(module).items():
                out[prefix + key] = tensor
            return
        if adapted and lora.is_saved_copy(module):
            walk(lora.saved_copy(module), prefix)
            return
        parametrized = hasattr(module, "parametrizations")
        if parametrized:
            out[prefix + "weight"] = module.weight.detach()
        for name, param in module._parameters.items():
            if param is not None:
                out[prefix + name] = param.detach()
        for name, buffer in module._buffers.items():
            if buffer is not None and name not in module._non_persistent_buffers_set:
                out[prefix + name] = buffer
        for name, child in module._modules.items():
            if child is not None and not (parametrized and name == "parametrizations"):
                walk(child, f"{prefix}{name}.")

    walk(inner_model(model), "")
    return out


def merged_model(
    model: nn.Module,
    config: dict[str, Any],
    adaptation: Adaptation,
    *,
    block_size: int | None = None,
) -> nn.Module:
    """A plain model (no adapter, no parametrization) computing what ``model`` computes."""
    plain = empty_base(merged_config(config, adaptation), block_size=block_size)
    load_model_weights(plain, merged_tensors(model))
    return plain


def adapt_new_model(
    model: nn.Module,
    tokenizer: Tokenizer,
    *,
    spec: LineageSpec,
    seed: int,
    init_from: Path | None,
) -> tuple[Adaptation, Tokenizer]:
    """Give a new lineage's model (holding its starting weights) the adapters and new
    tokens of ``spec``; returns the record and the tokenizer with the tokens."""
    adaptation = Adaptation()
    if spec.lora is not None:
        source = lora_base_source(spec.source, init_from=init_from)
        adaptation = Adaptation(
            lora=spec.lora, base={"source": source, "sha256": weights_sha256(model)}
        )
    if spec.new_tokens:
        extended, added = tokenizer.with_added_tokens(spec.new_tokens)
        if added:
            adaptation = adaptation.with_tokens(
                added, base_rows=tokenizer.vocab_size, model_rows=embedding_rows(model), at_step=0
            )
            tokenizer = extended
    apply(model, adaptation, seed=seed, step=0, unfreeze_at=spec.unfreeze_base_rows_at_step)
    log.info(
        "new lineage adapted (%s): %s of %s parameters train",
        describe(adaptation),
        f"{trainable_count(model):,}",
        f"{sum(p.numel() for p in model.parameters()):,}",
    )
    return adaptation, tokenizer
