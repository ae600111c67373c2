"""Readers for the deployment files under docker/, and the linters that check them.

Small parsers on purpose: the tests assert what the files say (directives, instructions,
keys), so they must read them the way systemd, docker and compose do for the parts used
here: systemd's line continuations and repeated keys, Dockerfile continuations, comments
and JSON (exec) forms.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
from pathlib import Path

from service.config.sections import WorkerSection

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
UNIT = DOCKER / "traind.service"
SYSUSERS = DOCKER / "traind.sysusers"
ENTRYPOINT = DOCKER / "entrypoint.sh"
HEALTHCHECK = DOCKER / "healthcheck.py"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))

STOP_GRACE_S = WorkerSection.model_fields["stop_grace_s"].default
"""How long traind serve gives the worker to checkpoint on shutdown, by default."""
SHUTDOWN_MARGIN_S = 60.0
"""What a stop timeout must leave beyond the worker's grace: the API's own shutdown."""


def find_tool(name: str) -> str | None:
    """``name`` from this virtual environment (dev extras), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    return shutil.which(name)


# ---- systemd units ---------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file, each a list of (key, value) in order (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a directive: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def directive(section: list[tuple[str, str]], key: str) -> str | None:
    """The value in force: the last assignment of ``key`` (None if never set)."""
    values = [value for name, value in section if name == key]
    return values[-1] if values else None


_SYSTEMD_UNITS = {
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1,
    "sec": 1,
    "": 1,
    "m": 60,
    "min": 60,
    "h": 3600,
    "hr": 3600,
}


def systemd_seconds(span: str) -> float:
    """A systemd time span ("600", "90s", "10min", "1min 30s") in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span.strip())
    assert parts, f"not a time span: {span!r}"
    return sum(float(number) * _SYSTEMD_UNITS[unit] for number, unit in parts)


def compose_seconds(duration: str) -> float:
    """A compose duration ("10m", "1m30s", "600s") in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


# ---- Dockerfiles -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str  # upper case: FROM, RUN, ...
    args: str  # the rest of the instruction, continuations joined
    line: int  # where it starts, 1-based

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form ENTRYPOINT/CMD/HEALTHCHECK CMD, else None."""
        text = self.args
        if self.name == "HEALTHCHECK":
            text = text.split(" CMD ", 1)[1] if " CMD " in f" {text} " else ""
            text = text.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value

    def flags(self) -> dict[str, str]:
        """The leading --name=value options (COPY --from=..., HEALTHCHECK --interval=...)."""
        return dict(re.findall(r"(?:^|\s)--([a-z-]+)=(\S+)", self.args.split(" CMD ", 1)[0]))


def parse_dockerfile(text: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments (and parser directives) end no instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        joined = " ".join(part for part in pending if part)
        pending = []
        name, _, args = joined.partition(" ")
        instructions.append(Instruction(name.upper(), args.strip(), start))
    assert not pending, "the file ends inside a continued instruction"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The build stages, each starting with its FROM."""
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.name == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def env_of(stage: list[Instruction]) -> dict[str, str]:
    """The ENV key=value pairs set in a stage (values unquoted, $PATH left as written)."""
    env: dict[str, str] = {}
    for instruction in stage:
        if instruction.name == "ENV":
            for key, value in re.findall(
                r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', instruction.args
            ):
                env[key] = value.strip('"')
    return env
