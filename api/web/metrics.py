"""``GET /metrics``: Prometheus metrics, read from the ledger at scrape time.

Nothing is counted in this process: a custom collector turns the ledger's rows (the
worker's heartbeat and the numbers it carries in ``extra``, the control row, the queue
counts, the recorded checkpoints) into metric families on each scrape. Each app has its
own ``CollectorRegistry`` (never the global one), so tests can build many apps.

Live gauges (loss, learning rate, throughput) are shown only while the worker's heartbeat
is fresh, like ``/v1/status``; counters and the step-time histogram show the last report.
Model quality (each eval set's newest loss, the val loss and its age, gold's, the newest
forgetting report's worst drop) comes from the event log (``api.web.history.EventDigest``, read incrementally) and the gold folder, so
an alert can fire when the model gets worse or stops being evaluated.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, generate_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from api.web.deps import READ
from api.web.history import EventDigest, forgetting_summary, read_gold
from api.web.schemas import ErrorOut, errors
from service.daemon.main_process import Daemon
from service.daemon.status import heartbeat_age, is_fresh, memory_of
from service.diskspace import free_bytes
from service.ledger import DesiredState, FileState, WorkerStatus
from trainer.records.checkpoints import float_or_none, int_or_none

log = logging.getLogger(__name__)

PREFIX = "traind_"


class LedgerCollector(Collector):
    """Reads the ledger of ``app.state.daemon`` on every scrape."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        daemon: Daemon = self._app.state.daemon
        ledger = daemon.ledger
        now = datetime.now(UTC)
        worker = ledger.worker_status()
        checkpoints = ledger.list_checkpoints()
        yield from collect_worker(worker, now=now, heartbeat_s=daemon.settings.worker.heartbeat_s)
        yield from collect_progress(worker, checkpoints=checkpoints, now=now)
        yield from collect_queue(ledger.counts_by_state())
        paused = ledger.get_control().desired_state is DesiredState.PAUSED
        yield gauge("paused", "1 while the operator has paused training, else 0.", int(paused))
        yield from collect_health(daemon)
        digest = getattr(self._app.state, "digest", None)
        if digest is not None:
            yield from collect_quality(
                digest, checkpoints=daemon.settings.paths.checkpoints, now=now
            )


def collect_health(daemon: Daemon) -> Iterator[Metric]:
    """Whether the service is in error (the reason is in /v1/status), and free disk space
    where it writes, so an alert can fire before and while a disk is full."""
    status = daemon.status()
    yield gauge(
        "error",
        "1 while /v1/status reports the state error (a full disk, a hung worker, a worker "
        "that refuses its settings); its error field says what.",
        int(status["state"] == "error"),
    )
    paths = daemon.settings.paths
    family = GaugeMetricFamily(
        PREFIX + "disk_free_bytes",
        "Free bytes on the filesystem of each folder traind writes.",
        labels=["folder"],
    )
    for folder, path in (
        ("checkpoints", paths.checkpoints),
        ("state", paths.state),
    ):
        free = free_bytes(path)
        if free is not None:
            family.add_metric([folder], free)
    yield family


def metrics_router() -> APIRouter:
    """The router of ``GET /metrics``; each app gets its own registry and collector."""
    router = APIRouter(tags=["metrics"], dependencies=READ)
    creating = threading.Lock()

    def registry_of(app: FastAPI) -> CollectorRegistry:
        with creating:
            registry = getattr(app.state, "metrics_registry", None)
            if registry is None:
                registry = CollectorRegistry(auto_describe=False)
                registry.register(LedgerCollector(app))
                app.state.metrics_registry = registry
            return registry

    @router.get(
        "/metrics",
        summary="Prometheus metrics (names prefixed traind_, with unit suffixes)",
        description=(
            "Prometheus text format (or OpenMetrics when the `Accept` header asks for it), "
            "read from the ledger at scrape time: global step, tokens processed, train loss, "
            "learning rate, tokens per second, files by state, optimizer-step duration "
            "histogram, NaN skips, checkpoint age, paused, worker heartbeat age and up, "
            "error, free disk space per folder, and model quality: each eval set's newest "
            "loss, the newest val loss, its step and age, gold's val loss and step, and "
            "forgetting: the worst earlier drop's held-out loss increase over its best and "
            "how many drops were measured."
        ),
        response_class=PlainTextResponse,
        responses={
            200: {
                "description": "The metrics.",
                "content": {"application/openmetrics-text": {"schema": {"type": "string"}}},
            },
            503: {"model": ErrorOut, "description": "The daemon has not started yet."},
            **errors(401),
        },
    )
    def metrics(request: Request) -> Response:
        if getattr(request.app.state, "daemon", None) is None:
            raise HTTPException(status_code=503, detail="traind is starting; scrape again")
        encoder, content_type = negotiate(request.headers.get("accept"))
        body = encoder(registry_of(request.app))
        return Response(content=body, media_type=content_type)

    return router


