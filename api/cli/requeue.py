"""``traind requeue --rolled-back``: queue again, in a running ``traind serve``, every file
a rollback to gold undid (``POST /v1/files/requeue-rolled-back``).

After a rollback the files that finished after gold's step are ``rolled_back``: the
weights no longer hold them. This trains them again, on new global steps; ``traind retry
ID`` does it for one file.
"""

from __future__ import annotations

from typing import Annotated

import typer

from api.cli import views
from api.cli.options import ConfigOption, JsonOption, TokenOption, UrlOption
from api.cli.remote import EXIT_USAGE, api_session


def register(app: typer.Typer) -> None:
    """Add ``requeue`` to the ``traind`` app."""
    app.command()(requeue)


def requeue(
    rolled_back: Annotated[
        bool,
        typer.Option(
            "--rolled-back",
            help="Every file a rollback to gold undid (state rolled_back in traind queue).",
        ),
    ] = False,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Queue files again: with --rolled-back, every file a rollback to gold undid.

    They train again on new global steps, afresh (their old steps and attempts are
    forgotten). One whose content was dropped again stays rolled back: the new drop
    trains it. traind retry ID queues a single file again.
    """
    if not rolled_back:
        typer.echo(
            "error: say which files to queue again: --rolled-back (every file a rollback to "
            "gold undid); traind retry ID queues one file again",
            err=True,
        )
        raise typer.Exit(EXIT_USAGE)
    with api_session(url=url, token=token, config=config) as client:
        answer = client.requeue_rolled_back()
    if as_json:
        views.print_json(answer)
        return
    if not answer:
        typer.echo("no rolled-back files to queue again")
        return
    for item in answer:
        typer.echo(f"queued again: file {item.get('id')} ({item.get('name')})")
