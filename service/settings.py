"""Settings of traind: ``traind.toml``, overridable by ``TRAIND_<SECTION>__<KEY>`` variables.

Sources, highest priority first: keyword arguments of :func:`load_settings`, environment
variables (e.g. ``TRAIND_TRAIN__LEARNING_RATE=1e-3``), the TOML file (the explicit path,
else ``$TRAIND_CONFIG``, else ``./traind.toml`` if present), then the defaults below.

Relative paths written in the TOML file (and the default folders, when a file is used)
resolve against the file's folder, so a folder made by ``traind init`` is self-contained;
relative paths from the environment or keyword arguments resolve against the working
directory, like any other command-line path.

The trainer never sees this module's pydantic models: it gets the plain dataclasses of
:meth:`Settings.train_config`, :meth:`Settings.lineage_spec` and :meth:`Settings.run_paths`.

Try it: ``python -c "from service.settings import load_settings; print(load_settings())"``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError

# Only the pure-dataclass config module: the settings must stay importable without torch.
from trainer.config import (
    LineageSpec,
    LrSchedule,
    ModelConfig,
    Precision,
    RunPaths,
    TrainConfig,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_NAME",
    "ENV_PREFIX",
    "EvalSection",
    "GoldSection",
    "ModelSection",
    "PathsSection",
    "ServerSection",
    "Settings",
    "SettingsError",
    "TrainSection",
    "load_settings",
]

ENV_PREFIX = "TRAIND_"
ENV_DELIMITER = "__"
CONFIG_ENV = "TRAIND_CONFIG"
DEFAULT_CONFIG_NAME = "traind.toml"
BYTES_TOKENIZER = "bytes"

# Architecture fields a user may override on top of a preset; dropout has its own key.
_ARCH_TYPES = typing.get_type_hints(ModelConfig)
OVERRIDABLE_ARCH_FIELDS = tuple(
    f.name for f in dataclasses.fields(ModelConfig) if f.name != "dropout"
)
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


class SettingsError(ValueError):
    """Settings failed to load. One line per problem: ``source: section.key: reason``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


def _existing_file(value: str | Path, *, what: str) -> Path:
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist or is not a file")
    return path


class _Section(BaseModel):
    # forbid: a typo in traind.toml must fail loudly, not silently keep the default.
    # validate_default: defaults go through the same path resolution as given values.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class PathsSection(_Section):
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


class ServerSection(_Section):
    """The REST control plane of `traind serve` (planned)."""

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
        examples=["change-me"],
        description="Bearer token the mutating API routes require (unset by default).",
    )


class ModelSection(_Section):
    """The model a new lineage starts from."""

    source: str = Field(
        "builtin", description="Where the model comes from: builtin (traind's own transformer)."
    )
    preset: str = Field(
        "tiny", min_length=1, description="Architecture preset of the builtin model."
    )
    tokenizer: str = Field(
        BYTES_TOKENIZER,
        min_length=1,
        description='"bytes" (byte-level) or the path of a Hugging Face tokenizer.json.',
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

    @field_validator("source")
    @classmethod
    def _builtin_only(cls, value: str) -> str:
        if value != "builtin":
            raise ValueError(
                f"{value!r} is not supported: only 'builtin' is supported in this version"
            )
        return value

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_file(cls, value: str) -> str:
        if value == BYTES_TOKENIZER:
            return value
        return str(_existing_file(value, what='tokenizer (use "bytes" or a tokenizer.json):'))

    @field_validator("overrides")
    @classmethod
    def _architecture_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        checked: dict[str, Any] = {}
        for key, raw in value.items():
            if key == "dropout":
                raise ValueError("set dropout with model.dropout, not in model.overrides")
            if key not in OVERRIDABLE_ARCH_FIELDS:
                raise ValueError(f"{key!r} is not an architecture field ({_suggest(key)})")
            # Typed per field, so a string from an environment variable becomes an int.
            try:
                checked[key] = TypeAdapter(_ARCH_TYPES[key]).validate_python(raw)
            except ValidationError as exc:
                raise ValueError(f"{key}: {exc.errors()[0]['msg']}") from None
        return checked


class TrainSection(_Section):
    """Training hyper-parameters (recorded with every checkpoint)."""

    # Mirrors trainer.config.TrainConfig field for field, same defaults (a test keeps them in
    # sync); the bounds here are the dataclass's checks plus the ones the trainer assumes.

    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward/backward pass.")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    epochs_per_file: float = Field(
        1.0, gt=0, description="Passes over each file; sets its budget of optimizer steps."
    )
    learning_rate: float = Field(
        3e-4, gt=0, description="Peak learning rate, reached after warm-up."
    )
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="Floor of the cosine schedule, as a fraction of learning_rate."
    )
    lr_schedule: LrSchedule = Field(
        "constant",
        description="Shape after warm-up: constant (endless training), cosine or inverse_sqrt.",
    )
    lr_decay_steps: int = Field(
        100_000, ge=1, description="Length of the cosine decay, in global steps after warm-up."
    )
    warmup_steps: int = Field(
        100, ge=0, description="Linear warm-up in global steps (once per lineage, not per file)."
    )
    weight_decay: float = Field(
        0.1, ge=0, description="AdamW decoupled weight decay (matrices only, not norms or biases)."
    )
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW first-moment decay.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW second-moment decay.")
    grad_clip: float = Field(
        1.0, ge=0, description="Clip the global gradient norm to this (0 disables clipping)."
    )
    seed: int = Field(
        1337, ge=0, description="Seed of the lineage: data order, dropout and initialisation."
    )
    checkpoint_interval: int = Field(
        500,
        ge=1,
        description="Save every this many global steps (and always at the end of a file).",
    )
    keep_checkpoints: int = Field(
        3, ge=1, description="Newest step-* checkpoints kept; gold and export are never rotated."
    )
    device: str = Field("auto", description="auto (CUDA if present), cpu, cuda or cuda:N.")
    precision: Precision = Field(
        "auto", description="auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16."
    )
    log_interval: int = Field(10, ge=1, description="Console progress line every this many steps.")
    nan_skip_limit: int = Field(
        3, ge=1, description="Non-finite steps within nan_window steps that trigger a rollback."
    )
    nan_window: int = Field(
        100, ge=1, description="Window, in global steps, over which non-finite skips are counted."
    )
    cuda_memory_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        examples=[0.9],
        description="Cap on the worker's share of GPU memory, in (0, 1] (unset: no cap).",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N")
        return value


