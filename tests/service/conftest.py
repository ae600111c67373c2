"""Helpers to run the real ``traind`` command line in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.corpus import make_drops

REPO = Path(__file__).resolve().parents[2]


def traind_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}
    env.update(
        TRAIND_PATHS__CHECKPOINTS=str(root / "checkpoints"),
        TRAIND_PATHS__STATE=str(root / "state"),
        TRAIND_PATHS__INBOX=str(root / "inbox"),
        TRAIND_MODEL__PRESET="test",
        TRAIND_MODEL__DROPOUT="0.1",  # dropout makes the RNG state matter for exact resume
        TRAIND_TRAIN__MICRO_BATCH_SIZE="4",
        TRAIND_TRAIN__GRAD_ACCUM_STEPS="2",
        TRAIND_TRAIN__EPOCHS_PER_FILE="1.5",
        TRAIND_TRAIN__CHECKPOINT_INTERVAL="4",
        TRAIND_TRAIN__WARMUP_STEPS="5",
        TRAIND_TRAIN__LEARNING_RATE="0.003",
        TRAIND_TRAIN__LOG_INTERVAL="5",
        TRAIND_TRAIN__DEVICE="cpu",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_traind(args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 120, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args],
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
