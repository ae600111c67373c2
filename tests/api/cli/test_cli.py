"""The traind command line: init, help texts, the installed console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli.main import app
from service.config.settings import load_settings
from service.config.template import render_default_config

REPO = Path(__file__).resolve().parents[3]
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("clean_env")


def test_init_writes_config_and_folders(tmp_path: Path) -> None:
    target = tmp_path / "run"
    result = runner.invoke(app, ["init", str(target)])
    assert result.exit_code == 0, result.output
    config = target / "traind.toml"
    assert config.read_text(encoding="utf-8") == render_default_config()
    for name in ("data_inbox", "checkpoints", "state"):
        assert (target / name).is_dir()
        assert list((target / name).iterdir()) == []  # no .gitkeep
        assert f"created  {target / name}/" in result.output
    assert f"wrote  {config}" in result.output
    assert f"traind train YOUR_DATA.jsonl --config {config}" in result.output
    settings = load_settings(config)
    assert settings.paths.inbox == (target / "data_inbox").resolve()


def test_init_defaults_to_the_current_folder(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "traind.toml").is_file()
    assert (tmp_path / "state").is_dir()
    assert "--config" not in result.output  # ./traind.toml is found without it


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    config = tmp_path / "traind.toml"
    config.write_text("# mine\n", encoding="utf-8")
    result = runner.invoke(app, ["init", str(tmp_path)])
    assert result.exit_code == 1
    assert "already exists" in result.stderr
    assert "--force" in result.stderr
    assert config.read_text(encoding="utf-8") == "# mine\n"


def test_init_force_overwrites(tmp_path: Path) -> None:
    config = tmp_path / "traind.toml"
    config.write_text("# mine\n", encoding="utf-8")
    (tmp_path / "data_inbox").mkdir()
    result = runner.invoke(app, ["init", str(tmp_path), "--force"])
    assert result.exit_code == 0, result.output
    assert config.read_text(encoding="utf-8") == render_default_config()
    assert f"exists   {tmp_path / 'data_inbox'}/" in result.output


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("init", "train", "version"):
        assert command in result.output


def test_train_help_documents_every_option() -> None:
    result = runner.invoke(app, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--config", "--init-from", "--log-level"):
        assert option in result.output


def test_train_with_bad_settings_exits_2_naming_the_key(tmp_path: Path) -> None:
    drop = tmp_path / "drop.jsonl"
    drop.write_text('{"text": "hi"}\n', encoding="utf-8")
    (tmp_path / "traind.toml").write_text("[train]\nmicro_batch_size = 0\n", encoding="utf-8")
    result = runner.invoke(app, ["train", str(drop)])
    assert result.exit_code == 2
    assert (
        "error: traind.toml: train.micro_batch_size: Input should be greater than or equal to 1"
        in result.stderr
    )


def test_train_needs_existing_files(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2


def test_version() -> None:
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert result.output.startswith("traind ")


@pytest.mark.parametrize(
    "command",
    [
        [str(Path(sys.executable).parent / "traind"), "--help"],
        [sys.executable, "-m", "api.cli.main", "--help"],
    ],
    ids=["console-script", "python-m"],
)
def test_real_entry_points(command: list[str]) -> None:
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    for name in ("init", "train", "version"):
        assert name in result.stdout
