"""Training processes under torchrun from the command line: ``traind node`` (a machine
of the group other than node 0) and ``traind train --nproc-per-node N`` (which runs
``traind train`` again under torchrun). The command lines are built by
:mod:`service.worker.torchrun`; the agent runs in the foreground, gets our SIGINT or
SIGTERM once, and its exit status is ours (:func:`service.worker.agent.run_in_foreground`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Annotated

import typer

from api.cli.options import (
    ConfigOption,
    LogLevel,
    LogLevelOption,
    configure_logging,
    settings_or_exit,
)
from service.config.settings import Settings
from service.worker.agent import run_in_foreground
from service.worker.torchrun import (
    Group,
    Launch,
    LaunchError,
    node_launch,
    train_launch,
    under_torchrun,
    without_options,
)

log = logging.getLogger(__name__)

CLI_MODULE = "api.cli.main"
"""``python -m`` this runs the ``traind`` command line (what the console script runs)."""
LAUNCH_OPTIONS = ("--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint")
"""The options of ``traind train`` that launch torchrun; its processes run without them."""

# The options of `traind train` that run it under torchrun (one alias each).
NprocOption = Annotated[
    int,
    typer.Option(
        "--nproc-per-node",
        min=1,
        help="Train with this many processes on this machine (one per GPU), under torchrun; "
        "the step budget counts them all (world_size).",
        rich_help_panel="Several GPUs and machines",
    ),
]
NnodesOption = Annotated[
    int,
    typer.Option(
        "--nnodes",
        min=1,
        help="Machines training together; run the same command on each, with its "
        "--node-rank and the same --rdzv-endpoint, FILE... and shared folders.",
        rich_help_panel="Several GPUs and machines",
    ),
]
NodeRankOption = Annotated[
    int,
    typer.Option(
        "--node-rank",
        min=0,
        help="This machine's number, 0 to nnodes - 1 (0 hosts the rendezvous).",
        rich_help_panel="Several GPUs and machines",
    ),
]
RdzvEndpointOption = Annotated[
    str | None,
    typer.Option(
        "--rdzv-endpoint",
        metavar="HOST:PORT",
        help="With --nnodes above 1: node 0's address, as the others reach it, and a free "
        "port there.",
        rich_help_panel="Several GPUs and machines",
        show_default=False,
    ),
]


def train_relaunch(
    argv: Sequence[str],
    *,
    group: Group,
    settings: Settings,
    environ: Mapping[str, str] | None = None,
) -> Launch | None:
    """The torchrun launch of ``traind train`` (``argv``: its arguments, ``train`` first),
    or None to train in this process: one process asked, or this is a rank already."""
    if under_torchrun(environ):
        return None
    if group.world_size == 1 and group.node_rank == 0:
        return None
    return train_launch(
        without_options(argv, LAUNCH_OPTIONS),
        module=CLI_MODULE,
        group=group,
        grace_s=settings.worker.stop_grace_s,
        environ=environ,
    )


def run_launch(launch: Launch) -> int:
    """Run a launch's torchrun agent in the foreground; its exit status."""
    log.info("starting torchrun: %s", " ".join(launch.argv))
    return run_in_foreground(launch.argv, env=launch.env)


def register(app: typer.Typer) -> None:
    app.command(
        help="Run this machine's share of the worker's torchrun group: a machine of"
        " worker.nnodes other than node 0, which runs traind serve.\n\n"
        "Every machine needs the same traind.toml (worker.nnodes, worker.nproc_per_node,"
        " worker.rdzv_endpoint) and the same folders: paths.inbox, paths.checkpoints and"
        " paths.state on shared storage, at the same paths, writable by the same user."
        " The processes here read the settings in force that traind serve wrote in"
        " paths.state, so every process trains with the same settings; only rank 0, on"
        " node 0, talks to the ledger.\n\n"
        "It waits for node 0 (up to torchrun's rendezvous timeout, 15 minutes), and ends"
        " when the group does: run it under a service manager that starts it again"
        " (Restart=always), so this machine joins each new start of the group.\n\n"
        "Exit status: 0 when every process here ended well, else the status of the first"
        " that failed (128+N if signal N killed it); 2 for a settings problem here; 128+N"
        " when signal N stopped it."
    )(node)


def node(
    config: ConfigOption = None,
    node_rank: Annotated[
        int | None,
        typer.Option(
            "--node-rank",
            min=1,
            help="This machine's number, 1 to worker.nnodes - 1. Default: worker.node_rank.",
            show_default=False,
        ),
    ] = None,
    log_level: LogLevelOption = LogLevel.INFO,
) -> None:
    """Run this machine's share of the worker's torchrun group (see the help above)."""
    settings = settings_or_exit(config)
    configure_logging(log_level.value)
    try:
        launch = node_launch(settings, node_rank=node_rank)
    except LaunchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(run_launch(launch))
