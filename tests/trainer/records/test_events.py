"""The append-only event log."""

import json
import math

from trainer.records.events import EventLog, loss_pair, round_loss


def test_events_are_json_lines_with_timestamp(tmp_path):
    log = EventLog(tmp_path / "state" / "events.jsonl")
    log.emit("file_start", file="a.jsonl", start_step=0, target_step=10)
    log.emit("eval", val_loss=float("nan"), lr=1e-3)
    lines = (tmp_path / "state" / "events.jsonl").read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "file_start" and first["timestamp"].endswith("Z")
    assert second["val_loss"] is None  # NaN is not valid JSON: recorded as null


def test_read_backwards_finds_newest_first_across_chunks(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    for i in range(3000):
        log.emit("file_complete" if i % 3 == 0 else "eval", i=i, pad="x" * 50)
    found = [r["i"] for r in log.read_backwards(event="file_complete")]
    assert found == list(range(2997, -1, -3))
    assert log.last("eval")["i"] == 2999


def test_read_backwards_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.emit("a", n=1)
    with path.open("a") as fh:
        fh.write('{"event": "b", "n"')  # a crash mid-write
    assert [r["event"] for r in log.read_backwards()] == ["a"]
    assert log.last("missing") is None
    assert EventLog(tmp_path / "nothing.jsonl").last("a") is None


def test_round_loss():
    assert round_loss(1.23456789) == 1.234568
    assert round_loss(math.inf) is None
    assert round_loss(None) is None


def test_an_event_after_a_torn_line_is_not_lost(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.emit("a", n=1)
    with path.open("a") as fh:
        fh.write('{"event": "torn", "n"')  # a crash mid-write
    log.emit("b", n=2)
    assert [r["event"] for r in log.read_backwards()] == ["b", "a"]
    assert path.read_text().splitlines()[1] == '{"event": "torn", "n"'


def test_loss_pair_shows_enough_digits_to_tell_a_new_gold_from_the_old() -> None:
    assert loss_pair(2.34091, 2.34089) == ("2.34091", "2.34089")
    assert loss_pair(2.5, 2.75) == ("2.5000", "2.7500")
    assert loss_pair(1.25, None) == ("1.2500", "none")
    assert loss_pair(1.0, 1.0) == ("1.000000", "1.000000")
