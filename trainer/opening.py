"""Opening a lineage for training: the lock, recovery, rollbacks to gold, the memory check.

:func:`hold_lineage` takes the lineage lock, clears what an interrupted write left,
finishes an interrupted rollback to gold (or does a requested one) and resumes or starts
the lineage (never a silent new one: ARCHITECTURE.md rule 15). It returns what the
:class:`trainer.loop.Trainer` is built from; the Trainer then records the start.

One trainer per lineage: :class:`LineageLock` is an exclusive ``flock`` on
``checkpoints/.lock``, held for the life of a Trainer. Two processes training the same
checkpoints folder (an orphaned worker and its replacement, or ``traind train`` run by
hand beside the daemon) would interleave checkpoints of diverging states. The kernel
drops the lock when its holder dies, even by SIGKILL, so a crash never leaves a stale
lock behind.
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.adaptation import trainable_count
from trainer.checkpoint import recover_root
from trainer.config import LineageSpec, RunPaths, TrainConfig
from trainer.distributed import DistConfig, Group, device_for_rank, join_group
from trainer.lineage import (
    Lineage,
    LineageError,
    LostCheckpointsError,
    open_lineage,
    resolve_device,
)
from trainer.memory import MemoryEstimate, estimate_training_memory
from trainer.records.checkpoints import GOLD_DIR
from trainer.records.events import EventLog
from trainer.records.state import TrainingState
from trainer.rollback import Rollback, interrupted_rollback, roll_back_to_gold

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class HeldLineage:
    """An opened lineage, held under its lock: what a Trainer is built from."""

    lineage: Lineage
    """The model, optimizer, tokenizer and training state."""
    lock: LineageLock
    """The lineage lock, held; whoever takes this releases it."""
    events: EventLog
    """The event log to write to."""
    device: torch.device
    """Where the model lives."""
    rollback: Rollback | None
    """The rollback to gold done while opening (finished or requested), if any."""
    group: Group
    """This process's place in a torchrun group (rank 0 of 1 when run alone)."""
    configs: tuple | None = None
    """On a rank other than 0: rank 0's (spec, train, evaluation, gold, export) to use."""


@dataclass(frozen=True, kw_only=True)
class OpenRequest:
    """How to open the lineage (the arguments of ``Trainer.open``)."""

    spec: LineageSpec
    """The model the settings ask for."""
    train: TrainConfig
    """Training settings (device, seed, batch, what to do about lost checkpoints)."""
    paths: RunPaths
    """Where the checkpoints and the event log are."""
    events: EventLog | None = None
    """The event log to write to (default: the one under ``paths``)."""
    lock_wait_s: float = 0.0
    """How long to wait for another process to let go of the lineage."""
    init_from: Path | None = None
    """Start a new lineage from this checkpoint's weights."""
    from_gold: bool = False
    """Roll the lineage back to gold first."""
    rollback_request: str | None = None
    """The time (ISO) of the operator's rollback request served."""
    in_progress: dict[str, Any] | None = None
    """The file being trained when the rollback was asked (``name``, ``sha256``)."""
    new_lineage: bool = False
    """Start a new lineage on purpose, moving the old one's folders aside."""
    expected_lineage: str | None = None
    """Why a lineage must exist (e.g. the ledger records trained files), if one must."""
    distributed: DistConfig | None = None
    """How a torchrun group trains (None: the defaults; alone, nothing to do)."""


def hold_lineage(request: OpenRequest) -> HeldLineage:
    """Lock, recover and open the lineage under ``request.paths.checkpoints``.

    A rollback a crash interrupted is finished first, whatever is asked. The lock is
    released again if opening fails.
    """
    device = prepare_device(request.train)
    group = join_group(request.distributed or DistConfig(), device_type=device.type)
    device = device_for_rank(device, group)
    if not group.leader:
        return follow_lineage(request, group=group, device=device)
    root = request.paths.checkpoints
    lock = LineageLock(root)
    lock.acquire(wait_s=request.lock_wait_s)
    try:
        recover_root(root)
        events = request.events or EventLog(request.paths.events)
        rollback = interrupted_rollback(root)
        if rollback is None and request.from_gold:
            rollback = roll_back_to_gold(
                root, request=request.rollback_request, in_progress=request.in_progress
            )
        lineage, rollback = _open_or_continue_from_gold(
            root, request=request, device=device, rollback=rollback
        )
    except BaseException:
        lock.release()
        raise
    return HeldLineage(
        lineage=lineage, lock=lock, events=events, device=device, rollback=rollback, group=group
    )


