"""GET /metrics: Prometheus metrics read from the ledger at scrape time, against a real
uvicorn server; the ledger is written the way the worker and the watcher write it."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from api.web.metrics import step_histogram
from service.ledger import DesiredState, FileState, Ledger, WorkerState
from service.worker.steptimes import BOUNDS, StepTimes
from tests.api.live_server import Live, live_traind

pytestmark = pytest.mark.usefixtures("clean_env")

STEP_EXTRA: dict[str, Any] = {
    "tokens_processed": 123_456,
    "nan_skips_total": 3,
    "step_seconds_buckets": {"le": [0.05, 0.1, 0.5, 1.0], "counts": [2, 10, 19, 20]},
    "step_seconds_sum": 4.25,
    "step_seconds_count": 21,
    # A CUDA worker's report; a CPU one has null device fields (not exposed then).
    "memory": {
        "host_rss_bytes": 900_000_000,
        "device_allocated_bytes": 2_000_000_000,
        "device_reserved_bytes": 3_000_000_000,
        "device_peak_bytes": 2_500_000_000,
        "estimate_bytes": 2_400_000_000,
    },
}


def scrape(live: Live, **headers: str) -> dict[str, tuple[str, list[Sample]]]:
    """name -> (type, samples) of one scrape, parsed by prometheus_client's own parser."""
    response = httpx.get(f"{live.url}/metrics", headers=headers, timeout=5)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        family.name: (family.type, family.samples)
        for family in text_string_to_metric_families(response.text)
    }


def value(families: dict[str, tuple[str, list[Sample]]], name: str) -> float:
    (sample,) = families[name][1]
    return sample.value


def beat(ledger: Ledger, **fields: Any) -> None:
    values: dict[str, Any] = {
        "worker_id": "w-1",
        "pid": 4242,
        "state": WorkerState.TRAINING,
        "model_loaded": True,
        "started_at": datetime.now(UTC),
    }
    ledger.heartbeat(**(values | fields))


def queue_file(ledger: Ledger, name: str) -> None:
    ledger.record_file(
        name=name, path=f"/inbox/{name}", sha256=name * 8, size=10, format="text", n_examples=1
    )


def test_scrape_shows_the_ledger(tmp_path: Path) -> None:
    with live_traind(tmp_path) as live:
        assert live.daemon is not None
        ledger = live.daemon.ledger
        beat(
            ledger,
            global_step=1400,
            loss=2.5,
            lr=3e-4,
            tokens_per_s=5120.0,
            extra=STEP_EXTRA,
        )
        ledger.record_checkpoint(name="step-00001000", kind="step", step=1000, path="/c/1000")
        time.sleep(0.5)
        newest_at = time.monotonic()
        ledger.record_checkpoint(name="step-00001400", kind="step", step=1400, path="/c/1400")
        for name in ("a", "b"):
            queue_file(ledger, name)
        ledger.record_rejected(name="bad", path="/inbox/bad", reason="line 1: not JSON")
        ledger.set_desired_state(DesiredState.PAUSED)
        families = scrape(live)
        since_newest = time.monotonic() - newest_at

    assert families["traind_global_step"][0] == "gauge"
    assert value(families, "traind_global_step") == 1400
    assert families["traind_tokens_processed"][0] == "counter"
    assert families["traind_tokens_processed"][1][0].name == "traind_tokens_processed_total"
    assert value(families, "traind_tokens_processed") == 123_456
    assert families["traind_nan_skips"][0] == "counter"
    assert value(families, "traind_nan_skips") == 3
    assert value(families, "traind_train_loss") == 2.5
    assert value(families, "traind_learning_rate") == pytest.approx(3e-4)
    assert value(families, "traind_tokens_per_second") == 5120.0
    assert value(families, "traind_paused") == 1
    assert value(families, "traind_worker_up") == 1
    assert 0 <= value(families, "traind_worker_heartbeat_age_seconds") < 5
    # Measured from the newest checkpoint, not the first.
    assert 0 <= value(families, "traind_checkpoint_age_seconds") <= since_newest + 0.05

    kind, samples = families["traind_queue_files"]
    assert kind == "gauge"
    by_state = {s.labels["state"]: s.value for s in samples}
    assert by_state == {state.value: 0 for state in FileState} | {"queued": 2, "rejected": 1}

    kind, samples = families["traind_step_duration_seconds"]
    assert kind == "histogram"
    buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket")}
    assert buckets == {"0.05": 2, "0.1": 10, "0.5": 19, "1.0": 20, "+Inf": 21}
    totals = {s.name: s.value for s in samples if not s.name.endswith("_bucket")}
    assert totals == {
        "traind_step_duration_seconds_count": 21,
        "traind_step_duration_seconds_sum": 4.25,
    }
    assert value(families, "traind_worker_resident_memory_bytes") == 900_000_000
    assert value(families, "traind_device_memory_allocated_bytes") == 2_000_000_000
    assert value(families, "traind_device_memory_reserved_bytes") == 3_000_000_000
    assert value(families, "traind_device_memory_peak_bytes") == 2_500_000_000
    assert value(families, "traind_memory_estimate_bytes") == 2_400_000_000
    for name, (kind, _) in families.items():
        assert name.startswith("traind_")
        assert (kind == "counter") == (name in ("traind_tokens_processed", "traind_nan_skips"))


