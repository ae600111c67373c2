"""docker/entrypoint.sh, without docker: shellcheck, and its logic with a fake traind.

The fake ``traind`` (first on PATH, or named by TRAIND_BIN) records each call (its pid,
arguments and the token it was given) and exits with a chosen status. Checked: migrate
runs before serve and gets only serve's --config, serve *replaces* the shell (same pid,
so under tini it is PID 1's direct child and gets docker stop's SIGTERM itself), a failed
migrate stops the start with its status, arguments pass through untouched, the data
folders are made, and the token can come from a file. Then the same script runs the real
traind with the CPU image's environment: without a token it refuses the container's
0.0.0.0 bind after migrating, and with one it serves until /readyz (through
docker/healthcheck.py) says ready, and stops with 0 on SIGTERM.

Each case runs under every POSIX shell found here (dash is /bin/sh of the images'
distributions; bash as well), except the real-traind ones, which use the shebang.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.deployfiles import (
    DOCKERFILES,
    ENTRYPOINT,
    HEALTHCHECK,
    env_of,
    find_tool,
    parse_dockerfile,
    stages,
)

SHELLCHECK = find_tool("shellcheck")
SHELLS = [shell for shell in ("dash", "bash") if shutil.which(shell)] or ["sh"]

FAKE_TRAIND = r"""#!/bin/sh
# Records one call: "pid=..", "token=..", one "arg=.." per argument, then "end".
{
    printf 'pid=%s\n' "$$"
    printf 'token=%s\n' "${TRAIND_SERVER__TOKEN:-}"
    for arg in "$@"; do
        printf 'arg=%s\n' "$arg"
    done
    printf 'end\n'
} >> "$FAKE_TRAIND_LOG"
if [ "${1:-}" = migrate ]; then
    exit "${FAKE_MIGRATE_STATUS:-0}"
fi
if [ "${FAKE_SERVE_WAITS:-}" = 1 ]; then
    trap 'echo term >> "$FAKE_TRAIND_LOG"; exit 0' TERM
    echo waiting >> "$FAKE_TRAIND_LOG"
    while :; do sleep 0.05; done
