"""docker/Dockerfile.cpu and docker/Dockerfile.cuda: hadolint, and what the images promise.

No docker engine runs here, so the images are never built in the suite. What is checked
instead: hadolint (every rule, the style ones included; base images only from Docker
Hub), and, read from the files, the properties a deployment relies on: pinned bases, a
builder stage whose venv the runtime copies, tini as PID 1 in exec form, a fixed
non-root UID, a HEALTHCHECK on /readyz without curl, the data volumes matching the
TRAIND_PATHS__* variables, and a build context whose COPY sources exist and are not
excluded by .dockerignore. The builder's COPY list is also shown to be enough to build a
complete traind wheel (migrations included), the way the builder stage installs it.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from service.config.settings import load_settings
from tests.deploy.deployfiles import (
    DOCKERFILES,
    HEALTHCHECK,
    REPO,
    Instruction,
    env_of,
    find_tool,
    parse_dockerfile,
    stages,
)

HADOLINT = find_tool("hadolint")
needs_hadolint = pytest.mark.skipif(
    HADOLINT is None, reason="hadolint is not installed (pip install -e '.[dev]' brings it)"
)
# Every rule counts (style included); images only from Docker Hub.
HADOLINT_CONFIG = "failure-threshold: style\ntrustedRegistries:\n  - docker.io\n"

DATA = {"INBOX": "/data/inbox", "CHECKPOINTS": "/data/checkpoints", "STATE": "/data/state"}
PORT = "8321"

by_name = pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)


def _final(dockerfile: Path) -> list[Instruction]:
    return stages(parse_dockerfile(dockerfile.read_text(encoding="utf-8")))[-1]


def _one(stage: list[Instruction], name: str) -> Instruction:
    found = [i for i in stage if i.name == name]
    assert len(found) == 1, f"{len(found)} {name} instructions in the final stage"
    return found[0]


def _hadolint(tmp_path: Path, dockerfile: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT is not None
    config = tmp_path / "hadolint.yaml"
    config.write_text(HADOLINT_CONFIG)
    return subprocess.run(
        [HADOLINT, "--no-color", "--config", str(config), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_both_images_exist():
    assert [path.name for path in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.cuda"]


@needs_hadolint
@by_name
def test_hadolint_passes(tmp_path, dockerfile):
    result = _hadolint(tmp_path, dockerfile)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_hadolint
def test_hadolint_harness_catches_mistakes(tmp_path):
    """The check above is not vacuous: an unpinned base and a cached pip install fail."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install traind\n")
    result = _hadolint(tmp_path, bad)
    assert result.returncode != 0
    assert {"DL3007", "DL3013", "DL3042"} <= set(re.findall(r"DL\d{4}", result.stdout))


@by_name
def test_every_hadolint_ignore_says_why(dockerfile):
    lines = dockerfile.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+(global\s+)?ignore=", line):
            before = lines[number - 1].strip() if number else ""
            assert before.startswith("#") and "hadolint" not in before, (
                f"{dockerfile.name}:{number + 1}: an ignore needs a comment saying why just above"
            )


@by_name
def test_base_images_are_pinned(dockerfile):
    froms = [i for i in parse_dockerfile(dockerfile.read_text()) if i.name == "FROM"]
    assert len(froms) >= 2, "multi-stage: a builder and a runtime stage"
    for instruction in froms:
        image = instruction.args.split()[0]
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name and "/" not in tag and "$" not in image, image
        # An exact release (x.y.z in the tag), never latest or a moving major/minor tag.
        assert tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), image


@by_name
def test_runtime_copies_the_builders_venv(dockerfile):
    instructions = parse_dockerfile(dockerfile.read_text())
    builder, *_, runtime = stages(instructions)
    builder_name = builder[0].args.split()[-1]
    assert re.search(r"\bAS\s+\w+$", builder[0].args, re.IGNORECASE), "the builder is named"
    # The venv's python is a link to the base image's interpreter: same base, same path.
    assert builder[0].args.split()[0] == runtime[0].args.split()[0]
    copies = [i for i in runtime if i.name == "COPY" and i.flags().get("from") == builder_name]
    assert any(i.args.split()[-1] == "/opt/traind/venv" for i in copies)
    # The runtime installs no Python packages of its own: everything comes from the venv.
    assert not any(i.name == "RUN" and "pip install" in i.args for i in runtime)