def test_without_a_worker_only_what_is_known(tmp_path: Path) -> None:
    with live_traind(tmp_path) as live:
        assert live.daemon is not None
        empty = scrape(live)
        live.daemon.ledger.record_checkpoint(name="gold", kind="gold", step=700, path="/c/gold")
        with_checkpoint = scrape(live)
    assert set(empty) == {
        "traind_worker_up",
        "traind_queue_files",
        "traind_paused",
        "traind_error",
        "traind_disk_free_bytes",
    }
    assert value(empty, "traind_error") == 0
    assert {s.labels["folder"] for s in empty["traind_disk_free_bytes"][1]} == {
        "checkpoints",
        "state",
    }
    assert value(empty, "traind_worker_up") == 0
    assert value(empty, "traind_paused") == 0
    assert {s.value for s in empty["traind_queue_files"][1]} == {0}
    assert len(empty["traind_queue_files"][1]) == len(FileState)
    # No heartbeat yet: the step is the newest checkpoint's.
    assert value(with_checkpoint, "traind_global_step") == 700
    assert "traind_checkpoint_age_seconds" in with_checkpoint


def test_a_stale_or_unloaded_worker_is_down(tmp_path: Path) -> None:
    with live_traind(tmp_path, worker={"heartbeat_s": 0.1}) as live:
        assert live.daemon is not None
        ledger = live.daemon.ledger
        beat(ledger, model_loaded=False, global_step=5, loss=1.0, extra=STEP_EXTRA)
        unloaded = scrape(live)
        beat(ledger, global_step=6, loss=1.0, lr=1e-3, extra=STEP_EXTRA)
        time.sleep(1.2)  # over 10 heartbeat intervals of silence: stale
        stale = scrape(live)
    assert value(unloaded, "traind_worker_up") == 0
    assert value(unloaded, "traind_train_loss") == 1.0  # fresh, only not loaded yet
    assert value(stale, "traind_worker_up") == 0
    assert value(stale, "traind_worker_heartbeat_age_seconds") >= 1.0
    # Live gauges vanish with the heartbeat; the last known totals stay.
    for name in ("traind_train_loss", "traind_learning_rate", "traind_tokens_per_second"):
        assert name not in stale
    assert value(stale, "traind_global_step") == 6
    assert value(stale, "traind_tokens_processed") == 123_456
    assert "traind_step_duration_seconds" in stale


