"""``traind eval``: evaluate now, in the running daemon or on a saved checkpoint.

Without ``--checkpoint`` it asks the running ``traind serve`` (``POST /v1/eval``): the
worker evaluates at its next step boundary and writes a normal ``eval`` event, which may
promote gold. With ``--checkpoint DIR`` it scores that folder here, on CPU, with the eval
sets of the settings, prints the losses and appends an ``eval`` event with
``trigger = "checkpoint"`` (it never changes gold). Like the rest of ``api/`` this module
imports no torch: the work is in ``service.checkpoints.evaluation``, imported inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from api.cli import views
from api.cli.options import (
    ConfigOption,
    JsonOption,
    TokenOption,
    UrlOption,
    configure_logging,
    settings_or_exit,
)
from api.cli.remote import api_session, report_answer
from trainer.records.events import eval_set_losses

EXIT_USAGE = 2
"""A folder or eval set that cannot be scored (the message says which)."""


def register(app: typer.Typer) -> None:
    """Add ``eval`` to the ``traind`` app."""
    app.command(name="eval")(evaluate)


def evaluate(
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            metavar="DIR",
            help="Score this folder here instead of asking the daemon: a step-* or gold "
            "checkpoint, an export, or a checkpoints folder (its newest checkpoint).",
            show_default=False,
        ),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Evaluate on the eval sets now: in the running daemon, or a checkpoint with --checkpoint.

    The daemon's worker evaluates at its next step boundary (at once when idle or paused)
    and writes an eval event (trigger "request") that can promote gold. --checkpoint DIR
    scores DIR on CPU with the same sets and selection, prints the losses and writes an
    eval event (trigger "checkpoint") that decides nothing.
    """
    if checkpoint is None:
        with api_session(url=url, token=token, config=config) as client:
            answer = client.evaluate()
        report_answer(
            answer,
            as_json=as_json,
            line="evaluation requested: the worker evaluates at its next step boundary "
            "(an eval event with trigger 'request'; see traind status or /v1/events)",
        )
        return
    from service.checkpoints.evaluation import EvaluationError, evaluate_checkpoint

    settings = settings_or_exit(config)
    configure_logging("WARNING")
    try:
        event = evaluate_checkpoint(settings, folder=checkpoint)
    except EvaluationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    if as_json:
        views.print_json(event)
        return
    step = event.get("step")
    typer.echo(f"{event['checkpoint']} (step {step if step is not None else '?'}):")
    for name, loss in eval_set_losses(event).items():
        mark = " (val)" if name == event.get("val_set") else ""
        typer.echo(f"  {name:<16} {loss:.4f}{mark}" if loss is not None else f"  {name}: n/a")
    for sample in event.get("samples") or ():
        typer.echo(f"  {sample['prompt']!r} -> {sample['completion']!r}")