def negotiate(accept: str | None) -> tuple[Any, str]:
    """The encoder and content type for an ``Accept`` header (plain text by default)."""
    try:
        return choose_encoder(accept or "")
    except (TypeError, ValueError):
        # prometheus_client fails on a non-numeric version= parameter; a bad header is the
        # client's problem, not a reason for a 500.
        return generate_latest, CONTENT_TYPE_PLAIN_0_0_4


def collect_worker(
    worker: WorkerStatus | None, *, now: datetime, heartbeat_s: float
) -> Iterator[Metric]:
    """Heartbeat age, up, and the live gauges of a fresh heartbeat."""
    age = heartbeat_age(worker, now=now) if worker else None
    fresh = is_fresh(age, heartbeat_s=heartbeat_s)
    up = bool(worker and fresh and worker.model_loaded)
    yield gauge(
        "worker_up", "1 while a worker reports fresh heartbeats with the model loaded.", int(up)
    )
    if age is not None:
        yield gauge(
            "worker_heartbeat_age_seconds",
            "Seconds since the worker's last heartbeat.",
            max(0.0, age),
        )
    if worker is None or not fresh:
        return
    for name, doc, value in (
        ("train_loss", "Recent training loss.", worker.loss),
        ("learning_rate", "Learning rate in force.", worker.lr),
        (
            "tokens_per_second",
            "Recent training throughput in tokens per second.",
            worker.tokens_per_s,
        ),
    ):
        if value is not None:
            yield gauge(name, doc, value)


def collect_progress(
    worker: WorkerStatus | None, *, checkpoints: list[dict[str, Any]], now: datetime
) -> Iterator[Metric]:
    """Global step, the worker's counters and step-time histogram, checkpoint age."""
    extra = worker.extra if worker else {}
    step = worker.global_step if worker else None
    if step is None and checkpoints:
        step = max(c["step"] for c in checkpoints)  # no heartbeat yet: the newest checkpoint
    if step is not None:
        yield gauge("global_step", "Lineage global step (optimizer steps).", step)
    tokens = count_of(extra.get("tokens_processed"))
    if tokens is not None:
        yield counter("tokens_processed", "Tokens trained on, as the worker reports.", tokens)
    skips = count_of(extra.get("nan_skips_total"))
    if skips is not None:
        yield counter(
            "nan_skips", "Optimizer steps skipped for a non-finite loss or gradient.", skips
        )
    histogram = step_histogram(extra)
    if histogram is not None:
        yield histogram
    yield from collect_memory(worker)
    if checkpoints:
        newest = max(aware(c["created_at"]) for c in checkpoints)
        yield gauge(
            "checkpoint_age_seconds",
            "Seconds since the newest recorded checkpoint was committed.",
            max(0.0, (now - newest).total_seconds()),
        )


MEMORY_GAUGES = (
    ("host_rss_bytes", "worker_resident_memory_bytes", "The worker process's resident set."),
    ("device_allocated_bytes", "device_memory_allocated_bytes", "CUDA: bytes in live tensors."),
    (
        "device_reserved_bytes",
        "device_memory_reserved_bytes",
        "CUDA: bytes the caching allocator holds.",
    ),
    (
        "device_peak_bytes",
        "device_memory_peak_bytes",
        "CUDA: the most bytes allocated at once since the current file started.",
    ),
    (
        "estimate_bytes",
        "memory_estimate_bytes",
        "The start-up memory plan (weights, gradients, AdamW moments, activations).",
    ),
)
"""(field of the heartbeat's memory, metric name, help)."""


def collect_memory(worker: WorkerStatus | None) -> Iterator[Metric]:
    """The worker's memory at its latest heartbeat, each gauge only when measured."""
    memory = memory_of(worker) if worker else None
    for field, name, doc in MEMORY_GAUGES:
        value = memory.get(field) if memory else None
        if value is not None:
            yield gauge(name, doc, value)


