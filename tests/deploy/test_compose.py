"""docker/compose.yaml: parses, and says what a traind deployment needs.

No compose implementation runs here (no docker engine, no compose plugin), so the file is
read with PyYAML (merge keys included, as compose reads them) and checked against the
images and the unit: loopback-only ports, the GPU reservation, a stop grace period that
lets the worker checkpoint, the three named volumes on the images' data folders, and a
token that must be given. Not covered: compose's own schema validation and variable
interpolation (the `${TRAIND_TOKEN:?...}` form is checked by pattern).
"""

from __future__ import annotations

import re

import pytest
import yaml

from service.config.settings import load_settings
from tests.deploy.deployfiles import (
    COMPOSE,
    DOCKER,
    SHUTDOWN_MARGIN_S,
    STOP_GRACE_S,
    UNIT,
    compose_seconds,
    directive,
    env_of,
    parse_dockerfile,
    parse_unit,
    stages,
    systemd_seconds,
)

CONFIG = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
SERVICES = CONFIG["services"]
VOLUMES = {"inbox": "/data/inbox", "checkpoints": "/data/checkpoints", "state": "/data/state"}

each_service = pytest.mark.parametrize("name", sorted(SERVICES))


def _image_final_stage(name: str):
    build = SERVICES[name]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    dockerfile = context / build["dockerfile"]
    return stages(parse_dockerfile(dockerfile.read_text()))[-1]


def test_the_services():
    assert set(SERVICES) == {"traind", "traind-gpu"}
    assert "profiles" not in SERVICES["traind"], "the CPU service is the default"
    assert SERVICES["traind-gpu"]["profiles"] == ["gpu"]


@pytest.mark.parametrize(
    ("name", "dockerfile"), [("traind", "Dockerfile.cpu"), ("traind-gpu", "Dockerfile.cuda")]
)
def test_builds_from_the_repository_root(name, dockerfile):
    build = SERVICES[name]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == DOCKER.parent  # the Dockerfiles COPY the packages from the root
    assert (context / build["dockerfile"]) == DOCKER / dockerfile


def test_the_gpu_service_reserves_nvidia_gpus():
    devices = SERVICES["traind-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "deploy" not in SERVICES["traind"]


@each_service
def test_ports_are_published_on_loopback_only(name):
    ports = SERVICES[name]["ports"]
    assert ports
    exposed = {i.args for i in _image_final_stage(name) if i.name == "EXPOSE"}
    for port in ports:
        assert isinstance(port, str), "short syntax as a string (YAML reads 8321:8321 oddly)"
        host, host_port, container_port = port.split(":")
        assert host == "127.0.0.1"
        assert container_port in exposed and host_port.isdigit()


@each_service
def test_stop_grace_period_lets_the_worker_checkpoint(name):
    service = SERVICES[name]
    assert service.get("stop_signal", "SIGTERM") == "SIGTERM"
    grace = compose_seconds(service["stop_grace_period"])
    assert grace >= STOP_GRACE_S + SHUTDOWN_MARGIN_S
    # As long as systemd waits for the same daemon.
    unit_stop = directive(parse_unit(UNIT.read_text())["Service"], "TimeoutStopSec")
    assert unit_stop is not None and grace >= systemd_seconds(unit_stop)


@each_service
def test_the_data_lives_in_named_volumes_on_the_images_folders(name):
    service = SERVICES[name]
    mounts = dict(volume.split(":", 1) for volume in service["volumes"])
    assert mounts == VOLUMES
    env = env_of(_image_final_stage(name))
    for volume, path in VOLUMES.items():
        assert env[f"TRAIND_PATHS__{volume.upper()}"] == path
    assert set(CONFIG["volumes"]) == set(VOLUMES)


@each_service
def test_restarts_and_relies_on_the_images_init(name):
    service = SERVICES[name]
    assert service["restart"] == "unless-stopped"
    assert not service.get("init"), "tini is already PID 1 in the images"


@each_service
def test_the_token_is_required_and_a_setting(name, clean_env, monkeypatch):
    env = SERVICES[name]["environment"]
    token = env["TRAIND_SERVER__TOKEN"]
    # ${VAR:?message}: compose refuses to start without it (no default, no empty token).
    assert re.fullmatch(r"\$\{TRAIND_TOKEN:\?[^}]+\}", token)
    for key, value in env.items():
        assert key.startswith("TRAIND_")
        monkeypatch.setenv(key, "a-token" if key == "TRAIND_SERVER__TOKEN" else str(value))
    assert load_settings().server.token == "a-token"


def test_no_secret_is_written_in_the_file():
    text = COMPOSE.read_text()
    assert not re.search(r"TOKEN:\s*[\"']?[A-Za-z0-9_-]{16,}", text)
