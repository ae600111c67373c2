"""Project layout: import layering, no torch behind the command line, example drops."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DROPS = sorted((REPO / "examples" / "drops").glob("*.jsonl"))


def test_import_contracts_hold() -> None:
    result = subprocess.run(
        [str(BIN / "lint-imports")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_import_does_not_load_torch() -> None:
    # Nor the daemon's stack: `traind --help`, `init` and the client commands start fast.
    heavy = (
        "torch",
        "numpy",
        "safetensors",
        "tokenizers",
        "sqlalchemy",
        "fastapi",
        "service.worker.runner",
    )
    code = (
        "import sys, api.cli.main\n"
        f"loaded = sorted(m for m in {heavy!r} if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_example_drops_exist() -> None:
    assert [p.name for p in DROPS] == [
        "day1-arithmetic-text.jsonl",
        "day2-arithmetic-qa.jsonl",
        "day3-arithmetic-chat.jsonl",
    ]


@pytest.mark.parametrize("path", DROPS, ids=lambda p: p.name)
def test_example_drops_are_json_lines_of_one_format(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert 200 <= len(lines) <= 400
    keys = {frozenset(json.loads(line)) for line in lines}
    assert len(keys) == 1
    assert next(iter(keys)) in (
        {"text"},
        {"prompt", "completion"},
        {"messages"},
    )


def test_example_drops_are_reproducible(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "examples" / "make_drops.py"), "--out", str(tmp_path)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    for path in DROPS:
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
