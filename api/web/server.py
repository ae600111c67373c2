"""``traind serve``: the API (uvicorn) with the watcher and supervised worker behind it.

Run: ``traind serve [--config traind.toml]``. SIGTERM or Ctrl-C stops it cleanly: the
worker checkpoints at its next optimizer step (within ``worker.stop_grace_s``), then the
process exits 0. SIGHUP reads the settings file again (``service.daemon.reloader``;
uvicorn handles SIGINT and SIGTERM, not SIGHUP). Exit status 2 means "a person must act,
restarting will not help": bad settings, a non-loopback ``server.host`` without a strong
``server.token``, another service on the same folders, or a worker that refuses its
settings or its lineage. 1: the API did not start; 3: uvicorn could not bind the port.
"""

from __future__ import annotations

import logging
import signal
import socket
from types import FrameType

import uvicorn

from api.web.app import create_app
from api.web.auth import BindError, TokenError, check_bind
from api.web.event_stream import close_event_streams
from service.config.settings import Settings
from service.daemon.instance import ServiceLockedError, ServiceLocks
from service.daemon.main_process import Daemon

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn's graceful shutdown, without re-raising the signal afterwards, and the
    moments systemd hears about (service.daemon.readiness).

    uvicorn ends by raising the captured SIGTERM again, so the process dies "killed by
    SIGTERM". A daemon's exit status must say whether it stopped cleanly (systemd and
    docker read it), so a clean stop exits 0.
    """

    def __init__(self, config: uvicorn.Config, *, daemon: Daemon) -> None:
        super().__init__(config)
        self.daemon = daemon

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            # uvicorn sets ``started`` once its sockets listen (after the lifespan started
            # the daemon): half of READY=1; the worker's loaded model is the other half.
            self.daemon.readiness.listening()

    async def on_tick(self, counter: int) -> bool:
        # Every 0.1 s while serving: a watchdog ping also needs the API's loop turning.
        self.daemon.readiness.api_tick()
        return await super().on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Tell systemd at once (STOPPING=1, more time): the worker's final checkpoint
        # only starts after uvicorn has closed its connections.
        self.daemon.readiness.stopping()
        # Open event streams never end by themselves, and uvicorn waits for every open
        # response before it runs the shutdown that stops the worker: end them first.
        close_event_streams(self.config.app)
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def run_server(settings: Settings) -> int:
    """Serve until stopped; the exit status (2: the settings refuse to serve, or another
    service runs on the same folders)."""
    try:
        check_bind(settings)
    except BindError as exc:
        log.error("%s", exc)
        return 2
    locks = ServiceLocks(settings)
    try:
        locks.acquire()
    except ServiceLockedError as exc:
        log.error("%s", exc)
        return 2
    try:
        return _serve(settings)
    finally:
        locks.release()


def _serve(settings: Settings) -> int:
    daemon = Daemon(settings)
    try:
        app = create_app(settings, daemon=daemon)
    except TokenError as exc:
        daemon.ledger.close()
        log.error("%s", exc)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_config=None,  # keep traind's logging setup
        access_log=False,
        lifespan="on",
    )
    server = _Server(config, daemon=daemon)

    def fatal(reason: str) -> None:
        log.error("shutting down: %s", reason)
        close_event_streams(app)
        server.should_exit = True

    daemon.on_fatal = fatal
    previous = daemon.reloader.install()  # SIGHUP only sets a flag; the reloader's thread acts
    try:
        server.run()
    finally:
        if previous is not None:  # None: a handler not set from Python, left as it was
            signal.signal(signal.SIGHUP, previous)
    if daemon.fatal:
        # The only fatal cause is a worker that refused its settings (exit 2): say the
        # same, so systemd's RestartPreventExitStatus=2 stops a pointless restart loop.
        return 2
    if not server.started:
        log.error("the API did not start (is port %d in use?)", settings.server.port)
        return 1
    return 0
