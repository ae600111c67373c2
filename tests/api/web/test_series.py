"""The history's series store (api.web.series) on real event logs written by EventLog, and
GET /v1/history through the app, continued live by /v1/events?after=<last_event_id>."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.web.series import SeriesStore, Window
from tests.api.conftest import LiveApi
from trainer.records.events import EventLog

FULL = Window()


def progress(log: EventLog, step: int, *, loss: Any = 2.5, lr: float = 1e-3, **more: Any) -> None:
    log.emit(
        "progress",
        step=step,
        file="a.jsonl",
        start_step=0,
        target_step=10_000,
        loss=loss,
        lr=lr,
        tokens_per_s=1000.0 + step,
        tokens_processed=100 * step,
        **more,
    )


def evaluation(log: EventLog, step: int, *, trigger: str = "interval", **sets: float) -> None:
    log.emit(
        "eval",
        step=step,
        trigger=trigger,
        val_loss=sets.get("recent"),
        val_set="recent",
        train_loss=2.0,
        **{f"eval_{name}": loss for name, loss in sets.items()},
        eval_duration_s=0.5,
        samples=[{"prompt": "Q", "completion": " A"}],
    )


def file_start(log: EventLog, name: str, *, start: int, target: int) -> None:
    log.emit(
        "file_start", file=name, sha256=name * 4, start_step=start, target_step=target, steps=5
    )


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")


def steps(answer: dict[str, Any], name: str) -> list[int]:
    return answer["series"][name]["step"]


def values(answer: dict[str, Any], name: str) -> list[float]:
    return answer["series"][name]["value"]


@pytest.fixture
def log(tmp_path: Path) -> EventLog:
    return EventLog(tmp_path / "state" / "events.jsonl")


def test_reads_only_what_was_appended_and_counts_every_line(log: EventLog) -> None:
    store = SeriesStore(log.path)
    assert store.history(FULL) == {
        "last_event_id": 0,
        "from_step": None,
        "to_step": None,
        "series": {},
        "files": [],
        "gold": [],
        "gold_blocked": [],
        "rollbacks": [],
        "downsampled": False,
    }
    log.emit("file_queued", id=1, file="a.jsonl")
    for step in (10, 20):
        progress(log, step)
    answer = store.history(FULL)
    assert answer["last_event_id"] == lines(log.path) == 3
    assert steps(answer, "train_loss") == [10, 20]
    assert values(answer, "tokens_per_s") == [1010.0, 1020.0]
    with log.path.open("ab") as handle:
        handle.write(b"not json at all\n\n[1, 2]\n")  # lines all the same: they keep numbers
    progress(log, 30, loss=2.25)
    log.emit("checkpoint_saved", step=30, reason="interval")
    with log.path.open("ab") as handle:
        handle.write(b'{"event":"progress","step":40')  # torn: not read until it is whole
    answer = store.history(FULL)
    assert answer["last_event_id"] == 8
    assert steps(answer, "train_loss") == [10, 20, 30]
    assert values(answer, "train_loss") == [2.5, 2.5, 2.25]
    assert values(answer, "lr") == [1e-3] * 3
    assert answer["series"]["lr"]["min"] == answer["series"]["lr"]["max"] == [1e-3] * 3
    assert answer["series"]["lr"]["total"] == 3
    with log.path.open("ab") as handle:
        handle.write(b',"loss":2.0}\n')
    answer = store.history(FULL)
    assert answer["last_event_id"] == lines(log.path) == 9
    assert steps(answer, "train_loss") == [10, 20, 30, 40]
    assert steps(answer, "lr") == [10, 20, 30]  # that hand-written line had no lr
    # Written by another hand: other key order and spacing, a nested object.
    record = {"timestamp": "x", "event": "progress", "step": 50, "loss": 1.5, "lr": 1e-4}
    with log.path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.write(json.dumps({**record, "step": 60, "extra": {"step": 99}}) + "\n")
    answer = store.history(FULL)
    assert steps(answer, "train_loss") == [10, 20, 30, 40, 50, 60]
    assert (steps(answer, "lr")[-2:], values(answer, "lr")[-2:]) == ([50, 60], [1e-4, 1e-4])


def test_a_truncated_or_replaced_log_is_read_again_from_its_start(log: EventLog) -> None:
    store = SeriesStore(log.path)
    for step in (10, 20, 30):
        progress(log, step)
    assert store.history(FULL)["last_event_id"] == 3

    with log.path.open("r+b") as handle:
        handle.truncate(0)
    progress(log, 5)
    answer = store.history(FULL)
    assert (answer["last_event_id"], steps(answer, "train_loss")) == (1, [5])

    other = EventLog(log.path.with_name("new.jsonl"))
    for step in (7, 8):
        progress(other, step, loss=1.5)
    other.path.replace(log.path)
    answer = store.history(FULL)
    assert (answer["last_event_id"], steps(answer, "train_loss")) == (2, [7, 8])
    assert values(answer, "train_loss") == [1.5, 1.5]

    log.path.unlink()
    assert store.history(FULL)["last_event_id"] == 0
    progress(log, 1)
    assert steps(store.history(FULL), "train_loss") == [1]


def test_eval_sets_are_series_and_a_checkpoint_s_evaluation_is_left_out(log: EventLog) -> None:
    store = SeriesStore(log.path)
    evaluation(log, 0, trigger="lineage_start", recent=4.5, arith=4.25)
    evaluation(log, 500, recent=3.5, arith=3.25)
    evaluation(log, 600, trigger="checkpoint", recent=9.0, arith=9.0)  # traind eval --checkpoint
    evaluation(log, 1000, trigger="file_end", recent=3.0)  # arith had nothing to score
    answer = store.history(FULL)
    assert set(answer["series"]) == {"val_loss", "eval_recent", "eval_arith"}
    assert steps(answer, "val_loss") == steps(answer, "eval_recent") == [0, 500, 1000]
    assert values(answer, "val_loss") == [4.5, 3.5, 3.0]
    assert (steps(answer, "eval_arith"), values(answer, "eval_arith")) == ([0, 500], [4.25, 3.25])


def test_non_finite_values_are_not_plotted(log: EventLog) -> None:
    store = SeriesStore(log.path)
    progress(log, 10, loss=float("nan"))  # written as null
    progress(log, 20, loss=float("inf"))  # written as "inf"
    progress(log, 30, loss=None)  # every step of the interval skipped
    progress(log, 40, loss=2.0)
    evaluation(log, 40, recent=float("-inf"), arith=3.0)
    written = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert [w["loss"] for w in written[:4]] == [None, "inf", None, 2.0]
    answer = store.history(FULL)
    assert (steps(answer, "train_loss"), values(answer, "train_loss")) == ([40], [2.0])
    assert steps(answer, "lr") == [10, 20, 30, 40]
    assert "eval_recent" not in answer["series"] and "val_loss" not in answer["series"]
    assert values(answer, "eval_arith") == [3.0]


def test_files_gold_and_blocked_decisions_are_markers(log: EventLog) -> None:
    store = SeriesStore(log.path)
    file_start(log, "a", start=0, target=100)
    log.emit("gold_checkpoint", step=50, val_loss=3.0, prev_best=None, sets={"recent": 3.0})
    log.emit("file_complete", file="a", sha256="aaaa", start_step=0, end_step=100)
    file_start(log, "b", start=100, target=300)
    log.emit(
        "gold_blocked",
        step=150,
        val_loss=2.9,
        prev_best=3.0,
        guards=["overfit", "rising"],
        reason="overfit: val/train 1.3 > 1.2; rising: ...",
    )
    log.emit("file_parked", file="b", sha256="bbbb", start_step=100, target_step=300, step=160)
    file_start(log, "c", start=160, target=200)
    log.emit("file_complete", file="c", sha256="cccc", start_step=160, end_step=200)
    log.emit("file_resumed", file="b", sha256="bbbb", step=200, target_step=340, steps_left=140)
    answer = store.history(FULL)
    assert [
        (f["file"], f["start_step"], f["target_step"], f["end_step"], f["outcome"], f["resumed"])
        for f in answer["files"]
    ] == [
        ("a", 0, 100, 100, "complete", False),
        ("b", 100, 300, 160, "parked", False),
        ("c", 160, 200, 200, "complete", False),
        ("b", 200, 340, None, None, True),
    ]
    assert answer["files"][0]["sha256"] == "aaaa"
    assert answer["gold"] == [{"id": 2, "step": 50, "val_loss": 3.0}]
    assert answer["gold_blocked"] == [
        {
            "id": 5,
            "step": 150,
            "val_loss": 2.9,
            "guards": ["overfit", "rising"],
            "reason": "overfit: val/train 1.3 > 1.2; rising: ...",
        }
    ]
    # Markers in the range only; a file's span counts if it overlaps it.
    part = store.history(Window(first=120, last=170))
    assert [(f["file"], f["start_step"]) for f in part["files"]] == [("b", 100), ("c", 160)]
    assert (part["gold"], len(part["gold_blocked"])) == ([], 1)
    late = store.history(Window(first=250))
    assert [(f["file"], f["start_step"]) for f in late["files"]] == [("b", 200)]  # due at 340


def test_a_rollback_to_gold_drops_what_came_after_gold(log: EventLog) -> None:
    store = SeriesStore(log.path)
    file_start(log, "a", start=0, target=60)
    for step in (10, 20, 30):
        progress(log, step)
    log.emit("gold_checkpoint", step=30, val_loss=3.0)
    progress(log, 40)
    evaluation(log, 40, recent=3.1)
    log.emit("gold_blocked", step=40, val_loss=2.9, guards=["overfit"], reason="overfit")
    for step in (50, 60):
        progress(log, step)
    log.emit("file_complete", file="a", sha256="aaaa", start_step=0, end_step=60)
    file_start(log, "b", start=60, target=200)
    for step in range(70, 110, 10):
        progress(log, step)
    evaluation(log, 100, recent=3.2)
    before = store.history(FULL)
    assert steps(before, "train_loss")[-1] == 100 and len(before["files"]) == 2

    log.emit("rolled_back_to_gold", gold_step=30, from_step=100, moved=["step-00000100"])
    log.emit("file_parked", file="a", sha256="aaaa", start_step=0, target_step=60, step=30)
    log.emit("training_start", global_step=30, resumed_from="checkpoints/step-00000030")
    progress(log, 40, loss=1.0)
    answer = store.history(FULL)
    assert steps(answer, "train_loss") == [10, 20, 30, 40]
    assert values(answer, "train_loss") == [2.5, 2.5, 2.5, 1.0]
    assert steps(answer, "val_loss") == steps(answer, "eval_recent") == []
    assert [(f["file"], f["end_step"], f["outcome"]) for f in answer["files"]] == [
        ("a", 30, "parked")
    ]
    assert [g["step"] for g in answer["gold"]] == [30]
    assert answer["gold_blocked"] == []
    assert [(r["gold_step"], r["from_step"]) for r in answer["rollbacks"]] == [(30, 100)]
    assert answer["rollbacks"][0]["id"] == before["last_event_id"] + 1


def test_a_resumed_run_replaces_the_steps_it_trains_again(log: EventLog) -> None:
    """A crash past the last checkpoint: the restarted trainer trains those steps again."""
    store = SeriesStore(log.path)
    file_start(log, "a", start=0, target=100)
    for step in range(10, 50, 10):
        progress(log, step, loss=3.0)
    log.emit("training_start", global_step=20, resumed_from="checkpoints/step-00000020")
    file_start(log, "a", start=0, target=100)  # written again: no checkpoint held its start
    for step in range(30, 60, 10):
        progress(log, step, loss=2.0)
    answer = store.history(FULL)
    assert steps(answer, "train_loss") == [10, 20, 30, 40, 50]
    assert values(answer, "train_loss") == [3.0, 3.0, 2.0, 2.0, 2.0]
    assert [(f["file"], f["start_step"]) for f in answer["files"]] == [("a", 0)]
    progress(log, 50, loss=1.0)  # a repeated step without a training_start: the newest wins
    assert values(store.history(FULL), "train_loss")[-1] == 1.0


def test_a_retired_lineage_is_forgotten(log: EventLog) -> None:
    store = SeriesStore(log.path)
    file_start(log, "a", start=0, target=100)
    progress(log, 10)
    evaluation(log, 10, recent=3.0)
    log.emit("gold_checkpoint", step=10, val_loss=3.0)
    log.emit("lineage_retired", kept_in="checkpoints/retired/old")
    progress(log, 5, loss=4.0)
    answer = store.history(FULL)
    assert answer["last_event_id"] == 6
    assert set(answer["series"]) == {"train_loss", "lr", "tokens_per_s"}
    assert steps(answer, "train_loss") == [5]
    assert answer["files"] == answer["gold"] == []


def plain_buckets(
    points: list[tuple[int, float]], count: int
) -> list[tuple[int, float, float, float]]:
    """Equal point counts, by hand: (last step, mean, min, max) of each bucket."""
    n = len(points)
    out = []
    for i in range(count):
        bucket = points[n * i // count : n * (i + 1) // count]
        vals = [v for _, v in bucket]
        out.append((bucket[-1][0], sum(vals) / len(vals), min(vals), max(vals)))
    return out


def test_downsampling_gives_each_bucket_s_mean_min_and_max(tmp_path: Path) -> None:
    rng = random.Random(7)
    log = EventLog(tmp_path / "events.jsonl")
    written = []
    for step in range(1, 2346):
        loss = round(rng.uniform(1.0, 3.0), 6)
        if step == 1234:
            loss = 50.0  # a spike must stay visible
        written.append((step * 3, loss))
    with log.path.open("w") as handle:  # one write: 2345 fsyncs would only slow the test
        for step, loss in written:
            line = {"event": "progress", "timestamp": "2026-01-01T00:00:00.000Z", "step": step}
            handle.write(json.dumps({**line, "loss": loss}, separators=(",", ":")) + "\n")
    store = SeriesStore(log.path, read_bytes=4096)  # many reads
    answer = store.history(Window(points=100))
    train = answer["series"]["train_loss"]
    assert answer["downsampled"] is True and train["total"] == 2345
    got = list(zip(train["step"], train["value"], train["min"], train["max"], strict=True))
    expected = plain_buckets(written, 100)
    assert len(got) == 100
    for (step, mean, low, high), (x_step, x_mean, x_low, x_high) in zip(got, expected, strict=True):
        assert (step, low, high) == (x_step, x_low, x_high)
        assert mean == pytest.approx(x_mean, rel=1e-12)
    assert max(train["max"]) == 50.0 and train["step"][-1] == 2345 * 3

    # A range: its points only, bucketed again.
    part = store.history(Window(first=3000, last=4500, points=100))["series"]["train_loss"]
    inside = [(s, v) for s, v in written if 3000 <= s <= 4500]
    assert part["total"] == len(inside) == 501
    got = list(zip(part["step"], part["value"], part["min"], part["max"], strict=True))
    for (step, mean, low, high), (x_step, x_mean, x_low, x_high) in zip(
        got, plain_buckets(inside, 100), strict=True
    ):
        assert (step, low, high) == (x_step, x_low, x_high)
        assert mean == pytest.approx(x_mean, rel=1e-12)
    # Few enough: every point as it is.
    exact = store.history(Window(first=3001, last=3300, points=100))
    assert exact["downsampled"] is False
    assert list(zip(steps(exact, "train_loss"), values(exact, "train_loss"), strict=True)) == [
        (s, v) for s, v in written if 3001 <= s <= 3300
    ]
    assert store.history(Window(first=10**9))["series"]["train_loss"]["total"] == 0


def test_readers_in_threads_wait_for_the_background_read(log: EventLog) -> None:
    for step in range(1, 201):
        progress(log, step)
    store = SeriesStore(log.path, read_bytes=512)
    reader = store.start_reading()
    answers: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=lambda: answers.append(store.history(FULL))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in [reader, *threads]:
        thread.join(timeout=30)
    assert len(answers) == 4
    for answer in answers:
        assert answer["last_event_id"] == 200
        assert steps(answer, "train_loss") == list(range(1, 201))


# Through the app ---------------------------------------------------------------------


def first_sse_id(url: str, *, after: int) -> tuple[int, dict[str, Any]]:
    """The id and data of the first event /v1/events?after=N sends."""
    with (
        httpx.Client(timeout=httpx.Timeout(10.0)) as client,
        client.stream("GET", f"{url}/v1/events", params={"after": after}) as response,
    ):
        number = None
        for line in response.iter_lines():
            if line.startswith("id: "):
                number = int(line.removeprefix("id: "))
            elif line.startswith("data: ") and number is not None:
                return number, json.loads(line.removeprefix("data: "))
    raise AssertionError("the stream ended without an event")


def test_history_route_answers_its_shape_and_events_continue_it(api: LiveApi) -> None:
    log = EventLog(api.settings.run_paths().events)
    file_start(log, "a", start=0, target=40)
    for step in range(10, 50, 10):
        progress(log, step)
    evaluation(log, 20, recent=3.0, arith=3.5)
    log.emit("gold_checkpoint", step=20, val_loss=3.0)
    log.emit("gold_blocked", step=40, val_loss=2.0, guards=["overfit"], reason="overfit: ...")

    response = api.get("/v1/history", params={"points": 10})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["last_event_id"] == lines(log.path) == 8
    assert (body["from_step"], body["to_step"], body["downsampled"]) == (None, None, False)
    assert set(body["series"]) == {
        "train_loss",
        "lr",
        "tokens_per_s",
        "val_loss",
        "eval_recent",
        "eval_arith",
    }
    assert body["series"]["train_loss"] == {
        "step": [10, 20, 30, 40],
        "value": [2.5] * 4,
        "min": [2.5] * 4,
        "max": [2.5] * 4,
        "total": 4,
    }
    assert body["files"] == [
        {
            "file": "a",
            "sha256": "aaaa",
            "start_step": 0,
            "target_step": 40,
            "end_step": None,
            "outcome": None,
            "resumed": False,
        }
    ]
    assert body["gold"] == [{"id": 7, "step": 20, "val_loss": 3.0}]
    assert body["gold_blocked"][0]["guards"] == ["overfit"] and body["rollbacks"] == []

    ranged = api.get("/v1/history", params={"from_step": 15, "to_step": 30}).json()
    assert (ranged["from_step"], ranged["to_step"]) == (15, 30)
    assert ranged["series"]["train_loss"]["step"] == [20, 30]
    assert ranged["gold_blocked"] == []

    progress(log, 50, loss=1.75)
    number, data = first_sse_id(api.url, after=body["last_event_id"])
    assert number == body["last_event_id"] + 1
    assert (data["event"], data["step"], data["loss"]) == ("progress", 50, 1.75)
    assert api.get("/v1/history").json()["last_event_id"] == number


def test_history_route_refuses_a_range_backwards_and_points_out_of_bounds(api: LiveApi) -> None:
    response = api.get("/v1/history", params={"from_step": 10, "to_step": 5})
    assert response.status_code == 422
    assert response.json() == {
        "detail": "from_step 10 is after to_step 5; ask from_step <= to_step"
    }
    for points in (9, 10_001):
        response = api.get("/v1/history", params={"points": points})
        assert response.status_code == 422 and "points" in response.json()["detail"]
