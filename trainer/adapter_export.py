"""The adapter-only export (``export.adapter_only``): a LoRA lineage's adapter, as peft saves it.

``checkpoints/export`` then holds ``adapter_config.json`` and ``adapter_model.safetensors``
(what ``PeftModel.save_pretrained`` writes, so ``PeftModel.from_pretrained(base, folder)``
loads it on the base model named in ``base_model_name_or_path``), the tokenizer, the base's
``config.json``, ``export.json`` (with the base's reference and hash) and the manifest, in
the same staged, atomic folder as every export (ARCHITECTURE.md rule 8). Only Hugging Face
bases without a vocabulary extension qualify: the built-in GPT has no ``from_pretrained``
base to apply an adapter to, and new token rows need a resized base (their merged export
carries them).
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from trainer.adaptation import Adaptation, AdaptationError
from trainer.checkpoint import SLACK_BYTES, fault_at, raise_disk_full
from trainer.hf_model import (
    HfCausalLM,
    HfModelConfig,
    block_size_for,
    load_pretrained,
    source_folder,
)
from trainer.lora import adapter_config, adapter_state, peft_module
from trainer.records.checkpoints import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CONFIG,
    EXPORT_DIR,
    EXPORT_INFO,
    TOKENIZER,
    TOKENIZER_CONFIG,
)
from trainer.records.events import utc_now
from trainer.records.manifest import write_json, write_manifest
from trainer.records.staging import staged_folder
from trainer.records.storage import ensure_space

FORMAT = "traind-adapter-export"


def refuse_adapter_only(adaptation: Adaptation) -> None:
    """Say why this lineage cannot have an adapter-only export (nothing if it can)."""
    if adaptation.lora is None:
        raise AdaptationError("export.adapter_only needs [model.lora]: there is no adapter")
    source = (adaptation.base or {}).get("source", "")
    if not source.startswith("hf:"):
        raise AdaptationError(
            "export.adapter_only needs a Hugging Face base (model.source = 'hf:<folder>'): "
            "the built-in GPT has no from_pretrained base for PeftModel; its export holds "
            "merged weights (set export.adapter_only = false)"
        )
    if adaptation.extended:
        raise AdaptationError(
            "export.adapter_only cannot carry new token rows (PeftModel loads onto the "
            "unextended base); set export.adapter_only = false for merged weights"
        )


def write_adapter_export(
    root: Path,
    *,
    model: torch.nn.Module,
    adaptation: Adaptation,
    config: dict[str, Any],
    tokenizer_json: str,
    tokenizer_config_json: str | None,
    info: dict[str, Any],
    dtype: str,
) -> Path:
    """Write ``root/export`` as the adapter alone, atomically; returns its path."""
    refuse_adapter_only(adaptation)
    assert adaptation.lora is not None and adaptation.base is not None
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    tensors = {k: v.to(half).to("cpu").contiguous() for k, v in adapter_state(model).items()}
    base = str(source_folder(adaptation.base["source"]))
    settings = adapter_config(model, base=base)
    need = sum(t.numel() * t.element_size() for t in tensors.values()) + SLACK_BYTES
    root.mkdir(parents=True, exist_ok=True)
    ensure_space(root, need=need, what="the export")
    details = {
        **info,
        "format": FORMAT,
        "format_version": 1,
        "adapter_only": True,
        "base": adaptation.base,
        "dtype": dtype,
        "parameters": sum(t.numel() for t in tensors.values()),
        "created_at": utc_now(),
        "how_to_load": "peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("
        f"{base!r}), <this folder>); traind generate --checkpoint <this folder>",
    }
    try:
        with staged_folder(root / EXPORT_DIR, fault=fault_at("export")) as stage:
            write_json(stage.path / CONFIG, config)
            write_json(stage.path / ADAPTER_CONFIG, settings)
            save_file(tensors, str(stage.path / ADAPTER_WEIGHTS), metadata={"format": "pt"})
            (stage.path / TOKENIZER).write_text(tokenizer_json, encoding="utf-8")
            files = [CONFIG, ADAPTER_CONFIG, ADAPTER_WEIGHTS, TOKENIZER]
            if tokenizer_config_json is not None:
                (stage.path / TOKENIZER_CONFIG).write_text(tokenizer_config_json, encoding="utf-8")
                files.append(TOKENIZER_CONFIG)
            write_json(stage.path / EXPORT_INFO, details)
            stage.fsync_files = (*files, EXPORT_INFO)
            stage.write_manifest = functools.partial(
                write_manifest,
                files=stage.fsync_files,
                format_version=1,
                name=EXPORT_DIR,
                kind="export",
                created_at=details["created_at"],
            )
    except BaseException as exc:
        raise_disk_full(exc, path=root, what="the export")
        raise
    return root / EXPORT_DIR


def is_adapter_export(info: dict[str, Any]) -> bool:
    return bool(info.get("adapter_only"))


def load_adapter_export(path: Path, *, config: dict[str, Any], dtype: torch.dtype) -> HfCausalLM:
    """The base model with the exported adapter merged in (for ``traind generate``)."""
    base = source_folder(f"hf:{_base_path(path)}")
    model = load_pretrained(base)
    peft = peft_module()
    with warnings.catch_warnings():
        # peft asks transformers 5 a deprecated question while loading; not ours to fix.
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        merged = peft.PeftModel.from_pretrained(model.hf, str(path)).merge_and_unload()
    wrapped = HfModelConfig(config=config, block_size=block_size_for(config))
    return HfCausalLM(merged.to(dtype), config=wrapped)


def _base_path(path: Path) -> str:
    settings = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    return str(settings["base_model_name_or_path"])
