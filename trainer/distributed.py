"""Training on several processes under torchrun: the process group, and who decides.

Every rank builds the same lineage from the same checkpoint and runs the same training
loop; the data is split by rank from the one deterministic order (``StepRows.shard``), so
the union of the ranks trains each sequence of a step once, and the step budget counts
``world_size`` (ARCHITECTURE.md rule 1). Gradients are averaged by DDP or FSDP2
(``torch.distributed``'s own, never home-made); each rank scales its loss by
``world_size / n_targets`` so the update equals one process's with the same global batch.

Rank 0 alone decides (ARCHITECTURE.md rule 16): it talks to the ledger, the event log and
the heartbeat, and sends every decision (open, train this file, stop, save, export,
evaluate, close) to the other ranks through :class:`Channel` at a step boundary, so every
rank takes the same steps and joins the same collectives (``trainer.follower``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from trainer.lineage import LineageError

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "ddp", "fsdp")


@dataclass(frozen=True, kw_only=True)
class DistConfig:
    """How a torchrun group trains (``[worker]`` settings)."""

    strategy: str = "auto"
    """``ddp`` (every rank holds the whole model), ``fsdp`` (FSDP2 ``fully_shard``), or
    ``auto``: FSDP when the model and its optimizer state do not fit one device."""
    timeout_s: float = 240.0
    """A collective that waits longer than this (a hung rank) fails the group."""


class GroupError(LineageError):
    """This process cannot join the group it is said to be in (a settings problem)."""


class CollectiveTimeoutError(RuntimeError):
    """A rank waited longer than ``worker.collective_timeout_s`` for the others."""


@dataclass(kw_only=True)
class Group:
    """This process's place in the training group (one process: rank 0 of 1)."""

    rank: int = 0
    """This process's rank, 0 to ``world_size - 1``; rank 0 decides."""
    world_size: int = 1
    """How many processes train together."""
    local_rank: int = 0
    """The rank on this machine (which GPU)."""
    timeout_s: float = 240.0
    """How long a rank waits for the others before the group fails."""
    strategy: str = "none"
    """``none`` (one process), ``ddp`` or ``fsdp``, once chosen."""
    channel: Channel | None = field(default=None, repr=False)
    """Rank 0's decisions to the others."""
    background: Any = field(default=None, repr=False)
    """A gloo process group of its own for checkpoints written in the background, so that
    their collectives never interleave with training's."""

    @property
    def leader(self) -> bool:
        """Whether this rank decides and writes (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def sharded(self) -> bool:
        """Whether each rank holds only a shard of the model (FSDP)."""
        return self.strategy == "fsdp"

    def announce(self, op: str, **args: Any) -> None:
        """Rank 0 tells the others what it is about to do (nothing with one process)."""
        if self.distributed and self.leader:
            self.channel.send(op, **args)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over the ranks (itself with one process)."""
        if not self.distributed:
            return value
        total = value.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextlib.contextmanager
    def watched(self) -> Iterator[None]:
        """A collective that timed out (a rank hung or died) becomes a
        :class:`CollectiveTimeoutError` that says so and what to set."""
        try:
            yield
        except RuntimeError as exc:
            if not self.distributed or "timed out" not in str(exc).lower():
                raise
            raise CollectiveTimeoutError(
                f"rank {self.rank} waited more than {self.timeout_s:g}s for the other ranks "
                "(worker.collective_timeout_s): one of them hung or died; the group stops "
                "and starts again from the last committed checkpoint"
            ) from exc


SOLO = Group()
"""The group of a single process."""


@contextlib.contextmanager
def reported_timeout(group: Group, *, events: Any, step: Callable[[], int]) -> Iterator[None]:
    """``group.watched()``, and a timeout said in the log and as a ``collective_timeout``
    event (with the global step ``step()`` then) before it goes on up."""
    try:
        with group.watched():
            yield
    except CollectiveTimeoutError as exc:
        log.error("%s", exc)
        events.emit(
            "collective_timeout",
            step=step(),
            rank=group.rank,
            timeout_s=group.timeout_s,
            reason=str(exc),
        )
        raise


def world_size_from_env() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


_joined: Group | None = None
"""The group this process joined: one per process, kept across reopenings of the
lineage, so rank 0's decisions stay numbered in one sequence."""


def rank_from_env() -> int:
    """``RANK`` as torchrun sets it (0 when run directly)."""
    return int(os.environ.get("RANK", "0"))


def current_group() -> Group:
    """The group this process joined (the one-process group before any)."""
    return _joined or SOLO


