"""``traind train --nproc-per-node``, ``traind node`` and ``traind serve`` on a machine
other than node 0: the torchrun command lines they would run (the launch itself is
replaced by a recorder; nothing starts torchrun here)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import group as cli_group
from api.cli.group import train_relaunch
from api.cli.main import app
from service.config.in_force import in_force_path
from service.config.settings import load_settings
from service.worker.torchrun import RELAUNCHED_ENV, Group, Launch

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("clean_env", "root_logging_kept")
ENDPOINT = "127.0.0.1:29500"


@pytest.fixture
def root_logging_kept():
    """The commands configure logging as a process would (a handler on the runner's
    stream, INFO on the root logger): put the root logger back, or later tests in this
    process would log into a closed stream and see INFO records they never asked for."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list[Launch]:
    """The launches the commands start; each 'exits' with status 7."""
    seen: list[Launch] = []

    def record(launch: Launch) -> int:
        seen.append(launch)
        return 7

    monkeypatch.setattr(cli_group, "run_launch", record)
    monkeypatch.setattr("api.cli.main.run_launch", record)
    return seen


def test_train_with_nproc_runs_itself_under_torchrun(tmp_path: Path, monkeypatch, launched):
    drop = tmp_path / "a.jsonl"
    drop.write_text('{"text": "x"}\n', encoding="utf-8")
    argv = ["train", str(drop), "--nproc-per-node", "2", "--log-level", "WARNING"]
    monkeypatch.setattr(sys, "argv", ["traind", *argv])
    result = runner.invoke(app, argv)
    assert result.exit_code == 7, result.output  # the launcher's status
    (launch,) = launched
    assert list(launch.argv).count("--nproc-per-node") == 1  # torchrun's, not train's
    assert launch.argv[-6:] == (
        "-m",
        "api.cli.main",
        "train",
        str(drop),
        "--log-level",
        "WARNING",
    )
    assert launch.env[RELAUNCHED_ENV] == "1"


def test_train_relaunch_decides(clean_env: Path) -> None:
    settings = load_settings()
    argv = ["train", "a.jsonl", "--nproc-per-node=4"]
    assert train_relaunch(argv, group=Group(), settings=settings, environ={}) is None
    marked = {RELAUNCHED_ENV: "1"}
    assert (
        train_relaunch(argv, group=Group(nproc_per_node=4), settings=settings, environ=marked)
        is None
    )
    launch = train_relaunch(argv, group=Group(nproc_per_node=4), settings=settings, environ={})
    assert launch is not None and launch.argv[-3:] == ("api.cli.main", "train", "a.jsonl")


def test_train_refuses_several_machines_without_an_endpoint(monkeypatch, launched):
    monkeypatch.setattr(sys, "argv", ["traind", "train", "--new-lineage", "--nnodes", "2"])
    result = runner.invoke(app, ["train", "--new-lineage", "--nnodes", "2"])
    assert result.exit_code == 2
    assert "--nnodes 2 needs --rdzv-endpoint" in result.stderr
    assert launched == []


def test_node_runs_this_machines_share(monkeypatch, launched):
    monkeypatch.setenv("TRAIND_WORKER__NNODES", "2")
    monkeypatch.setenv("TRAIND_WORKER__RDZV_ENDPOINT", ENDPOINT)
    result = runner.invoke(app, ["node", "--node-rank", "1"])
    assert result.exit_code == 7, result.output
    (launch,) = launched
    argv = list(launch.argv)
    assert argv[argv.index("--node-rank") + 1] == "1"
    assert argv[argv.index("--rdzv-endpoint") + 1] == ENDPOINT
    assert argv[-2:] == ["--settings", str(in_force_path(load_settings()))]


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({}, "worker.nnodes is 1"),
        ({"TRAIND_WORKER__NNODES": "2", "TRAIND_WORKER__RDZV_ENDPOINT": ENDPOINT}, "is 0"),
    ],
)
def test_node_refuses(monkeypatch, launched, env: dict[str, str], words: str):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = runner.invoke(app, ["node"])
    assert result.exit_code == 2
    assert words in result.stderr
    assert launched == []


def test_serve_refuses_to_run_on_another_node(monkeypatch):
    monkeypatch.setenv("TRAIND_WORKER__NNODES", "2")
    monkeypatch.setenv("TRAIND_WORKER__NODE_RANK", "1")
    monkeypatch.setenv("TRAIND_WORKER__RDZV_ENDPOINT", ENDPOINT)
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2
    assert "traind serve runs on node 0" in result.stderr and "traind node" in result.stderr
