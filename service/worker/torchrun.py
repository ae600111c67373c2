"""The command lines that start training processes: one worker, or a torchrun group.

torch's own launcher runs a group (``torch.distributed.run``, what the ``torchrun``
script runs), inside traind's agent (:mod:`service.worker.agent`: it dies with whoever
started it, exits with the status of the first process that failed, and is stopped once
and killed whole). Three callers build a launch here: the supervisor of ``traind serve``
for the worker (:func:`worker_launch`; the one plain process of old when ``[worker]``
asks for one), ``traind node`` on the other machines (:func:`node_launch`), and ``traind
train --nproc-per-node N`` for itself (:func:`train_launch`). Torch-free: the main
process and the command line build these before anything imports torch.

What every group launch says, and why:

* ``--max-restarts 0``: traind's supervisor owns restarts (back-off, crash counting).
  When a process of the group dies, the agent stops the others and exits non-zero, and
  the supervisor restarts the whole group, which resumes from the last committed
  checkpoint.
* One machine: ``--standalone``, a private rendezvous on a free local port, so two groups
  on one machine never meet.
* Several: ``--rdzv-backend static --rdzv-endpoint E --node-rank R``. The static
  rendezvous numbers the machines by ``worker.node_rank``, so global rank 0, the only
  process that talks to the ledger, is on node 0 with ``traind serve``; node 0 hosts the
  rendezvous store on E's port, a fresh one for each start of the group. torchrun's
  elastic ``c10d`` rendezvous would ignore ``--node-rank`` and number the machines in its
  own order, and traind needs none of its elasticity: the group's size is fixed and its
  restarts are the supervisor's. (So no ``--rdzv-id`` either: it tells runs apart on one
  long-lived elastic store, and each start of this group has a store of its own.)
* ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` = ``worker.stop_grace_s``: how long the agent lets
  its processes checkpoint after a SIGTERM before it kills them (torch's default is 30
  s; torch releases without ``torchrun --shutdown-timeout`` ignore the variable and keep
  30 s). ``OMP_NUM_THREADS``: this machine's CPUs shared among its processes (torchrun
  would set 1). Either only when the caller's environment does not set it.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from service.config.in_force import in_force_path
from service.config.sections import rendezvous_address
from service.config.settings import Settings
from service.worker.agent import agent_command

WORKER_MODULE = "service.worker"
"""``python -m`` this runs one worker process (:mod:`service.worker.launch`)."""
RELAUNCHED_ENV = "TRAIND_UNDER_TORCHRUN"
"""Set (to 1) in the environment of a ``traind train`` that runs under torchrun because
``--nproc-per-node`` asked for it, so that it does not launch torchrun again."""
SHUTDOWN_TIMEOUT_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
THREADS_ENV = "OMP_NUM_THREADS"


class LaunchError(ValueError):
    """A group that cannot be launched as asked; the message says what to set."""


@dataclass(frozen=True, kw_only=True)
class Group:
    """This machine's share of a torchrun group."""

    nproc_per_node: int = 1
    """Training processes on this machine (one per GPU)."""
    nnodes: int = 1
    """Machines in the group."""
    node_rank: int = 0
    """This machine's number, 0 to ``nnodes - 1``; node 0 holds global rank 0."""
    rdzv_endpoint: str | None = None
    """``host:port`` of node 0's rendezvous store, with several machines."""

    @property
    def world_size(self) -> int:
        """Training processes on all the machines."""
        return self.nproc_per_node * self.nnodes


@dataclass(frozen=True, kw_only=True)
class Launch:
    """A command line to start, and how to start it."""

    argv: tuple[str, ...]
    """The program and its arguments."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Variables to add to the environment (none the caller's environment sets)."""
    group: bool = False
    """Whether it is a torchrun agent. Then only traind may signal it (it runs in a session
    of its own: torch's agent gives up waiting for its processes at a second signal), and
    it is killed with every process below it (each rank runs in a session of its own, so a
    process-group kill would miss them)."""


def group_of(settings: Settings, *, node_rank: int | None = None) -> Group:
    """The ``[worker]`` settings' group, with ``node_rank`` instead of the setting's."""
    worker = settings.worker
    return Group(
        nproc_per_node=worker.nproc_per_node,
        nnodes=worker.nnodes,
        node_rank=worker.node_rank if node_rank is None else node_rank,
        rdzv_endpoint=worker.rdzv_endpoint,
    )


def torchrun_args(group: Group, *, target: Sequence[str]) -> list[str]:
    """torchrun's arguments to run ``target`` (``-m module args...``) on this machine's
    share of the group."""
    argv = [
        "--nproc-per-node",
        str(group.nproc_per_node),
        "--nnodes",
        str(group.nnodes),
        "--node-rank",
        str(group.node_rank),
        "--max-restarts",
        "0",
    ]
    if group.nnodes == 1:
        argv.append("--standalone")
    else:
        if not group.rdzv_endpoint:
            raise LaunchError("several machines need a rendezvous endpoint (host:port)")
        argv += ["--rdzv-backend", "static", "--rdzv-endpoint", group.rdzv_endpoint]
    return [*argv, *target]


