"""The ``traind`` commands that are clients of a running ``traind serve`` (docs/api.md):
status, queue, pause, rollback, resume, enqueue, retry and cancel.

They are registered on the command line's app by :func:`register`; each talks to the
REST API through :class:`api.cli.client.ApiClient` and maps its errors to exit statuses.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from api.cli import views
from api.cli.options import ConfigOption, JsonOption, TokenOption, UrlOption, settings_or_exit
from api.cli.watch import follow_status, follow_status_json
from trainer.records.lifecycle import FileState

if TYPE_CHECKING:
    # The client (and httpx) is imported by these commands only: init, train and serve
    # need neither.
    from api.cli.client import ApiClient

_COMMANDS: list[Callable[..., None]] = []


def _command(function: Callable[..., None]) -> Callable[..., None]:
    """Collect a command; :func:`register` adds them to the app in this order."""
    _COMMANDS.append(function)
    return function


def register(app: typer.Typer) -> None:
    for function in _COMMANDS:
        app.command()(function)


# -- clients of the REST API of a running `traind serve` (docs/api.md) ---------------------

EXIT_REFUSED = 1
"""The server answered with an error (its detail is printed)."""
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
"""No answer: nothing listens at the URL, the connection broke, or it timed out."""


@_command
def status(
    watch: Annotated[
        bool,
        typer.Option(
            "--watch", "-w", help="A live view, refreshed every --interval seconds; Ctrl-C exits."
        ),
    ] = False,
    interval: Annotated[
        float,
        typer.Option("--interval", min=0.01, metavar="S", help="Seconds between refreshes."),
    ] = 1.0,
    count: Annotated[
        int | None,
        typer.Option(
            "--count",
            min=1,
            metavar="N",
            help="With --watch: stop after N refreshes (for scripts and tests).",
            show_default=False,
        ),
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Show what traind is doing: state, step, current file, loss, ETA, gold, queue counts."""
    console = Console(highlight=False)
    with api_session(url=url, token=token, config=config) as client:
        if watch:
            # Ctrl-C is how a person leaves the view: not an error.
            with contextlib.suppress(KeyboardInterrupt):
                if as_json:
                    follow_status_json(client, interval=interval, count=count)
                else:
                    follow_status(client, console=console, interval=interval, count=count)
        elif as_json:
            views.print_json(client.status())
        else:
            console.print(views.status_panel(client.status()))


