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

Try it: ``python -c "from service.config.settings import load_settings; print(load_settings())"``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError

from service.config.model_section import ModelSection
from service.config.sections import (
    BYTES_TOKENIZER,
    EvalSection,
    ExportSection,
    GoldSection,
    LedgerSection,
    PathsSection,
    ServerSection,
    TrainSection,
    WatcherSection,
    WorkerSection,
    suggest,
)

# Only torch-free trainer modules (the config dataclasses, the tokens file): the settings
# must stay importable without torch.
from trainer.config import (
    HF_PREFIX,
    EvalConfig,
    ExportConfig,
    GoldConfig,
    LineageSpec,
    RunPaths,
    TrainConfig,
)
from trainer.vocab_file import read_tokens_file

if TYPE_CHECKING:
    from trainer.distributed import DistConfig

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


class SettingsError(ValueError):
    """Settings failed to load. One line per problem: ``source: section.key: reason``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


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
    export: ExportSection = Field(default_factory=ExportSection)
    ledger: LedgerSection = Field(default_factory=LedgerSection)
    watcher: WatcherSection = Field(default_factory=WatcherSection)
    worker: WorkerSection = Field(default_factory=WorkerSection)

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

    @model_validator(mode="after")
    def _adapter_only_export(self) -> Settings:
        if self.export.adapter_only and (
            self.model.lora is None or not self.model.source.startswith(HF_PREFIX)
        ):
            raise ValueError(
                "export.adapter_only needs [model.lora] on a Hugging Face model "
                "(model.source = 'hf:<folder>'): only then is there an adapter to load onto a "
                "from_pretrained base; set export.adapter_only = false for merged weights"
            )
        if self.export.adapter_only and self.model.new_tokens is not None:
            raise ValueError(
                "export.adapter_only cannot carry the new token rows of model.new_tokens "
                "(PeftModel loads onto the unextended base); set export.adapter_only = false"
            )
        return self

    @model_validator(mode="after")
    def _gold_export_needs_a_val_loss(self) -> Settings:
        if (
            self.export.enabled
            and self.export.source == "gold"
            and not (self.eval.sets or self.eval.holdout_fraction > 0)
        ):
            raise ValueError(
                'export.from = "gold" needs an evaluation to promote gold: name an eval set '
                "(eval.sets) or hold some of each drop out (eval.holdout_fraction > 0), or set "
                'export.from = "latest"'
            )
        return self

    def model_post_init(self, context: Any, /) -> None:
        loading = _LOADING.get()
        self._config_file = loading.file if loading else None

    @property
    def config_file(self) -> Path | None:
        """The TOML file these settings were read from (absolute), or None."""
        return self._config_file

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.train.model_dump())

    def eval_config(self) -> EvalConfig:
        section = self.eval
        return EvalConfig(
            interval=section.interval,
            sequences=section.sequence_count,
            batch_size=section.batch_size,
            at_file_end=section.at_file_end,
            sets=tuple((name, path) for name, path in section.sets.items()),
            holdout_fraction=section.holdout_fraction,
            recent_files=section.recent_files,
            gold_set=section.gold_set,
            prompts=tuple(section.prompts),
            sample_tokens=section.sample_tokens,
            tensorboard=section.tensorboard,
            forgetting_drops=section.forgetting_drops,
            forgetting_sequences=section.forgetting_sequences,
        )

    def gold_config(self) -> GoldConfig:
        return GoldConfig(**self.gold.model_dump())

    def export_config(self) -> ExportConfig:
        return ExportConfig(**self.export.model_dump())

    def lineage_spec(self) -> LineageSpec:
        return LineageSpec(
            source=self.model.source,
            preset=self.model.preset,
            tokenizer=self.model.tokenizer,
            tokenizer_set="tokenizer" in self.model.model_fields_set,
            dropout=self.model.dropout,
            overrides=dict(self.model.overrides),
            lora=None if self.model.lora is None else self.model.lora.config(),
            new_tokens=tuple(read_tokens_file(self.model.new_tokens))
            if self.model.new_tokens is not None
            else (),
            unfreeze_base_rows_at_step=self.model.unfreeze_base_rows_at_step,
        )

    def run_paths(self) -> RunPaths:
        return RunPaths(checkpoints=self.paths.checkpoints, state=self.paths.state)

    def world_size(self) -> int:
        """Training processes in the worker's group: ``nproc_per_node`` x ``nnodes``."""
        return self.worker.nproc_per_node * self.worker.nnodes

    def dist_config(self) -> DistConfig:
        """How a torchrun group trains: ``worker.strategy`` and ``collective_timeout_s``."""
        # Imported here: trainer.distributed is the process-group module, and the settings
        # must stay importable without torch (the main process and the CLI load them).
        from trainer.distributed import DistConfig

        return DistConfig(strategy=self.worker.strategy, timeout_s=self.worker.collective_timeout_s)

    def database_url(self) -> str:
        """``ledger.url``, or a SQLite file in the state folder."""
        return self.ledger.url or f"sqlite:///{self.paths.state / 'ledger.db'}"


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
    if isinstance(model, dict) and str(model.get("source", "")).startswith(HF_PREFIX):
        model["source"] = HF_PREFIX + anchor(model["source"][len(HF_PREFIX) :])
    if isinstance(model, dict) and "new_tokens" in model:
        model["new_tokens"] = anchor(model["new_tokens"])
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
        reason = f"unknown key ({suggest(str(loc[-1]), _known_keys(loc[:-1]))})"
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
