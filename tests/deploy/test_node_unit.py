"""docker/traind-node@.service: systemd accepts it, and it runs `traind node` the way a
machine of a multi-machine group needs (docs/deploy.md, "Several GPUs and machines").

Verified like docker/traind.service (tests/deploy/test_systemd_unit.py): verbatim, in a
throwaway root with a stand-in for the program it runs and the unit's user, as instance
1 of the template.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from service.config.settings import load_settings
from tests.deploy.deployfiles import (
    DOCKER,
    SHUTDOWN_MARGIN_S,
    STOP_GRACE_S,
    SYSUSERS,
    UNIT,
    directive,
    find_tool,
    parse_unit,
    systemd_seconds,
)

NODE_UNIT = DOCKER / "traind-node@.service"
TEXT = NODE_UNIT.read_text(encoding="utf-8")
SERVICE = parse_unit(TEXT)["Service"]
MAIN = parse_unit(UNIT.read_text(encoding="utf-8"))["Service"]
SYSTEMD_ANALYZE = find_tool("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    host_units = next(
        (Path(p) for p in ("/usr/lib/systemd/system", "/lib/systemd/system") if Path(p).is_dir()),
        None,
    )
    if host_units is None:
        pytest.skip("this machine has no systemd unit directory")
    root = tmp_path / "root"
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system" / NODE_UNIT.name).write_text(TEXT, encoding="utf-8")
    program = root / shlex.split(directive(SERVICE, "ExecStart") or "")[0].lstrip("/")
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    sysusers = find_tool("systemd-sysusers")
    if sysusers is not None:
        subprocess.run(
            [sysusers, f"--root={root}", "-"],
            input=SYSUSERS.read_text(encoding="utf-8"),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [
            SYSTEMD_ANALYZE,
            "verify",
            f"--root={root}",
            "--recursive-errors=one",
            "--man=no",
            "traind-node@1.service",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_runs_traind_node_with_the_instance_as_node_rank() -> None:
    command = shlex.split(directive(SERVICE, "ExecStart") or "")
    main = shlex.split(directive(MAIN, "ExecStart") or "")
    assert command[0] == main[0]  # the same traind as node 0's unit
    assert command[1:] == ["node", "--config", "/etc/traind/traind.toml", "--node-rank", "%i"]
    assert directive(SERVICE, "User") == directive(MAIN, "User")


def test_stops_through_traind_node_and_keeps_rejoining() -> None:
    assert directive(SERVICE, "KillMode") == "mixed"
    assert systemd_seconds(directive(SERVICE, "TimeoutStopSec") or "90s") >= (
        STOP_GRACE_S + SHUTDOWN_MARGIN_S
    )
    assert "143" in (directive(SERVICE, "SuccessExitStatus") or "").split()
    assert directive(SERVICE, "Restart") == "always"
    assert "2" in (directive(SERVICE, "RestartPreventExitStatus") or "").split()
    assert directive(parse_unit(TEXT)["Unit"], "StartLimitIntervalSec") == "0"


def test_the_shared_folders_are_settings_and_writable(clean_env, monkeypatch) -> None:
    env = {}
    for key, value in SERVICE:
        if key == "Environment":
            name, _, setting = value.partition("=")
            env[name] = setting
    for name, value in env.items():
        if name.startswith("TRAIND_"):
            monkeypatch.setenv(name, value)
    paths = load_settings().paths
    writable = (directive(SERVICE, "ReadWritePaths") or "").split()
    mounted = directive(parse_unit(TEXT)["Unit"], "RequiresMountsFor")
    for folder in (paths.inbox, paths.checkpoints, paths.state):
        assert any(folder.is_relative_to(w) for w in writable), folder
        assert mounted is not None and folder.is_relative_to(mounted)


def test_the_same_sandbox_as_node_0() -> None:
    for key in ("ProtectSystem", "NoNewPrivileges", "RestrictAddressFamilies", "ProtectProc"):
        assert directive(SERVICE, key) == directive(MAIN, key), key
    for key in ("PrivateDevices", "MemoryDenyWriteExecute", "PrivateNetwork"):
        assert directive(SERVICE, key) is None, key
