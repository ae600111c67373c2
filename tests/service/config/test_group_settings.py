"""The ``[worker]`` settings of a torchrun group: defaults, what they refuse and how the
message names the key, the trainer's DistConfig from them, and a reload that needs a
restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config.reload import FIXED, reread
from service.config.settings import SettingsError, load_settings


def test_one_process_by_default(clean_env: Path) -> None:
    settings = load_settings()
    worker = settings.worker
    assert (worker.nproc_per_node, worker.nnodes, worker.node_rank) == (1, 1, 0)
    assert worker.rdzv_endpoint is None
    assert settings.world_size() == 1
    dist = settings.dist_config()
    assert (dist.strategy, dist.timeout_s) == ("auto", 240.0)


def test_world_size_and_dist_config_from_the_file(clean_env: Path) -> None:
    path = clean_env / "traind.toml"
    path.write_text(
        '[worker]\nnproc_per_node = 4\nnnodes = 2\nrdzv_endpoint = "10.0.0.1:29500"\n'
        'strategy = "fsdp"\ncollective_timeout_s = 90\n',
        encoding="utf-8",
    )
    settings = load_settings(path)
    assert settings.world_size() == 8
    dist = settings.dist_config()
    assert (dist.strategy, dist.timeout_s) == ("fsdp", 90.0)


@pytest.mark.parametrize(
    ("worker", "message"),
    [
        (
            {"nnodes": 2},
            'load_settings() argument: worker: worker.nnodes = 2 needs worker.rdzv_endpoint = "host:port"',
        ),
        (
            {"node_rank": 1},
            "load_settings() argument: worker: worker.node_rank = 1 must be below "
            "worker.nnodes = 1",
        ),
        (
            {"nnodes": 2, "rdzv_endpoint": "node0"},
            "load_settings() argument: worker.rdzv_endpoint: 'node0' is not host:port",
        ),
        (
            {"nnodes": 2, "rdzv_endpoint": "node0:99999"},
            "load_settings() argument: worker.rdzv_endpoint: 'node0:99999' is not host:port",
        ),
        ({"nproc_per_node": 0}, "worker.nproc_per_node: Input should be greater than or equal"),
        ({"strategy": "zero3"}, "worker.strategy: Input should be 'auto', 'ddp' or 'fsdp'"),
        ({"collective_timeout_s": 0}, "worker.collective_timeout_s: Input should be greater"),
    ],
    ids=["no-endpoint", "rank-out-of-range", "no-port", "bad-port", "nproc", "strategy", "timeout"],
)
def test_refused_naming_the_key(clean_env: Path, worker: dict, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(worker=worker)
    assert message in caught.value.problems[0]


def test_an_ipv6_endpoint_and_a_rank_from_the_environment(clean_env, monkeypatch) -> None:
    monkeypatch.setenv("TRAIND_WORKER__NODE_RANK", "1")
    settings = load_settings(worker={"nnodes": 2, "rdzv_endpoint": "[fd00::1]:29500"})
    assert (settings.worker.node_rank, settings.worker.rdzv_endpoint) == (1, "[fd00::1]:29500")


def test_a_reload_refuses_them_until_a_restart(clean_env: Path) -> None:
    path = clean_env / "traind.toml"
    path.write_text("[worker]\nnproc_per_node = 1\n", encoding="utf-8")
    current = load_settings(path)
    path.write_text('[worker]\nnproc_per_node = 2\nstrategy = "ddp"\n', encoding="utf-8")
    result = reread(current)
    assert result.event_fields()["refused"] == {
        "worker.nproc_per_node": FIXED["worker"],
        "worker.strategy": FIXED["worker"],
    }
    assert "torchrun group" in FIXED["worker"] and FIXED["worker"].startswith("needs a restart")
    assert result.settings.worker.nproc_per_node == 1
