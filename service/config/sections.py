"""The sections of ``traind.toml``: one pydantic model per ``[section]``.

Each field's description is the comment ``traind init`` writes above the key, so the
template cannot drift from what is validated. The sections that are one of the trainer's
config dataclasses (``[train]``, ``[gold]``, ``[export]``) take their fields from it
(:func:`section_of`): the dataclass is the one definition, this adds the bounds.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
import typing
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from service.config.fields import Section, section_of
from trainer.config import (
    MAX_REPLAY_FRACTION,
    EvalConfig,
    ExportConfig,
    GoldConfig,
    ModelConfig,
    TrainConfig,
)

log = logging.getLogger(__name__)

BYTES_TOKENIZER = "bytes"

# Architecture fields a user may override on top of a preset; dropout has its own key.
ARCH_TYPES = typing.get_type_hints(ModelConfig)
"""Each architecture field's type, for validating an override."""
OVERRIDABLE_ARCH_FIELDS = tuple(
    f.name for f in dataclasses.fields(ModelConfig) if f.name != "dropout"
)
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
"""The devices a setting or an option may name (``fullmatch``)."""


def rendezvous_address(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6 address]:port`` too) split; ValueError saying what is wrong."""
    host, colon, port = value.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(
            f"{value!r} is not host:port (node 0's address and a port from 1 to 65535, "
            'e.g. "10.0.0.1:29500")'
        )
    return host, int(port)


def existing_file(value: str | Path, *, what: str) -> Path:
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
        0.5,
        gt=0,
        description="How often an idle or paused worker looks at the ledger (and a training "
        "one for requests, at step boundaries); traind serve also wakes an idle or paused "
        "worker at once when a file is queued or a request comes.",
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
    # Launching a torchrun group (docs/deploy.md, "Several GPUs and machines").
    nproc_per_node: int = Field(
        1,
        ge=1,
        description="Training processes on this machine, one per GPU; above 1 (or with "
        "nnodes above 1) the worker runs as a torchrun group.",
    )
    nnodes: int = Field(
        1,
        ge=1,
        description="Machines in the group: node 0 runs traind serve, the others traind node.",
    )
    node_rank: int = Field(
        0,
        ge=0,
        description="This machine's place in the group, 0 to nnodes - 1 (0: the one that runs "
        "traind serve); set it per machine, e.g. TRAIND_WORKER__NODE_RANK=1.",
    )
    rdzv_endpoint: str | None = Field(
        None,
        min_length=1,
        examples=["10.0.0.1:29500"],
        description='With nnodes above 1: "host:port" of node 0, which the other nodes '
        "reach and where node 0 listens (torchrun's rendezvous).",
    )
    strategy: typing.Literal["auto", "ddp", "fsdp"] = Field(
        "auto",
        description='How a group shares the model: "ddp" (each process holds all of it), '
        '"fsdp" (sharded), "auto" (fsdp when the model and its optimizer do not fit one '
        "device).",
    )
    collective_timeout_s: float = Field(
        240.0,
        gt=0,
        description="A process of the group that waits this long for the others (a hung "
        "process) fails the group, which is reported and restarted; longer than any "
        "evaluation or checkpoint one process does alone, and below worker.hang_timeout_s "
        "so that the collective's error, not the supervisor's hang check, tells what "
        "happened.",
    )

    @field_validator("rdzv_endpoint")
    @classmethod
    def _host_and_port(cls, value: str | None) -> str | None:
        if value is not None:
            rendezvous_address(value)
        return value

    @model_validator(mode="after")
    def _one_group(self) -> WorkerSection:
        if self.node_rank >= self.nnodes:
            raise ValueError(
                f"worker.node_rank = {self.node_rank} must be below worker.nnodes = "
                f"{self.nnodes} (machines are numbered 0 to nnodes - 1)"
            )
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError(
                f'worker.nnodes = {self.nnodes} needs worker.rdzv_endpoint = "host:port": '
                "node 0's address as the other machines reach it, and a free port there"
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
            "replay_fraction": {"ge": 0, "le": MAX_REPLAY_FRACTION},
            "replay_recent_weight": {"ge": 0, "lt": 1},
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
    sequences: int | None = Field(
        None,
        ge=1,
        description="Sequences scored per eval set and evaluation (default 160): a fixed, "
        "seeded selection, the same at any batch size, so losses stay comparable.",
        examples=[160],
    )
    iters: int | None = Field(
        None,
        ge=1,
        description="Deprecated, use sequences: batches per evaluation (sequences = iters x "
        "batch_size).",
        json_schema_extra={"deprecated": True},  # traind init leaves it out
    )
    at_file_end: bool = Field(
        True,
        description="Evaluate at the end of every file and before a lineage's first step "
        "(the baseline), besides every interval steps.",
    )
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
    batch_size: int = Field(
        8,
        ge=1,
        description="Sequences per evaluation forward pass: speed and memory only (what is "
        "scored is eval.sequences); lower it when 8 sequences' logits do not fit.",
    )
    sample_tokens: int = Field(48, ge=1, le=4096, description="Tokens generated per prompt.")
    forgetting_drops: int = Field(
        8,
        ge=0,
        description="With a holdout: finished drops whose held-out part each evaluation "
        "scores on its own to report forgetting (the oldest and newest always among them, the "
        "rest spread evenly); 0 turns the report off, 1 is not allowed.",
    )
    forgetting_sequences: int = Field(
        32, ge=1, description="Held-out sequences scored per drop of the forgetting report."
    )
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
        if self.forgetting_drops == 1:
            raise ValueError(
                "eval.forgetting_drops = 1 cannot hold both the oldest and the newest drop: "
                "use 0 (off) or 2 and more"
            )
        if self.iters is not None and self.sequences is not None:
            raise ValueError(
                "set eval.sequences only (eval.iters is its deprecated form: iters x batch_size)"
            )
        if self.iters is not None:
            log.warning(
                "eval.iters is deprecated: it means eval.sequences = %d (iters x batch_size); "
                "write that instead",
                self.iters * self.batch_size,
            )
        return self

    @property
    def sequence_count(self) -> int:
        """Sequences scored per set: ``sequences``, or the deprecated ``iters`` x batch."""
        if self.sequences is not None:
            return self.sequences
        if self.iters is not None:
            return self.iters * self.batch_size
        return EvalConfig.sequences

    @field_validator("sets")
    @classmethod
    def _existing_sets(cls, value: dict[str, Path]) -> dict[str, Path]:
        for name in value:
            if not name.strip():
                raise ValueError("an eval set needs a non-empty name")
        return {
            name: existing_file(path, what=f"eval set {name!r}:") for name, path in value.items()
        }


class GoldSection(
    section_of(
        GoldConfig,
        limits={
            "overfit_ratio": {"gt": 0},
            "consecutive_rises": {"ge": 1},
            "regression_threshold": {"ge": 0},
            "forgetting_threshold": {"gt": 0, "examples": [0.1]},
        },
    )
):
    """Guards on promoting the best checkpoint to gold."""


class ExportSection(section_of(ExportConfig, limits={}, keys={"source": "from"})):
    """The half-precision copy for inference in checkpoints/export."""


def suggest(key: str, known: typing.Sequence[str] = OVERRIDABLE_ARCH_FIELDS) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return "known keys: " + ", ".join(known) if known else "no keys allowed here"
