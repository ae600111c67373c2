"""The worker's command line (service.worker.torchrun) and how the supervisor stops and
kills a torchrun group (service.worker.agent): built and checked, never launched; no
torchrun runs here (the distributed tests of the trainer do that)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.config.in_force import in_force_path
from service.config.settings import Settings, load_settings
from service.daemon.supervisor import Supervisor, _exit_reason
from service.worker import agent
from service.worker.agent import descendants, exit_status, kill_tree
from service.worker.torchrun import (
    RELAUNCHED_ENV,
    SHUTDOWN_TIMEOUT_ENV,
    THREADS_ENV,
    Group,
    LaunchError,
    group_env,
    node_launch,
    train_launch,
    under_torchrun,
    without_options,
    worker_command,
    worker_launch,
)

PY = sys.executable
AGENT = [PY, "-m", "service.worker.agent"]  # torch's launcher inside traind's agent
ENDPOINT = "10.0.0.1:29500"


def settings_of(**worker: object) -> Settings:
    return load_settings(worker=worker)


def test_one_process_is_the_plain_worker_as_before(clean_env: Path) -> None:
    settings = settings_of()
    launch = worker_launch(settings, environ={})
    target = [PY, "-m", "service.worker", "--settings", str(in_force_path(settings))]
    assert list(launch.argv) == target == worker_command(in_force_path(settings))
    assert (dict(launch.env), launch.group) == ({}, False)


def test_one_machine_several_processes_run_torchrun_standalone(clean_env: Path) -> None:
    settings = settings_of(nproc_per_node=4, stop_grace_s=90.5)
    launch = worker_launch(settings, environ={})
    assert list(launch.argv) == [
        *AGENT,
        *("--nproc-per-node", "4", "--nnodes", "1", "--node-rank", "0"),
        *("--max-restarts", "0", "--standalone"),
        *("-m", "service.worker", "--settings", str(in_force_path(settings))),
    ]
    assert launch.group
    assert launch.env[SHUTDOWN_TIMEOUT_ENV] == "91"  # the agent waits as long as we do
    assert int(launch.env[THREADS_ENV]) >= 1


def test_two_machines_rendezvous_statically_at_node_0(clean_env: Path) -> None:
    settings = settings_of(nproc_per_node=2, nnodes=2, rdzv_endpoint=ENDPOINT)
    served = worker_launch(settings, environ={})
    joined = node_launch(settings, node_rank=1, environ={})

    def options(rank: str) -> list[str]:
        return [
            *("--nproc-per-node", "2", "--nnodes", "2", "--node-rank", rank),
            *("--max-restarts", "0", "--rdzv-backend", "static", "--rdzv-endpoint", ENDPOINT),
            *("-m", "service.worker", "--settings", str(in_force_path(settings))),
        ]

    assert list(served.argv) == [*AGENT, *options("0")]
    # Every rank on every machine reads the settings in force node 0 wrote.
    assert list(joined.argv) == [*AGENT, *options("1")]
    assert "--standalone" not in served.argv and joined.group


def test_the_callers_environment_wins(clean_env: Path) -> None:
    group = Group(nproc_per_node=2)
    mine = {THREADS_ENV: "3", SHUTDOWN_TIMEOUT_ENV: "5"}
    assert group_env(group, grace_s=120, environ=mine) == {}
    assert group_env(group, grace_s=120, environ={})[SHUTDOWN_TIMEOUT_ENV] == "120"


@pytest.mark.parametrize(
    ("worker", "node_rank", "words"),
    [
        ({}, None, "worker.nnodes is 1"),
        ({"nnodes": 2, "rdzv_endpoint": ENDPOINT}, None, "worker.node_rank is 0"),
        ({"nnodes": 2, "rdzv_endpoint": ENDPOINT}, 2, "--node-rank is 2"),
    ],
    ids=["one-machine", "node-0", "out-of-range"],
)
def test_traind_node_refuses(clean_env: Path, worker: dict, node_rank: int | None, words: str):
    with pytest.raises(LaunchError, match=words):
        node_launch(settings_of(**worker), node_rank=node_rank, environ={})


def test_serve_refuses_a_node_other_than_0(clean_env: Path) -> None:
    settings = settings_of(nnodes=2, node_rank=1, rdzv_endpoint=ENDPOINT)
    with pytest.raises(LaunchError, match="traind serve runs on node 0"):
        worker_launch(settings, environ={})


def test_train_relaunches_itself_marked(clean_env: Path) -> None:
    launch = train_launch(
        ["train", "a.jsonl", "--config", "t.toml"],
        module="api.cli.main",
        group=Group(nproc_per_node=2),
        grace_s=30,
        environ={},
    )
    assert list(launch.argv) == [
        *AGENT,
        *("--nproc-per-node", "2", "--nnodes", "1", "--node-rank", "0"),
        *("--max-restarts", "0", "--standalone"),
        *("-m", "api.cli.main", "train", "a.jsonl", "--config", "t.toml"),
    ]
    assert launch.env[RELAUNCHED_ENV] == "1"
    assert under_torchrun(launch.env) and under_torchrun({"LOCAL_RANK": "0"})
    assert not under_torchrun({})


@pytest.mark.parametrize(
    ("group", "words"),
    [
        (Group(nnodes=2), "--nnodes 2 needs --rdzv-endpoint"),
        (Group(nnodes=2, node_rank=2, rdzv_endpoint=ENDPOINT), "--node-rank 2 must be below"),
        (Group(nnodes=2, rdzv_endpoint="nohost"), "--rdzv-endpoint 'nohost' is not host:port"),
    ],
)
def test_train_refuses_a_group_it_cannot_launch(group: Group, words: str) -> None:
    with pytest.raises(LaunchError, match=words):
        train_launch(["train"], module="m", group=group, grace_s=1, environ={})


def test_without_options_drops_each_with_its_value() -> None:
    argv = ["train", "a", "--nproc-per-node", "2", "--nnodes=1", "b", "--", "--nnodes", "3"]
    names = ("--nproc-per-node", "--nnodes")
    assert without_options(argv, names) == ["train", "a", "b", "--", "--nnodes", "3"]


def test_the_supervisor_starts_what_the_settings_ask(clean_env: Path) -> None:
    settings = settings_of(nproc_per_node=2)
    supervisor = Supervisor(settings, ledger=None)  # type: ignore[arg-type]  # not started
    assert supervisor.command == list(worker_launch(settings).argv)


def test_kill_tree_reaches_a_child_in_a_session_of_its_own() -> None:
    # As torch starts each rank: in a new session, which a process-group kill misses.
    code = "import subprocess, time\nsubprocess.Popen(['sleep', '60'], start_new_session=True)\ntime.sleep(60)"
    proc = subprocess.Popen([PY, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while not (below := descendants(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert below, "the child did not start"
        assert os.getsid(below[0]) != os.getsid(proc.pid)
        kill_tree(proc.pid)
        assert proc.wait(timeout=5) == -signal.SIGKILL
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in below) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not any(_alive(pid) for pid in below)
    finally:
        if proc.poll() is None:
            proc.kill()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_agent_exits_as_a_shell_would() -> None:
    assert (exit_status(2), exit_status(-9), exit_status(0)) == (2, 137, 0)
    assert agent.main([]) == 2  # no torchrun options: usage


def test_run_in_foreground_passes_the_status_on() -> None:
    assert agent.run_in_foreground(["sh", "-c", "exit 3"], env={}) == 3
    assert agent.run_in_foreground(["sh", "-c", "kill -TERM $$"], env={}) == 128 + 15


def test_a_group_crash_is_told_as_one() -> None:
    assert _exit_reason(1, group=True) == "a process of the worker group exited with status 1"
    assert _exit_reason(137, group=True).startswith("a process of the worker group was killed")
    assert _exit_reason(137) == "the worker exited with status 137"