class EvalSection(_Section):
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

    @field_validator("sets")
    @classmethod
    def _existing_sets(cls, value: dict[str, Path]) -> dict[str, Path]:
        for name in value:
            if not name.strip():
                raise ValueError("an eval set needs a non-empty name")
        return {
            name: _existing_file(path, what=f"eval set {name!r}:") for name, path in value.items()
        }


class GoldSection(_Section):
    """Guards on promoting the best checkpoint to gold."""

    overfit_ratio: float = Field(
        5.0, gt=0, description="No gold while validation loss / training loss is at or above this."
    )
    consecutive_rises: int = Field(
        2, ge=1, description="No gold right after validation loss rose this many evals in a row."
    )
    regression_threshold: float = Field(
        0.2, ge=0, description="No gold if a named eval set got worse by more than this fraction."
    )


# How load_settings hands the file it read to the TOML source below: the source is built by
# pydantic-settings from the class, so per-call data cannot be passed as an argument.
@dataclasses.dataclass(frozen=True)
class _Loading:
    data: dict[str, Any]
    file: Path | None


_LOADING: ContextVar[_Loading | None] = ContextVar("traind_settings_loading", default=None)


class _TomlSource(PydanticBaseSettingsSource):
    """The TOML file read by :func:`load_settings`, with its paths already anchored."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Unused: __call__ returns the whole document at once.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        loading = _LOADING.get()
        return loading.data if loading else {}


class Settings(BaseSettings):
    """All of traind's settings, one attribute per ``traind.toml`` section."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        case_sensitive=False,
        extra="forbid",
        frozen=True,
    )

    paths: PathsSection = Field(default_factory=PathsSection)
    server: ServerSection = Field(default_factory=ServerSection)
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    gold: GoldSection = Field(default_factory=GoldSection)

    _config_file: Path | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env or secrets dir: the TOML file and the environment are the documented sources.
        return init_settings, env_settings, _TomlSource(settings_cls)

    def model_post_init(self, context: Any, /) -> None:
        loading = _LOADING.get()
        self._config_file = loading.file if loading else None

    @property
    def config_file(self) -> Path | None:
        """The TOML file these settings were read from (absolute), or None."""
        return self._config_file

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.train.model_dump())

    def lineage_spec(self) -> LineageSpec:
        return LineageSpec(
            preset=self.model.preset,
            tokenizer=self.model.tokenizer,
            dropout=self.model.dropout,
            overrides=dict(self.model.overrides),
        )

    def run_paths(self) -> RunPaths:
        return RunPaths(checkpoints=self.paths.checkpoints, state=self.paths.state)


