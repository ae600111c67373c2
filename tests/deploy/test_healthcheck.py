"""docker/healthcheck.py, the images' HEALTHCHECK: its exit status and what it prints.

A small HTTP server on loopback stands in for traind's /readyz, answering with bodies
built from the API's own ReadyOut schema (so a change of the /readyz body shows up here).
The check against the real server is in test_entrypoint.py.
"""

from __future__ import annotations

import http.server
import importlib.util
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from api.web.schemas import ReadyOut
from tests.deploy.deployfiles import DOCKERFILES, HEALTHCHECK, parse_dockerfile, stages

READY = ReadyOut(
    status="ready",
    checks={name: {"ok": True, "detail": None} for name in ("ledger", "schema", "worker")},
)
NOT_READY = ReadyOut(
    status="not ready",
    checks={
        "ledger": {"ok": True, "detail": None},
        "worker": {"ok": False, "detail": "the worker has not loaded the model yet"},
    },
)


class _Readyz(http.server.BaseHTTPRequestHandler):
    answers: dict[str, tuple[int, bytes]]

    def do_GET(self) -> None:
        status, body = self.answers.get(self.path, (404, b"not found"))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def server() -> Iterator[tuple[http.server.HTTPServer, dict[str, tuple[int, bytes]]]]:
    answers: dict[str, tuple[int, bytes]] = {}
    handler = type("Handler", (_Readyz,), {"answers": answers})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd, answers
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _check(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_ready_is_healthy(server):
    httpd, answers = server
    answers["/readyz"] = (200, READY.model_dump_json().encode())
    result = _check(TRAIND_SERVER__PORT=str(httpd.server_port))
    assert result.returncode == 0
    assert result.stdout == "ready (200)\n"


def test_not_ready_is_unhealthy_and_names_the_failing_checks(server):
    httpd, answers = server
    answers["/readyz"] = (503, NOT_READY.model_dump_json().encode())
    result = _check(TRAIND_SERVER__PORT=str(httpd.server_port))
    assert result.returncode == 1
    assert result.stdout == "not ready (503): worker: the worker has not loaded the model yet\n"


def test_an_unexpected_body_is_shown_as_it_is(server):
    httpd, answers = server
    answers["/readyz"] = (500, b"Internal Server Error")
    result = _check(TRAIND_SERVER__PORT=str(httpd.server_port))
    assert result.returncode == 1
    assert result.stdout == "not ready (500): Internal Server Error\n"


def test_the_url_can_be_given(server):
    httpd, answers = server
    answers["/elsewhere/readyz"] = (200, READY.model_dump_json().encode())
    url = f"http://127.0.0.1:{httpd.server_port}/elsewhere/readyz"
    assert _check(TRAIND_HEALTHCHECK_URL=url, TRAIND_SERVER__PORT="1").returncode == 0


def test_no_server_is_unhealthy():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        result = _check(TRAIND_SERVER__PORT=str(port))
    assert result.returncode == 1
    assert result.stdout.startswith(f"no answer from http://127.0.0.1:{port}/readyz")


def test_by_default_it_asks_the_images_port_on_loopback(monkeypatch):
    spec = importlib.util.spec_from_file_location("healthcheck", HEALTHCHECK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.delenv("TRAIND_HEALTHCHECK_URL", raising=False)
    monkeypatch.delenv("TRAIND_SERVER__PORT", raising=False)
    for dockerfile in DOCKERFILES:
        final = stages(parse_dockerfile(dockerfile.read_text()))[-1]
        (port,) = [i.args for i in final if i.name == "EXPOSE"]
        assert module.readyz_url() == f"http://127.0.0.1:{port}/readyz"
