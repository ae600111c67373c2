"""``traind inspect`` as a user runs it: the real command line in a subprocess, on a
lineage that ``traind train`` wrote."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.corpus import make_drops, traind_env

REPO = Path(__file__).resolve().parents[3]


def traind(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, *args],
        env={**(env or traind_env(cwd)), "PYTHONPATH": str(REPO)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoints root of three drops trained by ``traind train``, the second and
    third with a quarter of each step replayed from the earlier ones."""
    base = tmp_path_factory.mktemp("lineage")
    drops = [str(p) for p in make_drops(base / "drops")]
    env = {**traind_env(base), "TRAIND_TRAIN__REPLAY_FRACTION": "0.25"}
    result = traind("-m", "api.cli.main", "train", *drops, cwd=base, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return base / "checkpoints"


def newest_state(root: Path) -> dict:
    newest = max(root.glob("step-*"))
    return json.loads((newest / "training_state.json").read_text())


def inspect(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return traind("-m", "api.cli.main", "inspect", *args, cwd=cwd)


def test_human_output_shows_every_section_and_the_lineage(root: Path) -> None:
    result = inspect(str(root), cwd=root.parent)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for section in ("Architecture", "Training state", "Lineage", "Gold", "Checkpoints"):
        assert section in out
    state = newest_state(root)
    files = state["files_completed"]
    assert [f["name"] for f in files] == ["a.jsonl", "b.jsonl", "c.jsonl"]
    for index, f in enumerate(files, start=1):
        row = next(line for line in out.splitlines() if f" {f['name']} " in line)
        assert row.split()[0] == str(index)
        assert f"{f['start_step']} → {f['end_step']}" in row
        assert f["sha256"][:12] in row
        assert row.split()[-1] == f"{f['replayed_tokens']:,}"
    assert [f["replayed_tokens"] > 0 for f in files] == [False, True, True]
    assert "replayed tokens" in out and "newer than this traind knows" not in out
    assert f"showing step-{state['global_step']:08d}" in out
    assert "rng" not in out
    assert result.stderr == ""
    # The hyper-parameters in force, as the checkpoint recorded them, without --json.
    config = state["train_config"]
    assert "Hyper-parameters" in out
    lr = f"{config['learning_rate']:g} · {config['lr_schedule']} after {config['warmup_steps']}"
    assert lr in out
    assert f"micro {config['micro_batch_size']} × accum {config['grad_accum_steps']}" in out
    assert f"weight decay {config['weight_decay']:g}" in out
    assert re.search(rf"^epochs per file +{config['epochs_per_file']:g} *$", out, re.M)


def test_json_is_one_object_with_the_lineage(root: Path) -> None:
    result = inspect(str(root), "--json", cwd=root.parent)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    data = json.loads(result.stdout)
    training = data["checkpoint"]["training"]
    expected = [
        [f["name"], f["start_step"], f["end_step"]] for f in newest_state(root)["files_completed"]
    ]
    assert [[f["name"], f["start_step"], f["end_step"]] for f in training["lineage"]] == expected
    assert training["global_step"] == expected[-1][2]
    assert data["kind"] == "root" and data["checkpoints"][0]["problem"] is None


def test_a_single_checkpoint_folder(root: Path) -> None:
    newest = max(root.glob("step-*"))
    result = inspect(str(newest), "--json", cwd=root.parent)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["kind"] == "step" and data["checkpoints"] == []
    assert len(data["checkpoint"]["training"]["lineage"]) == 3


def test_a_broken_newest_checkpoint_is_skipped_and_said(root: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(root, tmp_path / "checkpoints"))
    newest, previous = sorted(copy.glob("step-*"), reverse=True)[:2]
    (newest / "manifest.json").unlink()
    result = inspect(str(copy), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"warning: {newest.name} is not a valid checkpoint" in result.stdout
    assert f"showing {previous.name}" in result.stdout


def test_the_export_folder(root: Path) -> None:
    export = root / "export"
    assert export.is_dir(), "traind writes checkpoints/export at the end of each file"
    result = inspect(str(export), cwd=root.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"export {export}  valid")
    assert "Export" in result.stdout and "Lineage" not in result.stdout
    info = json.loads((export / "export.json").read_text())
    data = json.loads(inspect(str(export), "--json", cwd=root.parent).stdout)
    assert data["checkpoint"]["export_info"] == info
    assert data["checkpoint"]["parameters"] == info["parameters"]


def test_inspect_imports_no_torch(root: Path) -> None:
    result = traind("-X", "importtime", "-m", "api.cli.main", "inspect", str(root), cwd=root.parent)
    assert result.returncode == 0, result.stderr
    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "json" in imported  # the import log was read
    assert not {"torch", "numpy", "safetensors"} & imported


@pytest.mark.parametrize(
    ("make", "message"),
    [("missing", "no such folder"), ("empty", "not a checkpoint"), ("file", "not a folder")],
)
def test_what_is_not_a_checkpoint_exits_2_with_one_line(
    tmp_path: Path, make: str, message: str
) -> None:
    path = tmp_path / "thing"
    if make == "empty":
        path.mkdir()
    elif make == "file":
        path.write_text("hi")
    result = inspect(str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and message in lines[0]
    assert "Traceback" not in result.stderr