def join_group(config: DistConfig, *, device_type: str) -> Group:
    """Join the torchrun group this process was started in (a one-process group when
    ``WORLD_SIZE`` is 1 or unset). NCCL on CUDA, gloo on CPU."""
    global _joined
    world = world_size_from_env()
    if world == 1:
        return Group(timeout_s=config.timeout_s)
    if _joined is not None:
        return _joined
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise GroupError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: this process was not "
            "started by torchrun; run `traind train --nproc-per-node N` (or set "
            "worker.nproc_per_node for traind serve) instead of setting WORLD_SIZE"
        )
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=config.timeout_s))
    rank = dist.get_rank()
    group = Group(
        rank=rank,
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        timeout_s=config.timeout_s,
    )
    group.channel = Channel(group)
    group.background = dist.new_group(backend="gloo")
    log.info("rank %d of %d joined the training group", rank, group.world_size)
    _joined = group
    return group


def leave_group() -> None:
    """At a clean end: rank 0 tells the others to exit, and the group is left (a crash
    leaves it to torchrun)."""
    global _joined
    group = current_group()
    if group.distributed:
        group.announce("exit")
        dist.destroy_process_group()
    _joined = None


class Channel:
    """Rank 0's decisions, in order, through the rendezvous store: a rank waiting for the
    next one (an idle or paused group) holds no collective open, so it never times out;
    it only fails when the store does (rank 0's node is gone)."""

    PREFIX = "traind/decision/"
    KEEP = 64
    """Decisions kept in the store: far more than a rank can fall behind, since every
    step ends in a collective."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self.store = dist.distributed_c10d._get_default_store()
        self.sent = 0
        self.received = 0

    def send(self, op: str, **args: Any) -> None:
        self.sent += 1
        self.store.set(f"{self.PREFIX}{self.sent}", json.dumps({"op": op, "args": args}))
        old = self.sent - self.KEEP
        if old > 0:
            self.store.delete_key(f"{self.PREFIX}{old}")

    def receive(self) -> tuple[str, dict[str, Any]]:
        """The next decision; waits as long as it takes (rank 0 may be idle for days)."""
        self.received += 1
        key = f"{self.PREFIX}{self.received}"
        while True:
            try:
                self.store.wait([key], timedelta(seconds=60))
                break
            except RuntimeError as exc:  # DistStoreError: no decision yet, or store gone
                if "timeout" not in str(exc).lower():
                    raise
        message = json.loads(self.store.get(key))
        return message["op"], message["args"]


def choose_strategy(wanted: str, *, fits_one_device: bool) -> str:
    """``auto``: DDP when the model, its gradients and optimizer state fit one device."""
    if wanted not in STRATEGIES:
        raise ValueError(f"worker.strategy must be one of {', '.join(STRATEGIES)}, not {wanted!r}")
    if wanted == "auto":
        return "ddp" if fits_one_device else "fsdp"
    return wanted


def device_for_rank(device: torch.device, group: Group) -> torch.device:
    """Each rank of a CUDA group on its own GPU (``LOCAL_RANK``)."""
    if device.type == "cuda" and group.distributed:
        chosen = torch.device("cuda", group.local_rank)
        torch.cuda.set_device(chosen)
        return chosen
    return device


def repeated_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks (the children of each ``blocks`` / ``layers`` ModuleList):
    FSDP2's unit of sharding, so one block's weights are gathered at a time."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in (
            "blocks",
            "layers",
            "h",
        ):
            found.extend(module)
    return found


def shard_model(model: torch.nn.Module, *, device: torch.device, half_precision: bool) -> None:
    """FSDP2 ``fully_shard`` on each block and on the whole model, in place; bf16
    parameters with fp32 gradient reduction on CUDA when training in bf16."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    options: dict[str, Any] = {}
    if device.type == "cuda" and half_precision:
        options["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32
        )
    for block in repeated_blocks(model):
        fully_shard(block, **options)
    fully_shard(model, **options)


def replicate_model(model: torch.nn.Module, *, device: torch.device) -> torch.nn.Module:
    """DDP around ``model`` (rank 0's weights are broadcast as it is built)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def full_tensor(value: Any) -> Any:
    """A DTensor gathered whole (a collective: every rank calls it); others unchanged."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        return value.full_tensor()
    return value


def shard_like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``full`` split the way ``param`` (a DTensor) is, for loading saved moments."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        return distribute_tensor(
            full.to(param.device), param.device_mesh, param.placements, src_data_rank=None
        )
    return full
