"""The ``[model]`` section of ``traind.toml`` (with ``[model.lora]``): which model a new
lineage starts from, its tokenizer, architecture overrides, LoRA adapters and new tokens.

Validated here, at the edge; ``Settings.lineage_spec`` hands it to the trainer as a
``trainer.config.LineageSpec``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from service.config.fields import Section, section_of
from service.config.sections import (
    ARCH_TYPES,
    BYTES_TOKENIZER,
    OVERRIDABLE_ARCH_FIELDS,
    existing_file,
    suggest,
)
from trainer.config import BUILTIN_SOURCE, HF_PREFIX, LoraConfig
from trainer.vocab_file import read_tokens_file


class LoraSection(
    section_of(
        LoraConfig,
        limits={"r": {"ge": 1}, "alpha": {"gt": 0}, "dropout": {"ge": 0.0, "lt": 1.0}},
    )
):
    """``[model.lora]``: low-rank adapters on a frozen base (needs the lora extra)."""

    def config(self) -> LoraConfig:
        return LoraConfig(**self.model_dump())


_LORA_EXAMPLE = {
    "r": 8,
    "alpha": 16.0,
    "dropout": 0.05,
    "target_modules": [],
    "modules_to_save": [],
}


class ModelSection(Section):
    """The model a new lineage starts from."""

    source: str = Field(
        BUILTIN_SOURCE,
        description='Where the model comes from: "builtin" (traind\'s own transformer, from '
        'preset) or "hf:/path/to/folder", a Hugging Face causal LM saved in a local folder '
        "(needs the hf extra: pip install 'traind[hf]').",
    )
    preset: str = Field(
        "tiny", min_length=1, description="Architecture preset of the builtin model."
    )
    tokenizer: str = Field(
        BYTES_TOKENIZER,
        min_length=1,
        description='"bytes" (byte-level), the path of a Hugging Face tokenizer.json, or a '
        "folder holding one with its tokenizer_config.json (chat template, special tokens). "
        "Unset with an hf: source: the model folder's own tokenizer.",
    )
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Dropout probability applied on top of the preset."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Architecture fields that replace the preset's, e.g. { block_size = 512 }. Keys: "
            + ", ".join(OVERRIDABLE_ARCH_FIELDS)
            + "."
        ),
    )

    lora: LoraSection | None = Field(
        None,
        description="Train LoRA adapters (peft; pip install 'traind[lora]') on a frozen base "
        "instead of every weight: r, alpha, dropout, target_modules (empty: every linear layer "
        "but the output head), modules_to_save (modules trained in full beside them). Fixed "
        "for a lineage's life. Unset: full training.",
        examples=[_LORA_EXAMPLE],
    )
    new_tokens: Path | None = Field(
        None,
        description="A file of tokens (one per line) that a new lineage adds to its tokenizer, "
        "with embedding rows of their own initialised as the mean of the others; the rows the "
        "vocabulary had stay bit-frozen. For an existing lineage: traind extend-vocab --tokens "
        "FILE.",
        examples=["new_tokens.txt"],
    )
    unfreeze_base_rows_at_step: int | None = Field(
        None,
        ge=0,
        description="After a vocabulary extension, the global step from which the rows the "
        "vocabulary had before train too. Unset: they stay bit-frozen for ever.",
        examples=[10000],
    )

    @field_validator("new_tokens")
    @classmethod
    def _tokens_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        path = existing_file(value, what="model.new_tokens:")
        read_tokens_file(path)  # a bad file fails here, with its line
        return path

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if value == BUILTIN_SOURCE:
            return value
        if not value.startswith(HF_PREFIX):
            raise ValueError(
                f'{value!r} is not a model source: use "builtin" or "hf:/path/to/model/folder"'
            )
        folder = Path(value[len(HF_PREFIX) :]).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise ValueError(
                f"{folder} is not a Hugging Face model folder (no config.json); give the "
                "folder save_pretrained wrote (config.json, *.safetensors, tokenizer files)"
            )
        return f"{HF_PREFIX}{folder}"

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_file(cls, value: str) -> str:
        if value == BYTES_TOKENIZER:
            return value
        path = Path(value).expanduser().resolve()
        if path.is_dir():
            if not (path / "tokenizer.json").is_file():
                raise ValueError(
                    f"tokenizer folder {path} holds no tokenizer.json; give a folder that "
                    "save_pretrained wrote (a Hugging Face model folder has one), the path of "
                    'a tokenizer.json, or "bytes"'
                )
            return str(path)
        return str(
            existing_file(value, what='tokenizer (use "bytes", a tokenizer.json or its folder):')
        )

    @field_validator("overrides")
    @classmethod
    def _architecture_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        checked: dict[str, Any] = {}
        for key, raw in value.items():
            if key == "dropout":
                raise ValueError("set dropout with model.dropout, not in model.overrides")
            if key not in OVERRIDABLE_ARCH_FIELDS:
                raise ValueError(f"{key!r} is not an architecture field ({suggest(key)})")
            # Typed per field, so a string from an environment variable becomes an int.
            try:
                checked[key] = TypeAdapter(ARCH_TYPES[key]).validate_python(raw)
            except ValidationError as exc:
                raise ValueError(f"{key}: {exc.errors()[0]['msg']}") from None
        return checked

    @model_validator(mode="after")
    def _hf_overrides(self) -> ModelSection:
        # A Hugging Face model's architecture is its config.json; only the training window
        # is traind's to choose.
        extra = sorted(set(self.overrides) - {"block_size"})
        if self.source.startswith(HF_PREFIX) and extra:
            raise ValueError(
                f"model.overrides {extra} apply to the builtin model only; with an hf: source "
                "only block_size (the training window) may be set"
            )
        return self
