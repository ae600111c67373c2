"""``traind generate`` and ``traind export`` on a lineage trained by a real ``traind train``."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli.main import app
from tests.corpus import make_drops, traind_env
from trainer.export import load_export, verify_export

REPO = Path(__file__).resolve().parents[3]
runner = CliRunner()


def traind(args: list[str], *, root: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """The real command line in a subprocess, with a small CPU lineage under ``root``."""
    return subprocess.run(
        [sys.executable, "-m", "api.cli.main", *args],
        env={**traind_env(root, **env), "PYTHONPATH": str(REPO)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture(scope="module")
def lineage(tmp_path_factory) -> Path:
    """A folder holding ``checkpoints/`` from one short ``traind train`` run; copy it
    before changing anything."""
    root = tmp_path_factory.mktemp("lineage")
    drops = make_drops(root / "drops")
    result = traind(["train", str(drops[0])], root=root, cwd=root)
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture
def copied(lineage, tmp_path) -> Path:
    root = tmp_path / "run"
    shutil.copytree(lineage, root)
    return root


@pytest.fixture
def quiet(monkeypatch):
    """In-process commands: keep the CLI's logging set-up off pytest's handlers."""
    monkeypatch.setattr("api.cli.offline.configure_logging", lambda level: None)


def newest_step(root: Path) -> Path:
    return max((root / "checkpoints").glob("step-*"))


def test_export_from_a_step_checkpoint_is_loadable(copied):
    step_dir = newest_step(copied)
    out = copied / "deploy"
    result = traind(
        ["export", "--from", str(step_dir), "--dtype", "fp16", "--out", str(out)],
        root=copied,
        cwd=copied,
    )
    assert result.returncode == 0, result.stderr
    step = json.loads((step_dir / "training_state.json").read_text())["global_step"]
    # 37,024 parameters, stored in GPT-2's layout, whose linears and norms always have a
    # bias: the bias-free model's are written as zeros (736 more).
    assert result.stdout.strip() == (
        f"wrote {out / 'export'} (fp16, 37,760 parameters) from {step_dir.name}, step {step}"
    )
    assert verify_export(out / "export") is None
    loaded = load_export(out / "export")
    assert loaded.info["dtype"] == "fp16" and loaded.info["step"] == step
    assert loaded.info["source_checkpoint"] == step_dir.name


def test_generate_needs_only_the_export_folder(copied, tmp_path):
    deployed = tmp_path / "elsewhere" / "model"
    result = traind(["export", "--out", str(tmp_path / "out")], root=copied, cwd=copied)
    assert result.returncode == 0, result.stderr
    shutil.copytree(tmp_path / "out" / "export", deployed)
    # Nothing of the lineage is left: the settings point at a folder that is gone.
    shutil.rmtree(copied / "checkpoints")
    shutil.rmtree(tmp_path / "out")
    args = ["generate", "--checkpoint", str(deployed), "--max-new-tokens", "8"]
    full = traind([*args, "2+2="], root=copied, cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    assert full.stdout.startswith("2+2=")
    only = traind([*args, "--completion-only", "2+2="], root=copied, cwd=tmp_path)
    assert only.returncode == 0, only.stderr
    assert full.stdout == "2+2=" + only.stdout  # greedy: the same completion both times
    assert not (copied / "checkpoints").exists()  # never created, never needed


def test_export_dtype_defaults_to_the_settings(copied, clean_env, quiet, monkeypatch):
    for name, value in traind_env(copied, TRAIND_EXPORT__DTYPE="fp16").items():
        if name.startswith("TRAIND_"):
            monkeypatch.setenv(name, value)
    result = runner.invoke(app, ["export"])
    assert result.exit_code == 0, result.output
    info = load_export(copied / "checkpoints" / "export").info
    assert info["dtype"] == "fp16"
    assert info["source_checkpoint"] == newest_step(copied).name


def test_sampling_is_reproducible_with_a_seed(lineage, quiet):
    args = ["generate", "--checkpoint", str(lineage / "checkpoints" / "export"), "abc"]
    args += ["--temperature", "1.0", "--top-k", "20", "--seed", "7", "--max-new-tokens", "12"]
    first, second = runner.invoke(app, args), runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.stdout == second.stdout and first.stdout.startswith("abc")


def test_a_missing_folder_exits_2_with_one_line(tmp_path):
    result = traind(
        ["generate", "--checkpoint", str(tmp_path / "nope"), "hello"], root=tmp_path, cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'nope'}: no such folder"]
    assert result.stdout == ""


def _weights_without_manifest(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"x")


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda folder: None, "neither an export nor a checkpoint"),
        (_weights_without_manifest, "no manifest.json"),
    ],
    ids=["empty-folder", "no-manifest"],
)
def test_an_invalid_folder_exits_2_naming_it(tmp_path, clean_env, quiet, setup, expected):
    (tmp_path / "empty").mkdir()
    setup(tmp_path / "empty")
    result = runner.invoke(app, ["generate", "--checkpoint", str(tmp_path / "empty"), "x"])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'empty'}: ")
    assert expected in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_broken_export_exits_2_naming_the_file(copied, clean_env, quiet):
    export = copied / "checkpoints" / "export"
    weights = export / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    result = runner.invoke(app, ["generate", "--checkpoint", str(export), "x"])
    assert result.exit_code == 2
    assert f"error: {export}: model.safetensors has 100 bytes" in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--from", "gold"], "no gold checkpoint yet"),
        (["--from", "nowhere"], "nowhere: no such folder"),
        ([], "no complete step-* checkpoint to export"),
    ],
)
def test_export_without_a_source_exits_2(tmp_path, clean_env, quiet, args, expected):
    (tmp_path / "checkpoints").mkdir()
    result = runner.invoke(app, ["export", *args])
    assert result.exit_code == 2
    assert expected in result.stderr and len(result.stderr.splitlines()) == 1


def test_help_says_what_each_command_does():
    generate = runner.invoke(app, ["generate", "--help"], terminal_width=200)
    assert generate.exit_code == 0
    for option in ("--checkpoint", "--max-new-tokens", "--temperature", "--top-k", "--seed"):
        assert option in generate.output
    assert "--device" in generate.output and "--completion-only" in generate.output
    export = runner.invoke(app, ["export", "--help"], terminal_width=200)
    assert export.exit_code == 0
    for option in ("--from", "--dtype", "--out", "--config"):
        assert option in export.output
