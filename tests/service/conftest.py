"""Helpers to run the real ``traind`` command line in a subprocess."""

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.corpus import make_drops

REPO = Path(__file__).resolve().parents[2]


def run_traind(args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 120, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "api.cli.main", *args],
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


class Started:
    """``traind`` started now, at a lower CPU priority (``nice``), waited for by :meth:`result`.

    For an uninterrupted reference run that can train while the tests before the one that
    needs it run their (one-thread) processes on the other core; its bits do not depend on
    the load (a CPU run is bit-identical whatever the load). Its output goes to files, not
    pipes, so it never blocks on a full pipe while nobody reads it."""

    def __init__(
        self, args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 120, nice=10
    ):
        self.args = [sys.executable, "-m", "api.cli.main", *args]
        self.timeout = timeout
        self._outputs = []
        for stream in ("stdout", "stderr"):
            fd, name = tempfile.mkstemp(prefix=f"traind-{stream}-")
            os.close(fd)
            self._outputs.append(Path(name))
        out, err = self._outputs
        with out.open("w") as stdout, err.open("w") as stderr:
            self.proc = subprocess.Popen(
                self.args,
                env={**env, "PYTHONPATH": str(REPO)},
                cwd=cwd,
                stdout=stdout,
                stderr=stderr,
            )
        self._started_at = time.monotonic()
        self._result: subprocess.CompletedProcess | None = None
        if nice:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, self.proc.pid, nice)

    def result(self) -> subprocess.CompletedProcess:
        """Wait for it (``timeout`` counts from its start, as ``run_traind``'s does); what
        ``run_traind`` would have returned."""
        if self._result is None:
            left = self.timeout - (time.monotonic() - self._started_at)
            try:
                code = self.proc.wait(timeout=max(left, 0.1))
            except subprocess.TimeoutExpired:
                self.stop()
                raise
            out, err = (path.read_text(errors="replace") for path in self._outputs)
            self._result = subprocess.CompletedProcess(self.args, code, out, err)
            self._remove_outputs()
        return self._result

    def stop(self) -> None:
        """Kill it if it still runs (when nothing needed it after all)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._remove_outputs()

    def _remove_outputs(self) -> None:
        for path in self._outputs:
            path.unlink(missing_ok=True)


def read_events(root: Path) -> list[dict]:
    path = root / "state" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def drops(tmp_path) -> list[Path]:
    return make_drops(tmp_path / "drops")
