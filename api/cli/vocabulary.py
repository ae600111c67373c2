"""``traind extend-vocab``: add tokens to an existing lineage, without the daemon.

``api.cli.main`` registers the command with :func:`register`. Like the rest of ``api/`` this
module never imports torch or ``trainer``: the work happens in
``service.checkpoints.vocabulary``, imported inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from api.cli.options import (
    ConfigOption,
    LogLevel,
    LogLevelOption,
    configure_logging,
    settings_or_exit,
)

EXIT_USAGE = 2
"""The extension cannot be done now (the message says why and what to do)."""

HELP = (
    "Add the tokens of FILE (UTF-8, one token per line) to the lineage in paths.checkpoints."
    "\n\nEach new token gets an embedding row (and an output-head row, tied or not) of its"
    " own, initialised as the mean of the existing rows; the existing rows stay bit-frozen"
    " (model.unfreeze_base_rows_at_step releases them). The optimizer keeps every moment and"
    " the schedule its step. The result replaces the newest checkpoint (same global step),"
    " the export is rewritten and a vocab_extended event is logged.\n\n"
    "Run it between files with the daemon stopped (it takes the lineage's lock): a file"
    " trained partly is refused. Tokens the tokenizer knows already are skipped. For a new"
    " lineage, set model.new_tokens instead. Exit status 2 when it cannot be done now."
)


def register(app: typer.Typer) -> None:
    """Add ``extend-vocab`` to the ``traind`` app."""
    app.command(name="extend-vocab", help=HELP)(extend_vocab)


def extend_vocab(
    tokens: Annotated[
        Path,
        typer.Option(
            "--tokens",
            metavar="FILE",
            help="The new tokens, one per line.",
            exists=True,
            dir_okay=False,
            show_default=False,
        ),
    ],
    config: ConfigOption = None,
    log_level: LogLevelOption = LogLevel.WARNING,
) -> None:
    """Extend the lineage's vocabulary (the help text is HELP)."""
    from service.checkpoints.vocabulary import VocabularyError, extend_vocab

    settings = settings_or_exit(config)
    configure_logging(log_level.value)
    try:
        result = extend_vocab(settings, tokens_file=tokens)
    except VocabularyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    if result is None:
        typer.echo("the tokenizer knows every token of the file already; nothing changed")
        return
    typer.echo(
        f"added {result['tokens_added']} token(s) at step {result['step']}: the vocabulary has "
        f"{result['rows']} rows, the first {result['base_rows']} frozen"
    )
