"""Helpers to run the real ``traind`` command line in a subprocess."""

import json
import subprocess
import sys
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


def read_events(root: Path) -> list[dict]:
    path = root / "state" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def drops(tmp_path) -> list[Path]:
    return make_drops(tmp_path / "drops")
