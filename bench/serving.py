"""A real ``traind serve`` for the benchmarks that measure through one (``ingest.py``,
``soak.py``): started on a free loopback port with its folders under a root, waited for
until its worker has loaded the model, and stopped with its worker.

Not a benchmark itself: ``from serving import Serve``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Serve:
    """``traind serve`` with ``paths`` under ``root`` and the ``TRAIND_*`` settings given
    (the caller's own ``TRAIND_*`` variables left out); use as a context manager."""

    def __init__(self, root: Path, **settings: str) -> None:
        self.root = root
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}
        self.env.update(
            TRAIND_PATHS__INBOX=str(root / "inbox"),
            TRAIND_PATHS__CHECKPOINTS=str(root / "checkpoints"),
            TRAIND_PATHS__STATE=str(root / "state"),
            TRAIND_SERVER__PORT=str(port),
            PYTHONPATH=str(REPO),
            **settings,
        )
        self.proc: subprocess.Popen | None = None

    def status(self) -> dict:
        return httpx.get(self.url + "/v1/status", timeout=5).json()

    def __enter__(self) -> Serve:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "serve.log").open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "api.cli.main", "serve", "--log-level", "WARNING"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the worker stops with it
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if self.status()["worker"]["model_loaded"]:
                    return self
            except (httpx.HTTPError, KeyError, TypeError):
                pass
            time.sleep(0.1)
        self.__exit__()
        raise TimeoutError(f"traind serve did not load its model in 120 s: see {self.root}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=120)