@by_name
def test_torch_is_the_version_make_setup_installs(dockerfile):
    torch_spec = re.search(r"^TORCH_SPEC \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert torch_spec
    builder = stages(parse_dockerfile(dockerfile.read_text()))[0]
    installs = [i.args for i in builder if i.name == "RUN" and "torch==" in i.args]
    assert len(installs) == 1
    words = shlex.split(installs[0])
    assert torch_spec.group(1) in words
    cpu_index = "https://download.pytorch.org/whl/cpu"
    if dockerfile.name.endswith(".cpu"):
        # Only the CPU build: no CUDA libraries in the CPU image.
        assert words[words.index("--index-url") + 1] == cpu_index
    else:
        assert "--index-url" not in words and "--extra-index-url" not in words


@by_name
def test_tini_is_pid_1_in_exec_form(dockerfile):
    final = _final(dockerfile)
    entrypoint = _one(final, "ENTRYPOINT").exec_form()
    assert entrypoint is not None, "ENTRYPOINT must be a JSON array (exec form)"
    assert entrypoint[:2] == ["/usr/bin/tini", "--"]
    script = entrypoint[2]
    copied = [i for i in final if i.name == "COPY" and i.args.split()[-1] == script]
    assert copied and copied[0].args.split()[-2] == "docker/entrypoint.sh"
    assert copied[0].flags().get("chmod") == "0755"
    apt = " ".join(i.args for i in final if i.name == "RUN" and "apt-get install" in i.args)
    assert re.search(r"\btini\b", apt), "tini comes from the distribution"
    cmd = _one(final, "CMD").exec_form()
    assert cmd == [], "no default arguments: the entrypoint runs traind serve"
    assert _one(final, "STOPSIGNAL").args == "SIGTERM"


@by_name
def test_runs_as_a_fixed_non_root_uid(dockerfile):
    final = _final(dockerfile)
    users = [i.args for i in final if i.name == "USER"]
    assert users, "the final stage sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 1000, "numeric, so runAsNonRoot can check it"
    assert gid.isdigit() and int(gid) >= 1000
    setup = " ".join(i.args for i in final if i.name == "RUN")
    assert f"--uid {uid}" in setup and f"--gid {gid}" in setup


@by_name
def test_healthcheck_asks_readyz_without_curl(dockerfile):
    final = _final(dockerfile)
    check = _one(final, "HEALTHCHECK")
    assert not re.search(r"\b(curl|wget)\b", check.args)
    command = check.exec_form()
    assert command is not None, "exec form: no shell needed"
    assert command[0] == "/opt/traind/venv/bin/python"
    copied = [i for i in final if i.name == "COPY" and i.args.split()[-1] == command[1]]
    assert copied and copied[0].args.split()[-2] == str(HEALTHCHECK.relative_to(REPO))
    assert "/readyz" in HEALTHCHECK.read_text()
    flags = check.flags()
    # Long enough for migrations and the model load before failures count.
    assert _seconds(flags["start-period"]) >= 300
    assert _seconds(flags["timeout"]) < _seconds(flags["interval"])
    # The image has no curl or wget to fall back on.
    apt = " ".join(i.args for i in final if i.name == "RUN")
    assert not re.search(r"\b(curl|wget)\b", apt)


def _seconds(duration: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(s|m|h)", duration).groups()
    return int(number) * {"s": 1, "m": 60, "h": 3600}[unit]


@by_name
def test_data_volumes_port_and_settings(dockerfile, clean_env, monkeypatch):
    final = _final(dockerfile)
    env = env_of(final)
    for key, path in DATA.items():
        assert env[f"TRAIND_PATHS__{key}"] == path
    volume = _one(final, "VOLUME").args
    assert volume.startswith("["), "VOLUME in JSON form"
    assert sorted(re.findall(r'"([^"]+)"', volume)) == sorted(DATA.values())
    assert _one(final, "EXPOSE").args == PORT
    # Inside a container the server must bind all interfaces for the port mapping.
    assert env["TRAIND_SERVER__HOST"] == "0.0.0.0"
    assert env["TRAIND_SERVER__PORT"] == PORT
    # The folders exist in the image, owned by the runtime user, so new volumes are too.
    setup = " ".join(i.args for i in final if i.name == "RUN")
    for path in DATA.values():
        assert path in setup
    # Every TRAIND_* variable is a setting traind accepts.
    for name, value in env.items():
        if name.startswith("TRAIND_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("TRAIND_SERVER__TOKEN", "a-token")
    settings = load_settings()
    assert str(settings.paths.inbox) == DATA["INBOX"]
    assert settings.server.port == int(PORT)


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("!"):
            continue  # no exceptions are used; an exception would need real matching
        bare = pattern.removeprefix("**/")
        if any(
            fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(Path(p).name, bare) for p in prefixes
        ):
            return True
    return False


@by_name
def test_copy_sources_exist_and_reach_the_build_context(dockerfile):
    patterns = _dockerignore()
    assert not any(p.startswith("!") for p in patterns)
    for instruction in parse_dockerfile(dockerfile.read_text()):
        if instruction.name != "COPY" or "from" in instruction.flags():
            continue
        words = [w for w in instruction.args.split() if not w.startswith("--")]
        for source in words[:-1]:
            assert (REPO / source).exists(), f"{dockerfile.name}:{instruction.line}: {source}"
            assert not _ignored(source.rstrip("/"), patterns), f".dockerignore drops {source}"


def test_dockerignore_keeps_data_and_secrets_out():
    patterns = _dockerignore()
    for path in [".venv", "checkpoints", "data_inbox", "state", "demo", ".git", "docker/.env"]:
        assert _ignored(path, patterns), path


@pytest.mark.skipif(sys.platform != "linux", reason="builds a wheel with this venv's setuptools")
def test_the_builders_sources_make_a_complete_wheel(tmp_path):
    """pip install . in the builder stage sees only what it COPYs: that must be enough."""
    pytest.importorskip("setuptools", reason="builds without isolation, with this venv's own")
    builder = stages(parse_dockerfile(DOCKERFILES[0].read_text()))[0]
    src = tmp_path / "src"
    src.mkdir()
    for instruction in builder:
        if instruction.name != "COPY":
            continue
        *sources, _ = instruction.args.split()
        for source in sources:
            origin = REPO / source
            if origin.is_dir():
                shutil.copytree(
                    origin, src / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            else:
                shutil.copy2(origin, src / source)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("--wheel-dir", str(tmp_path / "wheels"), str(src)),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "wheels").glob("traind-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    versions = {
        f"migrations/versions/{p.name}" for p in (REPO / "migrations/versions").glob("*.py")
    }
    assert versions and versions <= names
    assert {"migrations/env.py", "migrations/script.py.mako", "api/cli/main.py"} <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "traind = api.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