def test_openmetrics_when_asked_and_a_bad_accept_header_is_harmless(tmp_path: Path) -> None:
    with live_traind(tmp_path) as live:
        assert live.daemon is not None
        beat(live.daemon.ledger, global_step=1, extra=STEP_EXTRA)
        accept = "application/openmetrics-text; version=1.0.0"
        openmetrics = httpx.get(f"{live.url}/metrics", headers={"Accept": accept}, timeout=5)
        garbled = scrape(live, Accept="text/plain; version=x.y")
    assert openmetrics.status_code == 200
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")
    assert "traind_tokens_processed_total 123456" in openmetrics.text
    assert value(garbled, "traind_global_step") == 1


def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    with live_traind(tmp_path / "one") as one, live_traind(tmp_path / "two") as two:
        assert one.daemon is not None
        beat(one.daemon.ledger, global_step=11)
        assert value(scrape(one), "traind_global_step") == 11
        assert "traind_global_step" not in scrape(two)
    global_names = {family.name for family in REGISTRY.collect()}
    assert not any(name.startswith("traind_") for name in global_names)


def test_the_workers_step_times_export_is_exposed_whole() -> None:
    times = StepTimes()
    for step, seconds in enumerate([0.004, 0.1, 0.1, 3.0, 500.0], start=1):
        times.observe(step, seconds)
    family = step_histogram(times.export())
    assert family is not None
    buckets = [(s.labels["le"], s.value) for s in family.samples if s.name.endswith("_bucket")]
    assert [le for le, _ in buckets] == [*(str(float(b)) for b in BOUNDS), "+Inf"]
    counts = dict(buckets)
    assert (counts["0.005"], counts["0.1"], counts["5.0"], counts["+Inf"]) == (1, 3, 4, 5)
    sums = {s.name: s.value for s in family.samples if not s.name.endswith("_bucket")}
    assert sums == {
        "traind_step_duration_seconds_count": 5,
        "traind_step_duration_seconds_sum": pytest.approx(503.204),
    }


@pytest.mark.parametrize(
    ("extra", "buckets", "total"),
    [
        # The worker may list +Inf itself, as a number-like string (JSON has no infinity).
        (
            {"step_seconds_buckets": {"le": [1, "+Inf"], "counts": [4, 6]}},
            {"1.0": 4, "+Inf": 6},
            None,
        ),
        (
            {
                "step_seconds_buckets": {"le": [0.5, "inf"], "counts": [1, 2]},
                "step_seconds_count": 2,
                "step_seconds_sum": 0.9,
            },
            {"0.5": 1, "+Inf": 2},
            0.9,
        ),
        # No count given: the last bucket's.
        ({"step_seconds_buckets": {"le": [2], "counts": [3]}}, {"2.0": 3, "+Inf": 3}, None),
    ],
)
def test_step_histogram_shapes(
    extra: dict[str, Any], buckets: dict[str, float], total: float | None
) -> None:
    family = step_histogram(extra)
    assert family is not None
    got = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert got == buckets
    sums = [s.value for s in family.samples if s.name.endswith("_sum")]
    assert sums == ([] if total is None else [total])


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"step_seconds_buckets": "nope"},
        {"step_seconds_buckets": {"le": [1, 2], "counts": [1]}},  # lengths differ
        {"step_seconds_buckets": {"le": [2, 1], "counts": [1, 2]}},  # bounds not ascending
        {"step_seconds_buckets": {"le": [1, 2], "counts": [3, 2]}},  # counts not cumulative
        {"step_seconds_buckets": {"le": [1], "counts": [-1]}},
        {"step_seconds_buckets": {"le": ["x"], "counts": [1]}},
        {"step_seconds_buckets": {"le": [1], "counts": [True]}},
        {"step_seconds_buckets": {"le": [1], "counts": [5]}, "step_seconds_count": 4},
        {"step_seconds_buckets": {"le": [], "counts": []}},
        {"step_seconds_buckets": {"le": [math.nan], "counts": [1]}},
    ],
)
def test_malformed_step_histograms_are_left_out(extra: dict[str, Any]) -> None:
    assert step_histogram(extra) is None