def collect_quality(digest: EventDigest, *, checkpoints: Path, now: datetime) -> Iterator[Metric]:
    """The eval and gold gauges; each only once there is a value to show."""
    losses = digest.set_losses()
    if losses:
        family = GaugeMetricFamily(
            PREFIX + "eval_loss",
            "Newest loss of each eval set (recent: the held-out part of recent drops).",
            labels=["set"],
        )
        for name, (loss, _) in sorted(losses.items()):
            family.add_metric([name], loss)
        yield family
    last = digest.last_eval()
    if last is not None:
        val_loss = float_or_none(last.get("val_loss"))
        if val_loss is not None:
            yield gauge(
                "val_loss", "Validation loss (the deciding set) of the newest evaluation.", val_loss
            )
        step = int_or_none(last.get("step"))
        if step is not None:
            yield gauge("eval_step", "Global step of the newest evaluation.", step)
        stamp = _moment(last.get("timestamp"))
        if stamp is not None:
            yield gauge(
                "eval_age_seconds",
                "Seconds since the newest evaluation of the lineage.",
                max(0.0, (now - stamp).total_seconds()),
            )
    yield from collect_forgetting(digest)
    gold = read_gold(checkpoints, history=digest.gold_history())
    if gold is not None:
        if gold["val_loss"] is not None:
            yield gauge(
                "gold_val_loss", "Validation loss of the gold checkpoint.", gold["val_loss"]
            )
        if gold["step"] is not None:
            yield gauge("gold_step", "Global step of the gold checkpoint.", gold["step"])


def collect_forgetting(digest: EventDigest) -> Iterator[Metric]:
    """The newest forgetting report's gauges; none before an evaluation measured one."""
    report = forgetting_summary(digest.last_forgetting())
    if report is None:
        return
    increase = report["worst"]["increase"]
    if increase is not None:
        yield gauge(
            "forgetting_worst_increase",
            "How much worse the held-out loss of the earlier drop that rose the most is than "
            "its best (loss / best - 1; 0.1 is 10% worse), at the newest evaluation that "
            "measured one.",
            increase,
        )
    if report["measured"] is not None:
        yield gauge(
            "forgetting_drops_measured",
            "Earlier drops whose held-out part that evaluation scored.",
            report["measured"],
        )


def collect_queue(counts: dict[FileState, int]) -> Iterator[Metric]:
    family = GaugeMetricFamily(
        PREFIX + "queue_files", "Files in the ledger by state.", labels=["state"]
    )
    for state in FileState:
        family.add_metric([state.value], counts.get(state, 0))
    yield family


def step_histogram(extra: dict[str, Any]) -> HistogramMetricFamily | None:
    """The optimizer-step duration histogram the worker reports, or None if absent or
    malformed (``step_seconds_buckets`` = ``{"le": [...], "counts": [cumulative...]}``,
    ``step_seconds_sum``, ``step_seconds_count``)."""
    spec = extra.get("step_seconds_buckets")
    if not isinstance(spec, dict):
        return None
    bounds = [bound_of(b) for b in spec.get("le") or ()]
    counts = [count_of(c) for c in spec.get("counts") or ()]
    total = count_of(extra.get("step_seconds_count"))
    ok = (
        bounds
        and len(bounds) == len(counts)
        and None not in bounds
        and None not in counts
        and all(a < b for a, b in itertools.pairwise(bounds))
        and all(a <= b for a, b in itertools.pairwise(counts))
    )
    if not ok:
        log.debug("ignoring a malformed step_seconds_buckets in the worker heartbeat")
        return None
    if bounds[-1] == math.inf:  # the worker may list +Inf itself
        bounds, counts, inf_count = bounds[:-1], counts[:-1], counts[-1]
        total = inf_count if total is None else total
    if total is None:
        total = counts[-1]
    if counts and total < counts[-1]:
        return None
    buckets = [(floatToGoString(b), c) for b, c in zip(bounds, counts, strict=True)]
    buckets.append(("+Inf", total))
    sum_value = number_of(extra.get("step_seconds_sum"))
    return HistogramMetricFamily(
        PREFIX + "step_duration_seconds",
        "Wall time of one optimizer step, all its micro-batches included.",
        buckets=buckets,
        sum_value=sum_value,
    )


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    # CounterMetricFamily appends the _total suffix of the exposed sample.
    return CounterMetricFamily(PREFIX + name, doc, value=value)


def number_of(value: Any) -> float | None:
    """A finite JSON number (bools are not numbers here), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def count_of(value: Any) -> float | None:
    """A finite non-negative number, else None."""
    number = number_of(value)
    return number if number is not None and number >= 0 else None


def bound_of(value: Any) -> float | None:
    """A bucket's upper bound: a number, or a string such as "+Inf" (JSON has no infinity)."""
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            return None
        return None if math.isnan(parsed) else parsed
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def aware(moment: datetime) -> datetime:
    """A UTC-aware datetime (the ledger returns aware ones; a naive one is UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _moment(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
