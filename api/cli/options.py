"""Options and helpers shared by the ``traind`` commands (``api.cli.main``, ``api.cli.remote``,
``api.cli.offline``): one definition of ``--config``, ``--url``, ``--token``, ``--json`` and
``--log-level``, reading the settings, and logging to the terminal."""

from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from service.config.settings import Settings, SettingsError, load_settings


class LogLevel(enum.StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class Source(enum.StrEnum):
    """Where ``traind train`` continues the lineage from."""

    LATEST = "latest"
    GOLD = "gold"


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Settings file. Default: $TRAIND_CONFIG, else ./traind.toml if present, "
        "else the built-in defaults. TRAIND_<SECTION>__<KEY> variables override it.",
        dir_okay=False,
        show_default=False,
    ),
]
LogLevelOption = Annotated[
    LogLevel,
    typer.Option("--log-level", help="Least severe log messages shown.", case_sensitive=False),
]
# Options shared by the REST clients (status, queue, pause, resume, enqueue, retry, cancel).
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Base URL of the traind API. Default: $TRAIND_URL, else "
        "http://<server.host>:<server.port> from the settings.",
        metavar="URL",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="API bearer token. Default: $TRAIND_TOKEN, else server.token from the "
        "settings, else the file <paths.state>/api-token if readable.",
        metavar="TOKEN",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json", help="Print the server's JSON answer (one document per line), for scripts."
    ),
]


def settings_or_exit(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except SettingsError as exc:
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2) from None


def configure_logging(level: str) -> None:
    console = Console(stderr=True)
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(
            console=console,
            show_time=True,
            show_level=True,
            show_path=False,
            omit_repeated_times=False,
            log_time_format="%H:%M:%S",
            markup=False,
            rich_tracebacks=True,
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        # Piped into a file, journald or CI: rich would wrap every record at 80 columns
        # and pad it with spaces, so write the same fields as plain single lines.
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-8s %(message)s", datefmt="%H:%M:%S")
        )
    logging.basicConfig(level=level, handlers=[handler], force=True)
