"""Lineages of Hugging Face models: how one starts, what it records, and what it refuses.

A lineage started from ``model.source = "hf:/dir"`` records in its training state the
source folder, the sha256 of its ``config.json`` and the tokenizer's fingerprint
(``model_spec``). Every later open compares the settings with that record: another
model, a changed folder or another tokenizer is refused with what to do, never trained
on silently (ARCHITECTURE.md rule 15). Resuming needs nothing from the source folder:
the checkpoint holds the config, the weights and the tokenizer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trainer.config import BUILTIN_SOURCE, HF_PREFIX, LineageSpec
from trainer.hf_model import (
    HfCausalLM,
    HfModelConfig,
    block_size_for,
    build_from_config,
    config_hash,
    is_hf_config,
    load_pretrained,
    read_config,
    source_folder,
)
from trainer.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)


class ModelMismatchError(RuntimeError):
    """The settings name another model or tokenizer than the lineage was started with."""


def is_hf_source(source: str) -> bool:
    return source.startswith(HF_PREFIX)


def hf_tokenizer(spec: LineageSpec) -> Tokenizer:
    """``model.tokenizer`` when the settings name one, else the model folder's own."""
    if spec.tokenizer_set:
        return load_tokenizer(spec.tokenizer)
    return load_tokenizer(str(source_folder(spec.source)))


def start_hf(spec: LineageSpec) -> tuple[HfCausalLM, Tokenizer, dict[str, Any]]:
    """The pretrained model and tokenizer of ``spec.source``, and the lineage's record."""
    folder = source_folder(spec.source)
    model = load_pretrained(folder, block_size=spec.overrides.get("block_size"))
    tokenizer = hf_tokenizer(spec)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ModelMismatchError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model in {folder} has "
            f"{model.config.vocab_size} embedding rows; use the model's own tokenizer "
            "(leave model.tokenizer unset)"
        )
    record = hf_record(spec, config=model.config.config, tokenizer=tokenizer)
    log.info(
        "new lineage from %s (%s, %s parameters), tokenizer vocab %d, window %d",
        folder,
        model.config.config.get("model_type"),
        f"{model.num_params():,}",
        tokenizer.vocab_size,
        model.config.block_size,
    )
    return model, tokenizer, record


def hf_record(spec: LineageSpec, *, config: dict[str, Any], tokenizer: Tokenizer) -> dict[str, Any]:
    """What a lineage of a Hugging Face model records about where it came from."""
    return {
        "source": spec.source,
        "config_sha256": config_hash(config),
        "tokenizer": spec.tokenizer if spec.tokenizer_set else "(the model's own)",
        "tokenizer_sha256": tokenizer.fingerprint,
        "overrides": dict(spec.overrides),
    }


def rebuild_hf(config: dict[str, Any], spec: LineageSpec) -> HfCausalLM:
    """An untrained model of a checkpoint's architecture, for its weights to load into."""
    block_size = block_size_for(config, wanted=spec.overrides.get("block_size"))
    return build_from_config(HfModelConfig(config=config, block_size=block_size))


def check_same_model(
    recorded: dict[str, Any], spec: LineageSpec, *, checkpoint_config: dict[str, Any], where: Path
) -> None:
    """Refuse settings that name another model or tokenizer than the lineage's.

    ``recorded`` is the lineage's ``model_spec``; ``checkpoint_config`` the config.json of
    the checkpoint being resumed; ``where`` the checkpoints folder (for the message).
    """
    was_hf = is_hf_config(checkpoint_config)
    started = recorded.get("source", BUILTIN_SOURCE) if was_hf else BUILTIN_SOURCE
    if not was_hf and not is_hf_source(spec.source):
        return
    if started != spec.source:
        raise ModelMismatchError(
            _refusal(
                where, started=started, recorded=recorded, now=f"model.source = {spec.source!r}"
            )
        )
    folder = source_folder(spec.source)
    if folder.is_dir():
        now_hash = config_hash(read_config(folder))
        if now_hash != recorded.get("config_sha256"):
            raise ModelMismatchError(
                _refusal(
                    where,
                    started=started,
                    recorded=recorded,
                    now=f"{folder}/config.json has changed since (sha256 {now_hash[:12]})",
                )
            )
    else:
        log.info(
            "%s is gone; the lineage resumes from its checkpoint, which holds the model", folder
        )
    if spec.tokenizer_set or folder.is_dir():
        tokenizer = hf_tokenizer(spec)
        if tokenizer.fingerprint != recorded.get("tokenizer_sha256"):
            named = spec.tokenizer if spec.tokenizer_set else f"the tokenizer in {folder}"
            raise ModelMismatchError(
                _refusal(
                    where,
                    started=started,
                    recorded=recorded,
                    now=f"{named} differs (sha256 {tokenizer.fingerprint[:12]})",
                )
            )


def _refusal(where: Path, *, started: str, recorded: dict[str, Any], now: str) -> str:
    if started == BUILTIN_SOURCE:
        was = "the built-in model"
    else:
        was = (
            f"{started} (config sha256 {str(recorded.get('config_sha256'))[:12]}, tokenizer "
            f"sha256 {str(recorded.get('tokenizer_sha256'))[:12]})"
        )
    return (
        f"the lineage in {where} was started from {was}, but {now}. A lineage never changes "
        "its model or tokenizer: set model.source (and model.tokenizer) back to what the "
        "lineage was started with, or start a new lineage for the new model with "
        "`traind train --new-lineage FILE` (moves this lineage's folders to retired/) or "
        "with paths.checkpoints pointing at an empty folder"
    )
