"""The ``traind`` command line.

Run ``traind --help`` (the console script installed by ``pip install -e .``) or
``python -m api.cli.main --help``.

This module must never import torch, nor anything of ``trainer`` but ``trainer.records``
(import-linter contracts check it): commands that train import ``service.worker.runner``
inside the command, so ``traind --help`` and ``traind init`` start fast on any machine.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer

from api.cli.evaluation import register as register_eval
from api.cli.group import (
    NnodesOption,
    NodeRankOption,
    NprocOption,
    RdzvEndpointOption,
    run_launch,
    train_relaunch,
)
from api.cli.group import register as register_node
from api.cli.offline import register_generation_commands
from api.cli.options import (
    ConfigOption,
    LogLevel,
    LogLevelOption,
    Source,
    configure_logging,
    settings_or_exit,
)
from api.cli.remote import register as register_remote_commands
from api.cli.report import register as register_inspect
from api.cli.requeue import register as register_requeue
from api.cli.vocabulary import register as register_vocabulary
from service.config.settings import (
    DEFAULT_CONFIG_NAME,
    PathsSection,
)
from service.config.template import render_default_config
from service.worker.torchrun import Group, LaunchError, serve_refusal

app = typer.Typer(
    name="traind",
    help="traind: a continuous-learning daemon for PyTorch language models.",
    no_args_is_help=True,
    add_completion=False,
    # Locals in tracebacks could print the API token or whole datasets.
    pretty_exceptions_show_locals=False,
)


@app.command()
def init(
    directory: Annotated[
        Path,
        typer.Argument(
            help="Folder to set up; created if missing.",
            metavar="DIR",
            file_okay=False,
            show_default="the current folder",
        ),
    ] = Path(),
    force: Annotated[
        bool,
        typer.Option("--force", help="Overwrite an existing traind.toml with the defaults."),
    ] = False,
) -> None:
    """Write a commented traind.toml with every default, and the runtime folders."""
    config = directory / DEFAULT_CONFIG_NAME
    existed = config.exists()
    if existed and not force:
        typer.echo(f"error: {config} already exists; use --force to overwrite it", err=True)
        raise typer.Exit(1)
    directory.mkdir(parents=True, exist_ok=True)
    config.write_text(render_default_config(), encoding="utf-8")
    typer.echo(f"{'overwrote' if existed else 'wrote'}  {config}")
    # The folder names come from the defaults the file just written points at.
    for field in PathsSection.model_fields.values():
        folder = directory / field.default
        if folder.is_dir():
            typer.echo(f"exists   {folder}/")
        else:
            folder.mkdir(parents=True)
            typer.echo(f"created  {folder}/")
    config_arg = "" if directory.resolve() == Path.cwd() else f" --config {config}"
    typer.echo(f"\nnext: traind train YOUR_DATA.jsonl{config_arg}")


# The arguments of `traind train`, one alias each (as in api.cli.options).
FilesArgument = Annotated[
    list[Path] | None,
    typer.Argument(
        help="JSONL drops to train on, in the order given.",
        metavar="FILE",
        exists=True,
        dir_okay=False,
        readable=True,
        show_default=False,
    ),
]
InitFromOption = Annotated[
    Path | None,
    typer.Option(
        "--init-from",
        help="Start a new lineage from the weights of this checkpoint folder "
        "(e.g. another run's checkpoints/gold), with a fresh optimizer at step 0.",
        exists=True,
        file_okay=False,
        metavar="DIR",
        show_default=False,
    ),
]
FromOption = Annotated[
    Source,
    typer.Option(
        "--from",
        help="latest: continue the lineage from its newest checkpoint. gold: first roll the "
        "lineage back to checkpoints/gold (newer checkpoints are kept under "
        "checkpoints/rolled-back/, the file gold was in the middle of is not resumed).",
    ),
]
NewLineageOption = Annotated[
    bool,
    typer.Option(
        "--new-lineage",
        help="Start a new lineage even though paths.checkpoints holds one (or the traces "
        "of one: gold, export, broken checkpoints); the old lineage's folders are moved "
        "to checkpoints/retired/, nothing is deleted. traind never does this unasked.",
    ),
]


@app.command(
    help="Train on FILE... in order, without the daemon, on one global step count.\n\n"
    "Each file gets ceil(epochs_per_file * sequences / (micro_batch_size * grad_accum_steps"
    " * world_size)) optimizer steps, counted from the step the file starts at.\n\n"
    "Run the same command again after a crash to resume: files the lineage already"
    " completed (same content) are skipped, the interrupted one continues at its exact"
    " position.\n\n"
    "With --from gold or --new-lineage, FILE may be left out: the lineage is rolled back"
    " (or started) and checkpointed, and nothing is trained.\n\n"
    "Exit status: 0 done; 1 a file was rejected; 2 a usage, settings or lineage problem;"
    " 75 out of disk space (free some, run it again); 70 a process of a torchrun group"
    " hung past worker.collective_timeout_s (run it again); 128+N stopped by signal N (run"
    " it again to resume).\n\n"
    "--nproc-per-node N runs the same command again under torchrun (python -m"
    " torch.distributed.run), N processes on this machine training one model together"
    " (with --nnodes, --node-rank and --rdzv-endpoint, on several machines); the exit"
    " status is then that of the first process that failed, as above."
)
def train(
    files: FilesArgument = None,
    config: ConfigOption = None,
    init_from: InitFromOption = None,
    from_: FromOption = Source.LATEST,
    new_lineage: NewLineageOption = False,
    log_level: LogLevelOption = LogLevel.INFO,
    nproc_per_node: NprocOption = 1,
    nnodes: NnodesOption = 1,
    node_rank: NodeRankOption = 0,
    rdzv_endpoint: RdzvEndpointOption = None,
) -> None:
    """Train on FILE... in order (the help text is the decorator's, kept on single lines)."""
    if (init_from is not None or new_lineage) and from_ is Source.GOLD:
        typer.echo(
            "error: --init-from and --new-lineage start a new lineage and --from gold rolls "
            "back the existing one; use one of them",
            err=True,
        )
        raise typer.Exit(2)
    if not files and from_ is not Source.GOLD and not new_lineage:
        typer.echo("error: give at least one FILE to train on", err=True)
        raise typer.Exit(2)
    settings = settings_or_exit(config)
    configure_logging(log_level.value)
    group = Group(
        nproc_per_node=nproc_per_node,
        nnodes=nnodes,
        node_rank=node_rank,
        rdzv_endpoint=rdzv_endpoint,
    )
    try:
        launch = train_relaunch(sys.argv[1:], group=group, settings=settings)
    except LaunchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if launch is not None:
        raise typer.Exit(run_launch(launch))
    # Imported here: it pulls in torch, which --help, init and version must not pay for.
    from service.worker.runner import train_files

    raise typer.Exit(
        train_files(
            settings,
            files or [],
            init_from=init_from,
            from_gold=from_ is Source.GOLD,
            new_lineage=new_lineage,
        )
    )


@app.command()
def serve(
    config: ConfigOption = None,
    log_level: LogLevelOption = LogLevel.INFO,
) -> None:
    """Run the daemon: the inbox watcher, the training worker and the REST API.

    Drop *.jsonl files into paths.inbox: each is checked, recorded in the ledger and
    trained in turn on one global step count. SIGTERM or Ctrl-C checkpoints at the next
    optimizer step and exits 0. With worker.nproc_per_node or worker.nnodes above 1 the
    worker is a torchrun group (this machine is node 0; the others run traind node).
    """
    settings = settings_or_exit(config)
    configure_logging(log_level.value)
    refusal = serve_refusal(settings)
    if refusal is not None:
        typer.echo(f"error: {refusal}", err=True)
        raise typer.Exit(2)
    from api.web.server import run_server

    raise typer.Exit(run_server(settings))


@app.command()
def migrate(
    config: ConfigOption = None,
) -> None:
    """Upgrade the ledger database to the newest schema (serve also does this at start)."""
    settings = settings_or_exit(config)
    from service.ledger.migrate import current_revision, head_revision, upgrade

    url = settings.database_url()
    shown = _redacted(url)
    before = current_revision(url)
    upgrade(url)
    after = current_revision(url)
    if before == after:
        typer.echo(f"ledger {shown} is at the newest schema ({after})")
    else:
        typer.echo(
            f"ledger {shown} upgraded from {before or 'empty'} to {after} (head {head_revision()})"
        )


register_inspect(app)


def _redacted(url: str) -> str:
    """The database URL without its password (it may end up in logs and terminals)."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@app.command()
def version() -> None:
    """Print the version of traind."""
    typer.echo(f"traind {_version()}")


def _version() -> str:
    try:
        return metadata.version("traind")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


register_node(app)
register_remote_commands(app)
register_requeue(app)

register_generation_commands(app)
register_eval(app)
register_vocabulary(app)


def main() -> None:
    """Entry point of the ``traind`` console script."""
    app()


if __name__ == "__main__":
    main()