@_command
def queue(
    state: Annotated[
        list[FileState] | None,
        typer.Option(
            "--state",
            "-s",
            help="Only files in this state; repeat for several.",
            metavar="STATE",
            case_sensitive=False,
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, metavar="N", help="Files shown.")] = 50,
    offset: Annotated[
        int, typer.Option("--offset", min=0, metavar="N", help="Files skipped first (paging).")
    ] = 0,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """List the files the daemon knows, by arrival: id, name, state, steps, error."""
    states = [s.value for s in state or ()]
    with api_session(url=url, token=token, config=config) as client:
        page = client.queue(states=states, limit=limit, offset=offset)
    if as_json:
        views.print_json(page)
    else:
        Console(highlight=False).print(views.queue_table(page, states=states, offset=offset))


@_command
def pause(
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Pause training: the worker finishes its optimizer step, checkpoints and holds the model."""
    with api_session(url=url, token=token, config=config) as client:
        answer = client.pause()
    report_answer(
        answer, as_json=as_json, line="paused: the worker checkpoints at its next step and holds"
    )


@_command
def rollback(
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Roll the running daemon's lineage back to its gold checkpoint.

    Training continues from gold's weights, optimizer state and step. Newer checkpoints
    are kept under checkpoints/rolled-back/; the file in training is cancelled (retry it
    to train it again); files finished after gold become rolled_back, with the steps they
    had (traind requeue --rolled-back trains them again).
    """
    with api_session(url=url, token=token, config=config) as client:
        answer = client.rollback()
    report_answer(
        answer,
        as_json=as_json,
        line="rollback requested: the worker rolls back to gold at its next step boundary",
    )


@_command
def resume(
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Resume training at the same step, without reloading the model."""
    with api_session(url=url, token=token, config=config) as client:
        answer = client.resume()
    report_answer(answer, as_json=as_json, line="resumed: training continues at the same step")


@_command
def enqueue(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="JSONL drops to upload into the inbox, in this order.",
            metavar="FILE",
            exists=True,
            dir_okay=False,
            readable=True,
            show_default=False,
        ),
    ],
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Upload FILE... into the inbox of a running traind (it checks and queues each like a drop).

    A refused file (too large, say) is reported and the others still go; the exit status
    is then 1.
    """
    from api.cli.client import ApiError, ServerUnreachableError

    refused = 0
    with api_session(url=url, token=token, config=config) as client:
        for path in files:
            try:
                answer = client.enqueue(path)
            except ServerUnreachableError:
                raise
            except ApiError as exc:
                refused += 1
                typer.echo(f"error: {path}: {views.refusal(exc)}", err=True)
                continue
            name = answer.get("name") if isinstance(answer, dict) else None
            line = f"uploaded {path} as {name}" if name else f"uploaded {path}"
            report_answer(
                answer, as_json=as_json, line=f"{line}: the watcher checks it, then queues it"
            )
    if refused:
        raise typer.Exit(EXIT_REFUSED)


@_command
def retry(
    file_id: Annotated[int, typer.Argument(metavar="ID", help="File id (see traind queue).")],
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Retry a file: a failed or cancelled one is queued again, a rejected one is checked again."""
    with api_session(url=url, token=token, config=config) as client:
        answer = client.retry(file_id)
    label = _file_label(answer, file_id)
    match _answer_state(answer):
        case "queued":
            line = f"queued again: {label}"
        case "rejected":
            # The record stays rejected; the file goes back into the inbox under a new name.
            back = answer.get("requeued_as") if isinstance(answer, dict) else None
            line = f"back in the inbox{f' as {back}' if back else ''}: {label} is checked again"
        case None:
            line = f"retry accepted: {label}"
        case other:
            line = f"retry accepted: {label} is {other}"
    report_answer(answer, as_json=as_json, line=line)


@_command
def cancel(
    file_id: Annotated[int, typer.Argument(metavar="ID", help="File id (see traind queue).")],
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Cancel a file: a queued one leaves the queue, the one in training stops early.

    The file in training stops at its next optimizer step with a checkpoint and keeps
    what it learned so far.
    """
    with api_session(url=url, token=token, config=config) as client:
        answer = client.cancel(file_id)
    label = _file_label(answer, file_id)
    match _answer_state(answer):
        case "training":
            line = (
                f"cancelling: {label} stops at its next optimizer step with a checkpoint"
                " and keeps what it learned"
            )
        case "cancelled":
            line = f"cancelled: {label}"
        case _:
            line = f"cancel accepted: {label}"
    report_answer(answer, as_json=as_json, line=line)


@contextlib.contextmanager
def api_session(*, url: str | None, token: str | None, config: Path | None) -> Iterator[ApiClient]:
    """A client for the server the options point at; API errors become exit statuses."""
    from api.cli.client import (
        URL_ENV,
        ApiClient,
        ApiError,
        ServerUnreachableError,
        discover_token,
        discover_url,
    )

    # Loaded only when --url or --token leave something to find, but an explicit --config
    # must be valid either way (a typo there should not go unnoticed).
    settings = functools.cache(lambda: settings_or_exit(config))
    if config is not None:
        settings()
    base_url = discover_url(url, settings=settings)
    try:
        client = ApiClient(base_url, token=discover_token(token, settings=settings))
    except ValueError as exc:
        typer.echo(f"error: --url (or ${URL_ENV}): {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    try:
        with client:
            yield client
    except ServerUnreachableError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(EXIT_UNREACHABLE) from None
    except ApiError as exc:
        typer.echo(f"error: {views.refusal(exc)}", err=True)
        raise typer.Exit(EXIT_REFUSED) from None


def report_answer(answer: object, *, as_json: bool, line: str) -> None:
    if as_json:
        views.print_json(answer)
    else:
        typer.echo(line)


def _answer_state(answer: object) -> str | None:
    state = answer.get("state") if isinstance(answer, dict) else None
    return str(state) if state else None


def _file_label(answer: object, file_id: int) -> str:
    name = answer.get("name") if isinstance(answer, dict) else None
    return f"file {file_id} ({name})" if name else f"file {file_id}"