def load_settings(config: Path | str | None = None, **overrides: Any) -> Settings:
    """Load and validate the settings; raise :class:`SettingsError` naming every bad key.

    ``config`` is the TOML file (default: ``$TRAIND_CONFIG``, else ``./traind.toml`` if it
    exists, else none). ``overrides`` are whole or partial sections, e.g.
    ``load_settings(train={"learning_rate": 1e-3})``, and win over every other source.
    """
    path, shown = _find_config(config)
    raw = _read_toml(path, shown=shown) if path else {}
    data = _anchor_paths(raw, base=path.parent) if path else {}
    token = _LOADING.set(_Loading(data=data, file=path))
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = [
            _describe(error, raw=raw, shown=shown, overrides=overrides) for error in exc.errors()
        ]
        raise SettingsError(problems) from exc
    except _SourceError as exc:
        # pydantic-settings' own error: an environment variable that is not valid JSON.
        raise SettingsError([f"environment: {exc}"]) from exc
    finally:
        _LOADING.reset(token)


def _find_config(config: Path | str | None) -> tuple[Path | None, str | None]:
    """The config file to read (absolute) and how to name it in messages."""
    if config is not None:
        shown, origin = str(config), ""
    elif os.environ.get(CONFIG_ENV):
        shown, origin = os.environ[CONFIG_ENV], f" (named by {CONFIG_ENV})"
    elif Path(DEFAULT_CONFIG_NAME).is_file():
        shown, origin = DEFAULT_CONFIG_NAME, ""
    else:
        return None, None
    path = Path(shown).expanduser()
    if not path.is_file():
        raise SettingsError([f"{shown}: config file not found{origin}"])
    return path.resolve(), shown


def _read_toml(path: Path, *, shown: str | None) -> dict[str, Any]:
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError([f"{shown}: not valid TOML: {exc}"]) from exc
    except OSError as exc:
        raise SettingsError([f"{shown}: cannot read: {exc}"]) from exc


def _anchor_paths(raw: dict[str, Any], *, base: Path) -> dict[str, Any]:
    """A copy of the TOML document with its relative paths (and default folders) under base.

    Values of the wrong type are left alone for validation to report.
    """

    def anchor(value: Any) -> Any:
        return str(base / Path(value).expanduser()) if isinstance(value, str) else value

    data = {key: dict(value) if isinstance(value, dict) else value for key, value in raw.items()}
    paths = data.setdefault("paths", {})
    if isinstance(paths, dict):
        for key, field in PathsSection.model_fields.items():
            paths[key] = anchor(paths.get(key, str(field.default)))
    model = data.get("model")
    if isinstance(model, dict) and model.get("tokenizer", BYTES_TOKENIZER) != BYTES_TOKENIZER:
        model["tokenizer"] = anchor(model["tokenizer"])
    evals = data.get("eval")
    if isinstance(evals, dict) and isinstance(evals.get("sets"), dict):
        evals["sets"] = {name: anchor(value) for name, value in evals["sets"].items()}
    return data


def _describe(
    error: Mapping[str, Any], *, raw: dict[str, Any], shown: str | None, overrides: dict[str, Any]
) -> str:
    """One line ``source: section.key: reason`` for a pydantic error."""
    loc = tuple(error["loc"])
    key = ".".join(str(part) for part in loc) or "settings"
    if error["type"] == "extra_forbidden":
        reason = f"unknown key ({_suggest(str(loc[-1]), _known_keys(loc[:-1]))})"
    else:
        reason = str(error["msg"]).removeprefix("Value error, ")
    return f"{_origin(loc, raw=raw, shown=shown, overrides=overrides)}: {key}: {reason}"


def _origin(
    loc: tuple[Any, ...], *, raw: dict[str, Any], shown: str | None, overrides: dict[str, Any]
) -> str:
    """Which source gave the value at loc, following the sources' priority."""
    if _provides(overrides, loc):
        return "load_settings() argument"
    for name in os.environ:
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = tuple(name[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER))
        # TRAIND_TRAIN (a JSON table), TRAIND_TRAIN__SEED, TRAIND_MODEL__OVERRIDES__N_HEAD
        common = min(len(parts), len(loc))
        if common and parts[:common] == tuple(str(p).lower() for p in loc[:common]):
            return f"environment {name}"
    if shown is not None:
        return shown
    return "defaults"


def _provides(data: Any, loc: tuple[Any, ...]) -> bool:
    """Whether a source's raw data holds a value at loc (or a scalar above it)."""
    if not loc:
        return bool(data)
    node = data
    for part in loc:
        if isinstance(node, Mapping):
            if part not in node:
                return False
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int):
            if part >= len(node):
                return False
            node = node[part]
        else:
            return True
    return True


def _known_keys(parent: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Settings
    for part in parent:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _suggest(key: str, known: typing.Sequence[str] = OVERRIDABLE_ARCH_FIELDS) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return "known keys: " + ", ".join(known) if known else "no keys allowed here"
