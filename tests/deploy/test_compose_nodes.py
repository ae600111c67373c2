"""docker/compose.nodes.yaml: parses, and runs a multi-machine group as traind needs.

Read with PyYAML like docker/compose.yaml (tests/deploy/test_compose.py); compose's own
interpolation is done here for the ``${VAR:?...}`` and ``${VAR:-default}`` forms it uses.
"""

from __future__ import annotations

import re

import pytest
import yaml

from service.config.settings import load_settings
from tests.deploy.deployfiles import DOCKER, SHUTDOWN_MARGIN_S, STOP_GRACE_S, compose_seconds

FILE = DOCKER / "compose.nodes.yaml"
CONFIG = yaml.safe_load(FILE.read_text(encoding="utf-8"))
SERVICES = CONFIG["services"]
VALUES = {
    "TRAIND_SHARED": "/srv/traind",
    "TRAIND_NNODES": "2",
    "TRAIND_NPROC_PER_NODE": "8",
    "TRAIND_RDZV_ENDPOINT": "10.0.0.1:29500",
    "TRAIND_TOKEN": "a-long-random-secret-token-for-tests",
    "TRAIND_NODE_RANK": "1",
}
each_service = pytest.mark.parametrize("name", ["node0", "node"])


def interpolate(value: str) -> str:
    def one(match: re.Match[str]) -> str:
        name, form, rest = match.group(1), match.group(2), match.group(3)
        if name in VALUES:
            return VALUES[name]
        assert form == ":-", f"{name} is required ({rest})"
        return rest

    return re.sub(r"\$\{([A-Z_]+)(?:(:[?-])([^}]*))?\}", one, value)


def test_the_services() -> None:
    assert set(SERVICES) == {"node0", "node"}
    assert "command" not in SERVICES["node0"]  # the entrypoint's default: migrate, serve
    assert SERVICES["node"]["command"] == ["traind", "node"]
    assert SERVICES["node"]["healthcheck"] == {"disable": True}


@each_service
def test_host_network_shared_folders_and_gpus(name: str) -> None:
    service = SERVICES[name]
    assert service["network_mode"] == "host" and "ports" not in service
    mounts = dict(interpolate(volume).rsplit(":", 1) for volume in service["volumes"])
    assert mounts == {
        "/srv/traind/data_inbox": "/data/inbox",
        "/srv/traind/checkpoints": "/data/checkpoints",
        "/srv/traind/state": "/data/state",
    }
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert service["restart"] == "unless-stopped"
    assert compose_seconds(service["stop_grace_period"]) >= STOP_GRACE_S + SHUTDOWN_MARGIN_S


@each_service
def test_its_variables_are_the_groups_settings(name: str, clean_env, monkeypatch) -> None:
    for key, value in SERVICES[name]["environment"].items():
        assert key.startswith("TRAIND_")
        monkeypatch.setenv(key, interpolate(str(value)))
    settings = load_settings()
    assert settings.world_size() == 16
    assert settings.worker.rdzv_endpoint == "10.0.0.1:29500"
    assert settings.worker.node_rank == (0 if name == "node0" else 1)
    if name == "node0":  # host network: the API stays on the host's loopback
        assert settings.server.host == "127.0.0.1" and settings.server.token