def group_env(
    group: Group, *, grace_s: float, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The variables a group's agent gets on top of ``environ`` (default: ours)."""
    environ = os.environ if environ is None else environ
    env = {}
    if THREADS_ENV not in environ:
        env[THREADS_ENV] = str(max(1, _cpus() // group.nproc_per_node))
    if SHUTDOWN_TIMEOUT_ENV not in environ:
        env[SHUTDOWN_TIMEOUT_ENV] = str(math.ceil(grace_s))
    return env


def worker_command(in_force: os.PathLike[str] | str) -> list[str]:
    """One worker process with the settings-in-force file the main process writes."""
    return [sys.executable, "-m", WORKER_MODULE, "--settings", str(in_force)]


def worker_launch(settings: Settings, *, environ: Mapping[str, str] | None = None) -> Launch:
    """What the supervisor of ``traind serve`` starts: the worker, alone when the group
    is one process (the command of old, unchanged), else node 0's torchrun agent."""
    problem = serve_refusal(settings)
    if problem is not None:
        raise LaunchError(problem)
    target = worker_command(in_force_path(settings))
    group = group_of(settings)
    if group.world_size == 1:
        return Launch(argv=tuple(target))
    return Launch(
        argv=tuple(agent_command(torchrun_args(group, target=target[1:]))),
        env=group_env(group, grace_s=settings.worker.stop_grace_s, environ=environ),
        group=True,
    )


def serve_refusal(settings: Settings) -> str | None:
    """Why ``traind serve`` must not start with these settings' group, or None."""
    worker = settings.worker
    if worker.node_rank != 0:
        return (
            f"worker.node_rank is {worker.node_rank}, but traind serve runs on node 0 of the "
            "group: run traind node on this machine instead, or set worker.node_rank = 0"
        )
    return None


def node_launch(
    settings: Settings,
    *,
    node_rank: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Launch:
    """``traind node``: this machine's torchrun agent, ``node_rank`` (default: the
    setting's) among ``worker.nnodes``. Its processes read the settings in force that
    ``traind serve`` on node 0 wrote into the shared state folder, the very ones node 0's
    processes read, so every rank trains with the same settings."""
    worker = settings.worker
    if worker.nnodes == 1:
        raise LaunchError(
            "worker.nnodes is 1: there are no other machines to start; traind serve runs "
            "the whole group (set worker.nnodes and worker.rdzv_endpoint for several)"
        )
    rank = worker.node_rank if node_rank is None else node_rank
    if not 0 < rank < worker.nnodes:
        source = "--node-rank" if node_rank is not None else "worker.node_rank"
        raise LaunchError(
            f"{source} is {rank}: traind node runs nodes 1 to {worker.nnodes - 1} of "
            f"worker.nnodes = {worker.nnodes} (node 0 is the machine that runs traind "
            "serve); give --node-rank, or TRAIND_WORKER__NODE_RANK on this machine"
        )
    group = group_of(settings, node_rank=rank)
    target = worker_command(in_force_path(settings))[1:]
    return Launch(
        argv=tuple(agent_command(torchrun_args(group, target=target))),
        env=group_env(group, grace_s=worker.stop_grace_s, environ=environ),
        group=True,
    )


def train_launch(
    args: Sequence[str],
    *,
    module: str,
    group: Group,
    grace_s: float,
    environ: Mapping[str, str] | None = None,
) -> Launch:
    """``traind train`` under torchrun: ``python -m module args...`` on each process of
    this machine's share, marked so that it trains instead of launching again."""
    if group.node_rank >= group.nnodes:
        raise LaunchError(
            f"--node-rank {group.node_rank} must be below --nnodes {group.nnodes} "
            "(machines are numbered 0 to nnodes - 1)"
        )
    if group.nnodes > 1 and not group.rdzv_endpoint:
        raise LaunchError(
            f"--nnodes {group.nnodes} needs --rdzv-endpoint HOST:PORT: node 0's address "
            "as the other machines reach it, and a free port there"
        )
    if group.rdzv_endpoint is not None:
        try:
            rendezvous_address(group.rdzv_endpoint)
        except ValueError as exc:
            raise LaunchError(f"--rdzv-endpoint {exc}") from None
    env = group_env(group, grace_s=grace_s, environ=environ)
    env[RELAUNCHED_ENV] = "1"
    return Launch(
        argv=tuple(agent_command(torchrun_args(group, target=["-m", module, *args]))),
        env=env,
        group=True,
    )


def under_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is a rank of a torchrun group (ours or one a person started)."""
    environ = os.environ if environ is None else environ
    return bool(environ.get(RELAUNCHED_ENV)) or "LOCAL_RANK" in environ


def without_options(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """``argv`` without the options ``names`` (each with its value: ``--name V`` or
    ``--name=V``); what follows ``--`` is left as it is."""
    kept: list[str] = []
    skip = False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--":
            return [*kept, *argv[index:]]
        if arg in names:
            skip = True
            continue
        if arg.split("=", 1)[0] in names and "=" in arg:
            continue
        kept.append(arg)
    return kept


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # a container's or taskset's share
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