fi
exit "${FAKE_SERVE_STATUS:-0}"
"""


@dataclass(frozen=True)
class Call:
    pid: int
    token: str
    args: list[str]


@dataclass
class Run:
    returncode: int
    pid: int
    stderr: str
    calls: list[Call]


class Harness:
    def __init__(self, root: Path, shell: str) -> None:
        self.root = root
        self.shell = shell
        self.bin = root / "bin"
        self.bin.mkdir()
        fake = self.bin / "traind"
        fake.write_text(FAKE_TRAIND)
        fake.chmod(0o755)
        self.log = root / "calls.log"
        self.data = root / "data"
        self.env = {
            "PATH": f"{self.bin}:/usr/local/bin:/usr/bin:/bin",
            "FAKE_TRAIND_LOG": str(self.log),
            "TRAIND_PATHS__INBOX": str(self.data / "inbox"),
            "TRAIND_PATHS__CHECKPOINTS": str(self.data / "checkpoints"),
            "TRAIND_PATHS__STATE": str(self.data / "nested" / "state"),
        }

    def command(self, *args: str) -> list[str]:
        return [self.shell, str(ENTRYPOINT), *args]

    def run(self, *args: str, **env: str) -> Run:
        proc = subprocess.Popen(
            self.command(*args),
            env={**self.env, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        _, stderr = proc.communicate(timeout=60)
        return Run(proc.returncode, proc.pid, stderr, self.calls())

    def calls(self) -> list[Call]:
        if not self.log.exists():
            return []
        calls, pid, token, args = [], 0, "", []
        for line in self.log.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "pid":
                pid, token, args = int(value), "", []
            elif key == "token":
                token = value
            elif key == "arg":
                args.append(value)
            elif line == "end":
                calls.append(Call(pid, token, args))
        return calls


@pytest.fixture(params=SHELLS)
def harness(request, tmp_path) -> Harness:
    return Harness(tmp_path, request.param)


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed (dev extras)")
def test_shellcheck_passes():
    result = subprocess.run(
        [SHELLCHECK, "--norc", "--severity=style", str(ENTRYPOINT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed (dev extras)")
def test_shellcheck_harness_catches_mistakes(tmp_path):
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\nset -eu\nexec traind serve $@\n")
    result = subprocess.run(
        [SHELLCHECK, "--norc", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0 and "SC2068" in result.stdout


def test_entrypoint_is_executable_posix_sh():
    assert os.access(ENTRYPOINT, os.X_OK)
    lines = ENTRYPOINT.read_text().splitlines()
    assert lines[0] == "#!/bin/sh"
    assert "set -eu" in lines


def test_migrates_then_execs_serve_with_the_arguments(harness):
    args = ["--config", "/etc/traind/my settings.toml", "--log-level", "DEBUG"]
    run = harness.run(*args)
    assert run.returncode == 0, run.stderr
    migrate, serve = run.calls
    assert migrate.args == ["migrate", "--config", "/etc/traind/my settings.toml"]
    assert serve.args == ["serve", *args]
    # exec: serve is the process that was started (the shell became it); migrate was a child.
    assert serve.pid == run.pid
    assert migrate.pid != run.pid


def test_no_arguments_serve_with_the_settings_from_the_environment(harness):
    run = harness.run()
    assert run.returncode == 0, run.stderr
    assert [call.args for call in run.calls] == [["migrate"], ["serve"]]


def test_a_leading_serve_is_the_same_as_none(harness):
    run = harness.run("serve", "--log-level", "WARNING")
    assert [call.args for call in run.calls] == [["migrate"], ["serve", "--log-level", "WARNING"]]


@pytest.mark.parametrize(
    "args",
    [["--config", "/c.toml"], ["--config=/c.toml"], ["-c", "/c.toml"], ["-c/c.toml"]],
    ids=["long", "long=", "short", "short-attached"],
)
def test_migrate_gets_the_config_in_every_spelling(harness, args):
    run = harness.run("--log-level", "INFO", *args)
    migrate, serve = run.calls
    assert migrate.args == ["migrate", "--config", "/c.toml"]
    assert serve.args == ["serve", "--log-level", "INFO", *args]


def test_a_failed_migration_stops_the_start_with_its_status(harness):
    run = harness.run("--log-level", "INFO", FAKE_MIGRATE_STATUS="7")
    assert run.returncode == 7
    assert [call.args[0] for call in run.calls] == ["migrate"]


def test_serves_exit_status_is_the_containers(harness):
    assert harness.run(FAKE_SERVE_STATUS="3").returncode == 3


def test_traind_bin_names_the_executable(harness, tmp_path):
    other = tmp_path / "elsewhere" / "traind-custom"
    other.parent.mkdir()
    shutil.move(harness.bin / "traind", other)
    assert harness.run().returncode != 0  # not on PATH any more
    run = harness.run(TRAIND_BIN=str(other))
    assert run.returncode == 0, run.stderr
    assert [call.args[0] for call in run.calls] == ["migrate", "serve"]


def test_makes_the_data_folders(harness):
    run = harness.run()
    assert run.returncode == 0, run.stderr
    for name in ("TRAIND_PATHS__INBOX", "TRAIND_PATHS__CHECKPOINTS", "TRAIND_PATHS__STATE"):
        assert Path(harness.env[name]).is_dir()


def test_a_data_folder_that_cannot_be_made_stops_the_start(harness):
    blocker = harness.data / "file"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    run = harness.run(TRAIND_PATHS__CHECKPOINTS=str(blocker / "checkpoints"))
    assert run.returncode == 2
    assert "cannot create" in run.stderr and str(blocker) in run.stderr
    assert run.calls == []


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run the script as the images' unprivileged uid",
)
def test_a_data_folder_the_user_cannot_write_stops_the_start():
    # Outside pytest's tmp_path, whose parents only root may enter.
    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        root.chmod(0o755)
        script = root / "entrypoint.sh"
        shutil.copy(ENTRYPOINT, script)
        script.chmod(0o755)
        read_only = root / "inbox"
        read_only.mkdir(mode=0o755)  # root's, as a bind-mounted host folder would be
        result = subprocess.run(
            ["setpriv", "--reuid=10001", "--regid=10001", "--clear-groups", str(script)],
            env={
                "PATH": "/usr/bin:/bin",
                "TRAIND_PATHS__INBOX": str(read_only),
                "TRAIND_BIN": "false",
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr  # not false's 1: it never got that far
    assert f"{read_only} is not writable by uid 10001 gid 10001" in result.stderr
    assert "chown the host folder to 10001:10001" in result.stderr


def test_the_token_can_come_from_a_file(harness, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret-token\n")
    run = harness.run(TRAIND_TOKEN_FILE=str(secret))
    assert run.returncode == 0, run.stderr
    assert [call.token for call in run.calls] == ["s3cret-token", "s3cret-token"]
    # An explicit token wins over the file.
    run = harness.run(TRAIND_TOKEN_FILE=str(secret), TRAIND_SERVER__TOKEN="explicit")
    assert run.calls[-1].token == "explicit"


@pytest.mark.parametrize("content", [None, ""], ids=["missing", "empty"])
def test_a_bad_token_file_stops_the_start(harness, tmp_path, content):
    secret = tmp_path / "secret"
    if content is not None:
        secret.write_text(content)
    run = harness.run(TRAIND_TOKEN_FILE=str(secret))
    assert run.returncode == 2
    assert str(secret) in run.stderr
    assert run.calls == []


def test_other_commands_run_as_they_are(harness):
    run = harness.run("traind", "status", "--json")
    assert run.returncode == 0, run.stderr
    (call,) = run.calls  # no migrate
    assert call.args == ["status", "--json"] and call.pid == run.pid
    assert not harness.data.exists()


def test_sigterm_reaches_serve_directly(harness):
    proc = subprocess.Popen(
        harness.command("--log-level", "INFO"),
        env={**harness.env, "FAKE_SERVE_WAITS": "1"},
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: "waiting" in _read(harness.log), what="the fake serve to wait")
        proc.send_signal(signal.SIGTERM)  # what tini forwards on docker stop
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _read(harness.log).splitlines()[-1] == "term"


# ---- the real traind, with the CPU image's environment -----------------------------------


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _wait_for(predicate, *, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _image_env(root: Path) -> dict[str, str]:
    """The CPU image's ENV, with its /data folders moved under ``root``."""
    (cpu,) = [path for path in DOCKERFILES if path.name.endswith(".cpu")]
    env = env_of(stages(parse_dockerfile(cpu.read_text()))[-1])
    image = {k: v for k, v in env.items() if k.startswith("TRAIND_") or k == "PYTHONUNBUFFERED"}
    for key, value in image.items():
        if key.startswith("TRAIND_PATHS__"):
            assert value.startswith("/data/")
            image[key] = str(root / value.removeprefix("/"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}
    venv_bin = Path(sys.executable).parent
    return {
        **base,
        **image,
        "PATH": f"{venv_bin}:{base.get('PATH', '/usr/bin:/bin')}",
        "TRAIND_BIN": str(venv_bin / "traind"),
    }


@pytest.fixture
def real_traind() -> Path:
    traind = Path(sys.executable).parent / "traind"
    # make setup installs the project (pip install -e), so the real command is there.
    assert traind.exists(), "traind is not installed in this venv: run make setup"
    return traind


@pytest.mark.usefixtures("real_traind")
def test_real_traind_without_a_token_migrates_then_refuses_the_public_bind(tmp_path):
    env = _image_env(tmp_path)
    assert env["TRAIND_SERVER__HOST"] == "0.0.0.0"
    result = subprocess.run(
        [str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "TRAIND_SERVER__TOKEN" in result.stdout + result.stderr
    # migrate ran first and made the ledger; the data folders are there.
    assert "upgraded" in result.stdout
    assert (tmp_path / "data/state/ledger.db").is_file()
    assert (tmp_path / "data/inbox").is_dir() and (tmp_path / "data/checkpoints").is_dir()


@contextlib.contextmanager
def _started(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.usefixtures("real_traind")
def test_real_traind_serves_until_ready_and_stops_cleanly_on_sigterm(tmp_path):
    port = _free_port()
    env = _image_env(tmp_path)
    env.update(
        # The image binds 0.0.0.0 inside the container's own network namespace; here, on
        # the test machine, loopback it is.
        TRAIND_SERVER__HOST="127.0.0.1",
        TRAIND_SERVER__PORT=str(port),
        TRAIND_SERVER__TOKEN="a-test-token",
        TRAIND_MODEL__PRESET="test",
        TRAIND_TRAIN__DEVICE="cpu",
        TRAIND_WORKER__STOP_GRACE_S="30",
        OMP_NUM_THREADS="1",
    )
    log = tmp_path / "serve.log"
    with _started([str(ENTRYPOINT), "--log-level", "INFO"], env, log) as proc:
        _wait_for(
            lambda: proc.poll() is not None or _healthcheck(env).returncode == 0,
            what="docker/healthcheck.py to see /readyz ready",
            timeout=90,
        )
        assert proc.poll() is None, _read(log)
        assert _healthcheck(env).stdout.startswith("ready")
        # exec: the process started is traind serve itself, not a shell waiting on it.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"serve" in cmdline and not any(b"entrypoint" in part for part in cmdline)
        proc.send_signal(signal.SIGTERM)  # what tini forwards on docker stop
        assert proc.wait(timeout=60) == 0, _read(log)
    unhealthy = _healthcheck(env)
    assert unhealthy.returncode == 1 and unhealthy.stdout.startswith("no answer")