def follow_lineage(request: OpenRequest, *, group: Group, device: torch.device) -> HeldLineage:
    """A rank other than 0: wait for rank 0's lineage, open the same checkpoint and take
    rank 0's training state. It takes no lock and writes nothing (rank 0 does both)."""
    op, args = group.channel.receive()
    if op != "open":
        raise FollowerExit(op)
    resumed = Path(args["resumed_from"]) if args["resumed_from"] else None
    init_from = Path(args["init_from"]) if args["init_from"] else None
    configs = unpack(args["configs"])
    lineage = open_lineage(
        request.paths.checkpoints,
        spec=configs[0],
        train=configs[1],
        device=device,
        init_from=None if resumed else init_from,
        resume=resumed,
    )
    lineage.state = TrainingState.from_dict(args["state"])
    lineage.retired, lineage.notices, lineage.announcements = None, [], []
    return HeldLineage(
        lineage=lineage,
        lock=LineageLock(None),
        events=EventLog(request.paths.events, enabled=False),
        device=device,
        rollback=_built(args["rollback"]) if args["rollback"] is not None else None,
        group=group,
        configs=configs,
    )


def announce_open(held: HeldLineage, *, init_from: Path | None, configs: tuple) -> None:
    """Rank 0 tells the others to open what it left (after its recovery, rollback or new
    start) with its settings, and to take its training state: every rank then holds the
    same lineage, whatever settings file each process read."""
    lineage = held.lineage
    held.group.announce(
        "open",
        resumed_from=str(lineage.resumed_from) if lineage.resumed_from else None,
        init_from=str(init_from) if init_from else None,
        state=lineage.state.to_dict(),
        configs=[plain(config) for config in configs],
        # A rollback to gold opening did: the others commit it with rank 0 (its parking,
        # its checkpoint), and rank 0 alone touches the folders.
        rollback=plain(held.rollback) if held.rollback is not None else None,
    )


