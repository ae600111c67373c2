"""docker/traind.service: systemd accepts it, and it says what traind needs.

``systemd-analyze verify`` loads the unit the way systemd would and reports unknown
sections and keys, values it cannot parse, bad specifiers and dependencies on missing
units. It also checks that every ExecStart=/ExecStartPre= command is an executable file,
which on this machine it is not (traind is not installed under /opt/traind). So the unit
is verified verbatim (byte for byte the file in the repository) inside a throwaway root
(``--root``): the root holds the unit in /etc/systemd/system, an executable stand-in at
each path the unit executes, this machine's own system units (for the targets it is
ordered against) and the traind user made by docker/traind.sysusers.

Not covered here: that the sandboxing lets the real daemon run (no systemd is PID 1 on
the test machines, so the unit is never started), that sd_notify READY/WATCHDOG arrive
(service/daemon/notify.py's tests), and that the user exists on a real host (the install steps
in the unit's header make it). The directive tests below pin the choices that matter
for traind: notify with a watchdog, stopping via the main process with a timeout above
the worker's checkpoint grace, and no sandboxing that hides the GPUs.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from service.config.sections import WorkerSection
from service.config.settings import load_settings
from service.daemon.readiness import MODEL_LOAD_ALLOWANCE_S
from tests.deploy.deployfiles import (
    SHUTDOWN_MARGIN_S,
    STOP_GRACE_S,
    SYSUSERS,
    UNIT,
    directive,
    find_tool,
    parse_unit,
    systemd_seconds,
)

SYSTEMD_ANALYZE = find_tool("systemd-analyze")
SYSTEMD_SYSUSERS = find_tool("systemd-sysusers")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (apt-get install systemd; .ci/run does)",
)
needs_sysusers = pytest.mark.skipif(
    SYSTEMD_SYSUSERS is None,
    reason="systemd-sysusers is not installed (apt-get install systemd; .ci/run does)",
)

UNIT_TEXT = UNIT.read_text(encoding="utf-8")
SERVICE = parse_unit(UNIT_TEXT)["Service"]


def _host_unit_dir() -> Path | None:
    for candidate in ("/usr/lib/systemd/system", "/lib/systemd/system"):
        if (Path(candidate) / "multi-user.target").exists():
            return Path(candidate)
    return None


def _executables(service: list[tuple[str, str]]) -> list[str]:
    """The programs the unit runs (ExecStart=, ExecStartPre=, ...), prefixes removed."""
    programs = []
    for key, value in service:
        if key.startswith("Exec"):
            program = shlex.split(value)[0].lstrip("@-:+!")
            programs.append(program)
    return programs


def _verify_root(tmp_path: Path, unit_text: str) -> Path:
    """A root with the unit, stand-ins for its programs and the system units it needs."""
    root = tmp_path / "root"
    host_units = _host_unit_dir()
    if host_units is None:
        pytest.skip("this machine has no systemd unit directory with multi-user.target")
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    (unit_dir / "traind.service").write_text(unit_text, encoding="utf-8")
    for program in _executables(parse_unit(unit_text)["Service"]):
        stand_in = root / program.lstrip("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\nexit 0\n")
        stand_in.chmod(0o755)
    if SYSTEMD_SYSUSERS is not None:
        _make_user(root)
    return root


def _make_user(root: Path) -> subprocess.CompletedProcess[str]:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [SYSTEMD_SYSUSERS, f"--root={root}", "-"],
        input=SYSUSERS.read_text(encoding="utf-8"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _verify(root: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [
            SYSTEMD_ANALYZE,
            "verify",
            f"--root={root}",
            "--recursive-errors=one",  # this unit's problems, not the host's units'
            "--man=no",
            "traind.service",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    result = _verify(_verify_root(tmp_path, UNIT_TEXT))
    # verify exits 0 on unknown keys and unparsable values (it only warns): any output fails.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (("\nKillMode=mixed\n", "\nKillMode=mixd\n"), "mixd"),
        (("\nType=notify\n", "\nType=notify\nWatchdogSecs=120s\n"), "WatchdogSecs"),
        (("\nTimeoutStopSec=600s\n", "\nTimeoutStopSec=ten minutes\n"), "ten minutes"),
    ],
    ids=["bad-value", "unknown-key", "bad-time-span"],
)
def test_the_verify_harness_catches_mistakes(tmp_path, change, complaint):
    """The check above is not vacuous: a mistyped unit makes verify say something."""
    old, new = change
    assert old in UNIT_TEXT
    result = _verify(_verify_root(tmp_path, UNIT_TEXT.replace(old, new, 1)))
    assert complaint in result.stdout + result.stderr


@needs_systemd_analyze
def test_the_verify_harness_needs_the_programs(tmp_path):
    root = _verify_root(tmp_path, UNIT_TEXT)
    program = _executables(SERVICE)[-1]
    (root / program.lstrip("/")).unlink()
    result = _verify(root)
    assert result.returncode != 0 and "not executable" in result.stderr


@needs_sysusers
def test_sysusers_entry_makes_the_units_user_with_its_home(tmp_path):
    result = _make_user(tmp_path)
    assert result.returncode == 0, result.stderr
    passwd = {
        fields[0]: fields
        for fields in (
            line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()
        )
    }
    user = directive(SERVICE, "User")
    assert user in passwd
    assert passwd[user][5] == directive(SERVICE, "WorkingDirectory") == "/var/lib/traind"
    assert passwd[user][6] == "/usr/sbin/nologin"
    groups = {line.split(":")[0] for line in (tmp_path / "etc/group").read_text().splitlines()}
    assert directive(SERVICE, "Group") in groups


def test_notify_with_a_watchdog_from_the_main_process_only():
    assert directive(SERVICE, "Type") == "notify"
    assert directive(SERVICE, "NotifyAccess") == "main"
    watchdog = directive(SERVICE, "WatchdogSec")
    # Generous (see the unit): it must outlast a step plus a checkpoint write, and traind
    # warns under twice the heartbeat.
    assert watchdog is not None and systemd_seconds(watchdog) >= 120
    assert systemd_seconds(watchdog) >= 2 * WorkerSection.model_fields["heartbeat_s"].default
    # READY=1 waits for the model load: the start timeout must outlast traind's allowance.
    start = systemd_seconds(directive(SERVICE, "TimeoutStartSec") or "90s")
    assert start > MODEL_LOAD_ALLOWANCE_S + SHUTDOWN_MARGIN_S


def test_stopping_lets_the_worker_checkpoint():
    # SIGTERM to the main process only; it stops the worker, which checkpoints.
    assert directive(SERVICE, "KillMode") == "mixed"
    assert directive(SERVICE, "KillSignal") in (None, "SIGTERM")
    timeout = systemd_seconds(directive(SERVICE, "TimeoutStopSec") or "90s")
    assert timeout >= STOP_GRACE_S + SHUTDOWN_MARGIN_S
    assert directive(SERVICE, "SendSIGKILL") in (None, "yes")


def test_reload_sends_sighup_to_the_main_process():
    # systemctl reload traind: traind serve reads traind.toml again (service.daemon.reloader).
    reload = shlex.split(directive(SERVICE, "ExecReload") or "")
    assert reload == ["/bin/kill", "-HUP", "$MAINPID"]


def test_restarts_on_failure_but_not_on_settings_errors():
    assert directive(SERVICE, "Restart") == "on-failure"
    assert systemd_seconds(directive(SERVICE, "RestartSec") or "0") >= 1
    assert "2" in (directive(SERVICE, "RestartPreventExitStatus") or "").split()
    # An OOM-killed worker is the supervisor's to restart, not a reason to stop the unit.
    assert directive(SERVICE, "OOMPolicy") == "continue"


def test_runs_traind_serve_as_its_own_user():
    command = shlex.split(directive(SERVICE, "ExecStart") or "")
    assert Path(command[0]).name == "traind" and Path(command[0]).is_absolute()
    assert command[1:] == ["serve", "--config", "/etc/traind/traind.toml"]
    migrate = shlex.split(directive(SERVICE, "ExecStartPre") or "")
    assert migrate == [command[0], "migrate", "--config", "/etc/traind/traind.toml"]
    assert directive(SERVICE, "User") == directive(SERVICE, "Group") == "traind"
    assert directive(SERVICE, "DynamicUser") in (None, "no", "false")
    install = parse_unit(UNIT_TEXT)["Install"]
    assert directive(install, "WantedBy") == "multi-user.target"


def test_sandboxing_without_hiding_the_gpus():
    for key, value in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "true"),
        ("NoNewPrivileges", "true"),
        ("PrivateTmp", "true"),
    ]:
        assert directive(SERVICE, key) == value, key
    # The worker must see /dev/nvidia*, and JIT compilers need writable+executable memory.
    for key in ("PrivateDevices", "MemoryDenyWriteExecute", "DevicePolicy", "DeviceAllow"):
        assert directive(SERVICE, key) in (None, "false", "no"), key
    assert directive(SERVICE, "ProcSubset") in (None, "all")  # /proc/driver/nvidia


def _environment() -> dict[str, str]:
    env: dict[str, str] = {}
    for key, value in SERVICE:
        if key == "Environment":
            for assignment in shlex.split(value):
                name, _, setting = assignment.partition("=")
                env[name] = setting
    return env


def test_the_data_folders_are_writable_under_protect_system_strict():
    env = _environment()
    folders = {env[f"TRAIND_PATHS__{key}"] for key in ("INBOX", "CHECKPOINTS", "STATE")}
    state_dirs = {
        f"/var/lib/{name}" for name in (directive(SERVICE, "StateDirectory") or "").split()
    }
    writable = set((directive(SERVICE, "ReadWritePaths") or "").split())
    assert "/var/lib/traind" in state_dirs
    for folder in folders:
        # Made (owned by the user) before each start, and writable in the sandbox.
        assert folder in state_dirs and folder in writable, folder
        assert folder.startswith("/var/lib/traind/")


def test_its_settings_variables_are_traind_settings(clean_env, monkeypatch):
    env = {name: value for name, value in _environment().items() if name.startswith("TRAIND_")}
    assert env
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()  # raises, naming the variable, on an unknown key
    assert str(settings.paths.inbox) == env["TRAIND_PATHS__INBOX"]
    assert str(settings.paths.checkpoints) == env["TRAIND_PATHS__CHECKPOINTS"]
    assert str(settings.paths.state) == env["TRAIND_PATHS__STATE"]
