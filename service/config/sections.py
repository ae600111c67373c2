"""The sections of ``traind.toml``: one pydantic model per ``[section]``.

Each field's description is the comment ``traind init`` writes above the key, so the
template cannot drift from what is validated. The sections that are one of the trainer's
config dataclasses (``[train]``, ``[gold]``, ``[export]``) take their fields from it
(:func:`section_of`): the dataclass is the one definition, this adds the bounds.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from pathlib import Path
from typing import Any

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from service.config.fields import Section, section_of
from trainer.config import (
    BUILTIN_SOURCE,
    HF_PREFIX,
    ExportConfig,
    GoldConfig,
    LoraConfig,
    ModelConfig,
    TrainConfig,
)
from trainer.vocab_file import read_tokens_file

BYTES_TOKENIZER = "bytes"

# Architecture fields a user may override on top of a preset; dropout has its own key.
_ARCH_TYPES = typing.get_type_hints(ModelConfig)
OVERRIDABLE_ARCH_FIELDS = tuple(
    f.name for f in dataclasses.fields(ModelConfig) if f.name != "dropout"
)
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
"""The devices a setting or an option may name (``fullmatch``)."""


def _existing_file(value: str | Path, *, what: str) -> Path:
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist or is not a file")
    return path


class PathsSection(Section):
    """Runtime folders (relative paths are relative to this file's folder)."""

    inbox: Path = Field(Path("data_inbox"), description="Folder watched for new *.jsonl drops.")
    checkpoints: Path = Field(
        Path("checkpoints"), description="Folder of the step-*, gold and export checkpoints."
    )
    state: Path = Field(
        Path("state"), description="Folder of the ledger database, the event log and the API token."
    )

    @field_validator("inbox", "checkpoints", "state")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()


class ServerSection(Section):
    """The REST control plane of `traind serve`."""

    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the API binds to; keep 127.0.0.1 unless a proxy guards it.",
    )
    port: int = Field(8321, ge=1, le=65535, description="TCP port of the API.")
    # repr=False: a token must not end up in logs that print the settings.
    token: str | None = Field(
        None,
        min_length=1,
        repr=False,
        examples=["use-a-long-random-secret-of-32-characters"],
        description="Bearer token the mutating API routes require (unset by default).",
    )


class LedgerSection(Section):
    """The job ledger: a SQLite file in the state folder unless a database URL is given."""

    url: str | None = Field(
        None,
        min_length=1,
        examples=["postgresql+psycopg://traind@localhost/traind"],
        description="SQLAlchemy database URL; unset means sqlite in <paths.state>/ledger.db.",
    )
    lease_s: float = Field(
        60.0,
        gt=0,
        description="Seconds a worker's claim on a file lasts without renewal before the "
        "reaper returns the file to the queue.",
    )
    busy_timeout_ms: int = Field(
        10_000, ge=0, description="How long SQLite waits on a locked database before failing."
    )


class WatcherSection(Section):
    """How the inbox is watched."""

    polling: bool = Field(
        False,
        description="Poll the inbox instead of inotify (for network and container mounts, "
        "where inotify events do not arrive).",
    )
    settle_s: float = Field(
        2.0,
        ge=0,
        description="A file written in place is taken once closed and unchanged this long.",
    )
    rescan_interval_s: float = Field(
        30.0, gt=0, description="Seconds between full rescans that catch missed events."
    )
    max_file_bytes: int = Field(
        16 * 2**30, ge=1, description="Larger drops are rejected (bytes on disk)."
    )
    max_line_bytes: int = Field(
        8 * 2**20, ge=1, description="A longer line makes the drop invalid (bytes)."
    )


