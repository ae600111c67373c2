"""``traind status --watch``: the live view of a running ``traind serve``, refreshed in place.

It keeps retrying while the server is away (a restart, a network blip), with the last good
view below the problem; a refusal (a wrong token, say) ends it.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from api.cli import views

if TYPE_CHECKING:
    from api.cli.client import ApiClient, ApiError

_sleep = time.sleep  # the watch loop's pause; a test replaces it to press Ctrl-C
_WATCH_QUEUE_STATES = ("training", "queued")
_WATCH_QUEUE_ROWS = 10


def follow_status(
    client: ApiClient, *, console: Console, interval: float, count: int | None
) -> None:
    """Redraw the view every ``interval`` seconds (``count`` times, or until Ctrl-C), and
    keep retrying, with the last good view below the problem, while the server is away.

    A terminal gets a rich Live view redrawn in place; anything else (a pipe, a log file)
    gets each refresh printed after the previous one, since Live would only show the last.
    """
    from api.cli.client import ApiError

    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    last: RenderableType | None = None
    with live or contextlib.nullcontext():
        for shown in itertools.count(1):
            started = time.monotonic()
            try:
                current = client.status()
                page = client.queue(states=_WATCH_QUEUE_STATES, limit=_WATCH_QUEUE_ROWS)
                view = last = _status_view(current, page, client.base_url, interval)
            except ApiError as exc:
                problem = Text(_retrying(exc, interval=interval), style="bold red")
                view = Group(problem, last) if last is not None else problem
            if live is not None:
                live.update(view, refresh=True)
            else:
                console.print(view)
            if count is not None and shown >= count:
                return
            _sleep(max(0.0, interval - (time.monotonic() - started)))


def follow_status_json(client: ApiClient, *, interval: float, count: int | None) -> None:
    """``status --watch --json``: one status document per line; problems go to stderr."""
    from api.cli.client import ApiError

    for shown in itertools.count(1):
        started = time.monotonic()
        try:
            views.print_json(client.status())
        except ApiError as exc:
            typer.echo(_retrying(exc, interval=interval), err=True)
        if count is not None and shown >= count:
            return
        _sleep(max(0.0, interval - (time.monotonic() - started)))


def _retrying(exc: ApiError, *, interval: float) -> str:
    """What the watch shows while it retries; a refusal (4xx) ends it instead."""
    if exc.status is None:
        return f"disconnected, retrying every {interval:g} s: {exc.detail}"
    if exc.status >= 500:
        return f"server error, retrying every {interval:g} s: {views.refusal(exc)}"
    raise exc  # a token problem, say: retrying will not change the answer


def _status_view(
    current: dict[str, Any], page: dict[str, Any], url: str, interval: float
) -> RenderableType:
    footer = Text(
        f"{url} · {datetime.now():%H:%M:%S} · every {interval:g} s · Ctrl-C to leave",
        style="dim",
    )
    table = views.queue_table(page, states=list(_WATCH_QUEUE_STATES), offset=0, title="next up")
    return Group(views.status_panel(current), table, footer)
