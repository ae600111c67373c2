"""The forgetting report of ``eval`` events (docs/events.md) as the API shows it: the
``forgetting`` field of /v1/status and the ``traind_forgetting_*`` gauges of /metrics,
read from a synthetic event log through a real server."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.web.history import forgetting_summary
from tests.api.conftest import LiveApi

SHA_A, SHA_B = "a" * 64, "b" * 64
GAUGES = ("traind_forgetting_worst_increase", "traind_forgetting_drops_measured")


def drop(file: str, sha256: str, *, loss: float, best: float, increase: float) -> dict[str, Any]:
    return {
        "file": file,
        "sha256": sha256,
        "end_step": 40,
        "loss": loss,
        "best": best,
        "best_step": 40,
        "increase": increase,
        "sequences": 16,
    }


def report(*drops: dict[str, Any], total: int, threshold: float | None) -> dict[str, Any]:
    worst = max(drops, key=lambda d: d["increase"])
    return {
        "drops": list(drops),
        "worst": worst,
        "measured": len(drops),
        "drops_total": total,
        "threshold": threshold,
    }


def emit(api: LiveApi, **event: object) -> None:
    """Append one event the way trainer.records.events does (the API only reads the log)."""
    path = api.settings.run_paths().events
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"timestamp": "2026-01-01T00:00:00.000Z", **event}) + "\n")


def gauges(api: LiveApi) -> dict[str, float]:
    """The forgetting gauges of one scrape, by name (absent ones left out)."""
    response = httpx.get(f"{api.url}/metrics", timeout=5)
    assert response.status_code == 200, response.text
    return {
        family.name: family.samples[0].value
        for family in text_string_to_metric_families(response.text)
        if family.name in GAUGES
    }


def test_status_and_metrics_show_the_newest_report(api: LiveApi) -> None:
    # Before any report: null, and no samples.
    emit(api, event="eval", step=20, trigger="interval", val_loss=2.0)
    assert api.get("/v1/status").json()["forgetting"] is None
    assert gauges(api) == {}

    first = drop("000001-a.jsonl", SHA_A, loss=2.31, best=2.1, increase=0.1)
    second = drop("000002-b.jsonl", SHA_B, loss=2.02, best=2.0, increase=0.01)
    emit(
        api,
        event="eval",
        step=40,
        trigger="interval",
        val_loss=2.2,
        forgetting=report(first, second, total=3, threshold=0.1),
    )
    # A later evaluation that measured nothing leaves the report in force.
    emit(api, event="eval", step=50, trigger="file_end", val_loss=2.1)
    # traind eval --checkpoint is not the lineage's: never shown, whatever it carries.
    worse = drop("000001-a.jsonl", SHA_A, loss=9.0, best=2.1, increase=3.29)
    emit(
        api,
        event="eval",
        step=60,
        trigger="checkpoint",
        val_loss=9.0,
        forgetting=report(worse, total=3, threshold=None),
    )

    body = api.get("/v1/status").json()
    assert body["last_eval"]["step"] == 50
    assert body["forgetting"] == {
        "step": 40,
        "worst": first,
        "measured": 2,
        "drops_total": 3,
        "threshold": 0.1,
    }
    assert gauges(api) == {
        "traind_forgetting_worst_increase": pytest.approx(0.1),
        "traind_forgetting_drops_measured": 2,
    }

    # A newer report replaces it (read incrementally), with the guard off.
    emit(
        api,
        event="eval",
        step=70,
        trigger="request",
        val_loss=2.0,
        forgetting=report(second, total=4, threshold=None),
    )
    forgetting = api.get("/v1/status").json()["forgetting"]
    assert (forgetting["step"], forgetting["worst"]["file"]) == (70, "000002-b.jsonl")
    assert (forgetting["measured"], forgetting["drops_total"]) == (1, 4)
    assert forgetting["threshold"] is None
    assert gauges(api) == {
        "traind_forgetting_worst_increase": pytest.approx(0.01),
        "traind_forgetting_drops_measured": 1,
    }


def test_the_openapi_document_describes_the_field(api: LiveApi) -> None:
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    field = schemas["StatusOut"]["properties"]["forgetting"]
    assert {"$ref": "#/components/schemas/ForgettingOut"} in field["anyOf"]
    assert "worst drop" in field["description"]
    report_fields = schemas["ForgettingOut"]["properties"]
    assert set(report_fields) == {"step", "worst", "measured", "drops_total", "threshold"}
    drop_fields = schemas["ForgettingDropOut"]["properties"]
    assert set(drop_fields) == set(drop("f", SHA_A, loss=1, best=1, increase=0))
    for name, spec in {**report_fields, **drop_fields}.items():
        assert spec.get("description"), name


def test_without_a_worst_the_drop_that_rose_most_is_taken() -> None:
    low = drop("000001-a.jsonl", SHA_A, loss=2.2, best=2.0, increase=0.1)
    high = drop("000002-b.jsonl", SHA_B, loss=3.0, best=2.0, increase=0.5)
    event = {"event": "eval", "step": 9, "forgetting": {"drops": [low, high], "measured": 2}}
    summary = forgetting_summary(event)
    assert summary is not None
    assert summary["worst"] == high
    assert (summary["measured"], summary["drops_total"], summary["threshold"]) == (2, None, None)


@pytest.mark.parametrize(
    "forgetting",
    [None, "bad", [], {}, {"drops": []}, {"drops": [{"file": "x", "increase": "high"}]}],
)
def test_a_missing_or_unreadable_report_is_none(forgetting: object) -> None:
    assert forgetting_summary({"event": "eval", "step": 9, "forgetting": forgetting}) is None
    assert forgetting_summary(None) is None