class WorkerSection(Section):
    """The training worker process that `traind serve` supervises."""

    restart_backoff_s: float = Field(
        1.0, gt=0, description="First wait before restarting a worker that died; doubles."
    )
    restart_backoff_max_s: float = Field(
        60.0, gt=0, description="Longest wait between worker restarts."
    )
    stop_grace_s: float = Field(
        120.0,
        gt=0,
        description="On shutdown, how long the worker may take to checkpoint before it is "
        "killed; set above your slowest checkpoint write.",
    )
    heartbeat_s: float = Field(
        1.0, gt=0, description="Seconds between the worker's progress reports to the ledger."
    )
    poll_s: float = Field(
        0.5, gt=0, description="How often an idle or paused worker looks at the ledger."
    )
    max_attempts: int = Field(
        3,
        ge=1,
        description="A file whose training crashed the worker this many times is marked "
        "failed (with the error) instead of being retried forever; clean stops, restarts "
        "and slow steps never count.",
    )
    hang_timeout_s: float = Field(
        300.0,
        gt=0,
        description="A worker whose heartbeat stops this long (longer than any step, "
        "evaluation, checkpoint or tokenization takes) is reported hung, killed and "
        "replaced; the hang counts as a crash of the file it was training.",
    )
    disk_retry_s: float = Field(
        10.0,
        gt=0,
        description="While a disk is full, the worker tries the failed write again this often "
        "(it waits, reporting the error; nothing counts against the file).",
    )


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
        path = _existing_file(value, what="model.new_tokens:")
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
                raise ValueError(f"tokenizer folder {path} holds no tokenizer.json")
            return str(path)
        return str(
            _existing_file(value, what='tokenizer (use "bytes", a tokenizer.json or its folder):')
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
                checked[key] = TypeAdapter(_ARCH_TYPES[key]).validate_python(raw)
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


class TrainSection(
    section_of(
        TrainConfig,
        limits={
            "micro_batch_size": {"ge": 1},
            "grad_accum_steps": {"ge": 1},
            "epochs_per_file": {"gt": 0},
            "learning_rate": {"gt": 0},
            "min_lr_ratio": {"ge": 0, "le": 1},
            "lr_decay_steps": {"ge": 1},
            "warmup_steps": {"ge": 0},
            "weight_decay": {"ge": 0},
            "beta1": {"ge": 0, "lt": 1},
            "beta2": {"ge": 0, "lt": 1},
            "grad_clip": {"ge": 0},
            "seed": {"ge": 0},
            "checkpoint_interval": {"ge": 1},
            "keep_checkpoints": {"ge": 1},
            "log_interval": {"ge": 1},
            "nan_skip_limit": {"ge": 1},
            "nan_window": {"ge": 1},
            "shard_size_mb": {"gt": 0},
            "cuda_memory_fraction": {"gt": 0, "le": 1, "examples": [0.9]},
        },
    )
):
    """Training hyper-parameters (recorded with every checkpoint)."""

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not DEVICE_PATTERN.fullmatch(value):
            raise ValueError(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N")
        return value


class EvalSection(Section):
    """Evaluation: validation loss, named eval sets and sample prompts."""

    interval: int = Field(500, ge=1, description="Evaluate every this many global steps.")
    iters: int = Field(20, ge=1, description="Batches per evaluation.")
    sets: dict[str, Path] = Field(
        default_factory=dict,
        description='Named eval sets, name = "path/to/set.jsonl"; each set\'s loss is tracked.',
    )
    holdout_fraction: float = Field(
        0.0, ge=0, le=0.5, description="Fraction of each drop held out for validation (0 to 0.5)."
    )
    prompts: list[str] = Field(
        default_factory=list, description="Prompts sampled at each evaluation to eyeball progress."
    )
    gold_set: str = Field(
        "",
        description="Set whose loss is the validation loss that decides gold: a name in sets, or "
        '"recent" (the held-out part of recent drops); empty: "recent" with a holdout, else '
        "the first named set.",
    )
    recent_files: int = Field(
        5, ge=1, description='The "recent" set holds the held-out part of this many latest drops.'
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Sequences per evaluation batch (default: train.micro_batch_size).",
        examples=[16],
    )
    sample_tokens: int = Field(48, ge=1, le=4096, description="Tokens generated per prompt.")
    tensorboard: bool = Field(
        False,
        description="Write TensorBoard scalars (train/loss, val/<set>, lr, tokens_per_sec) to "
        "<paths.state>/tensorboard; needs pip install 'traind[tensorboard]'.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> EvalSection:
        if "recent" in self.sets:
            raise ValueError('"recent" is the name of the held-out set; give your set another name')
        if self.gold_set and self.gold_set != "recent" and self.gold_set not in self.sets:
            raise ValueError(
                f"gold_set {self.gold_set!r} is not one of the named sets "
                f'({", ".join(self.sets) or "none"}) nor "recent"'
            )
        if self.gold_set == "recent" and self.holdout_fraction == 0:
            raise ValueError('gold_set "recent" needs holdout_fraction above 0')
        return self

    @field_validator("sets")
    @classmethod
    def _existing_sets(cls, value: dict[str, Path]) -> dict[str, Path]:
        for name in value:
            if not name.strip():
                raise ValueError("an eval set needs a non-empty name")
        return {
            name: _existing_file(path, what=f"eval set {name!r}:") for name, path in value.items()
        }


class GoldSection(
    section_of(
        GoldConfig,
        limits={
            "overfit_ratio": {"gt": 0},
            "consecutive_rises": {"ge": 1},
            "regression_threshold": {"ge": 0},
        },
    )
):
    """Guards on promoting the best checkpoint to gold."""


class ExportSection(section_of(ExportConfig, limits={})):
    """The half-precision copy for inference in checkpoints/export."""


def suggest(key: str, known: typing.Sequence[str] = OVERRIDABLE_ARCH_FIELDS) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return "known keys: " + ", ".join(known) if known else "no keys allowed here"