def plain(value: Any) -> Any:
    """A settings dataclass as JSON values, tagged so :func:`unpack` builds it again."""
    if dataclasses.is_dataclass(value):
        fields = {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__class__": f"{type(value).__module__}:{type(value).__qualname__}", **fields}
    if isinstance(value, Path):
        return {"__path__": str(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [plain(item) for item in value]}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def unpack(values: list) -> tuple:
    """Rank 0's settings, as :func:`announce_open` sent them."""
    return tuple(_built(value) for value in values)


def _built(value: Any) -> Any:
    if isinstance(value, list):
        return [_built(item) for item in value]
    if not isinstance(value, dict):
        return value
    if "__path__" in value:
        return Path(value["__path__"])
    if "__tuple__" in value:
        return tuple(_built(item) for item in value["__tuple__"])
    if "__class__" in value:
        module, _, name = value["__class__"].partition(":")
        if not module.startswith("trainer."):
            raise ValueError(f"rank 0 sent settings of an unknown kind: {value['__class__']}")
        kind = getattr(importlib.import_module(module), name)
        fields = {k: _built(v) for k, v in value.items() if k != "__class__"}
        return kind(**fields)
    return {key: _built(item) for key, item in value.items()}


class FollowerExit(Exception):  # noqa: N818 - not an error: rank 0 said to stop
    """Rank 0 sent ``exit`` (or another decision) where a follower waited to open."""


def prepare_device(train: TrainConfig) -> torch.device:
    """The device of ``train.device``, with the CUDA memory cap and TF32 set (rule 7)."""
    device = resolve_device(train.device)
    if device.type == "cuda":
        if train.cuda_memory_fraction is not None:
            torch.cuda.set_per_process_memory_fraction(train.cuda_memory_fraction, device)
        torch.backends.cuda.matmul.allow_tf32 = True
    return device


def _open_or_continue_from_gold(
    root: Path, *, request: OpenRequest, device: torch.device, rollback: Rollback | None
) -> tuple[Lineage, Rollback | None]:
    """Open the lineage; where no step checkpoint is left, continue from gold if the
    settings say so (``train.on_lost_checkpoints = "gold"``)."""
    train = request.train
    options = dict(
        spec=request.spec,
        train=train,
        device=device,
        init_from=request.init_from,
        new_lineage=request.new_lineage,
        expected=request.expected_lineage,
    )
    try:
        return open_lineage(root, **options), rollback
    except LostCheckpointsError:
        if train.on_lost_checkpoints != "gold" or not (root / GOLD_DIR).is_dir():
            raise
    log.warning(
        "no usable step checkpoint in %s; continuing the lineage from gold "
        '(train.on_lost_checkpoints = "gold")',
        root,
    )
    rollback = roll_back_to_gold(root)
    return open_lineage(root, **options), rollback


def check_memory(
    lineage: Lineage,
    *,
    train: TrainConfig,
    device: torch.device,
    half_precision: bool,
    shards: int = 1,
) -> MemoryEstimate:
    """Log the training-memory plan from the model's own config. On CUDA, refuse a
    configuration that cannot fit under the cap even at micro-batch 1 (MemoryPlanError
    with the table), and warn when only the micro-batch is too big (OOM recovery halves
    it). ``shards``: the processes an FSDP group splits weights, gradients and optimizer
    state over (each holds about one share)."""
    micro_batch = lineage.state.micro_batch_size
    options = dict(
        n_params=-(-lineage.model.num_params() // shards),
        n_trainable=-(-trainable_count(lineage.model) // shards),
        activation_bytes=2 if half_precision else 4,
        activation_checkpointing=train.activation_checkpointing,
    )
    estimate = estimate_training_memory(lineage.model_config, micro_batch=micro_batch, **options)
    log.info("memory estimate at micro-batch %d: %s", micro_batch, estimate.describe())
    if device.type != "cuda":
        return estimate
    total = torch.cuda.get_device_properties(device).total_memory
    cap = total * (train.cuda_memory_fraction or 1.0)
    smallest = estimate_training_memory(lineage.model_config, micro_batch=1, **options)
    if smallest.total > cap:
        advice = (
            "" if train.activation_checkpointing else "set train.activation_checkpointing = true, "
        )
        raise MemoryPlanError(
            f"training this model needs ~{smallest.total / 2**30:.2f} GiB even at micro-batch "
            f"1, more than the {cap / 2**30:.2f} GiB this process may use on {device}:\n"
            f"{smallest.table()}\n{advice}use a smaller model or block_size, or a bigger "
            "device (or raise train.cuda_memory_fraction)"
        )
    if estimate.total > cap:
        log.warning(
            "the estimate exceeds the %.1f GiB this process may use; expect OOM recovery "
            "to shrink the micro-batch, or lower train.micro_batch_size:\n%s",
            cap / 2**30,
            estimate.table(),
        )
    return estimate


class MemoryPlanError(LineageError):
    """The model cannot be trained on this device, whatever the micro-batch."""


class LineageLockedError(RuntimeError):
    """Another process holds the lineage."""


class LineageLock:
    """Held for the life of a Trainer (by rank 0 alone in a torchrun group: ``None``)."""

    def __init__(self, checkpoints: Path | None) -> None:
        self.path = checkpoints / ".lock" if checkpoints is not None else None
        self._fd: int | None = None

    def acquire(self, *, wait_s: float = 0.0) -> None:
        """Take the lock, waiting up to ``wait_s`` seconds; LineageLockedError names the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise LineageLockedError(
                        f"another traind process (pid {holder}) is training the lineage in "
                        f"{self.path.parent}; stop it first, or point paths.checkpoints elsewhere"
                    ) from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
