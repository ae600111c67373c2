"""How fast ``GET /v1/history`` loads a long lineage's curves from the event log.

Run: ``.venv/bin/python bench/history.py [--steps 1000000] [--log-interval 10]
[--eval-interval 500] [--file-steps 2000] [--trials 3]`` (``make bench`` runs it at the
defaults and with ``--log-interval 1``).

An event log is synthesized in a temporary folder, its lines formatted as
``trainer.records.events.EventLog`` writes them: a ``progress`` event every
``--log-interval`` steps, an ``eval`` every ``--eval-interval`` steps with two named
sets and a prompt sample, a file every ``--file-steps`` steps (``file_start``,
``file_complete``), a ``checkpoint_saved`` every 1000 steps, and now and then a
``gold_checkpoint`` or a ``gold_blocked``. Then, best of ``--trials``:

* cold: a new ``api.web.series.SeriesStore`` reads the whole log and answers the first
  full-range request (``points=1000``): the first page load after ``traind serve`` starts;
* warm full range, and warm zoomed (a 10,000-step range in the middle): later requests;
* the answer rendered as JSON through its response model (what the route adds);
* the reference, in the same run: the log read with ``json.loads`` on every line into
  lists of the same series, what a naive endpoint would do on every request.

The issue's target: a 1,000,000-step lineage loads in under a second.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from api.web.routes_history import HistoryOut
from api.web.series import SeriesStore, Window

STAMP = "2026-01-01T00:00:00.000Z"
TARGET_S = 1.0


def line(event: str, **fields: object) -> str:
    """One line as ``EventLog.emit`` writes it."""
    record = {"event": event, "timestamp": STAMP, **fields}
    return json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"


def synthesize(
    path: Path, *, steps: int, log_interval: int, eval_interval: int, file_steps: int
) -> int:
    """Write a lineage of ``steps`` steps to ``path``; returns its lines."""
    count = 0
    with path.open("w") as out:
        out.write(line("training_start", global_step=0, resumed_from=None, lineage_id="bench"))
        count += 1
        for start in range(0, steps, file_steps):
            target = min(steps, start + file_steps)
            name, sha = f"{start // file_steps:06d}-day.jsonl", f"{start:064x}"
            out.write(
                line(
                    "file_start",
                    file=name,
                    sha256=sha,
                    start_step=start,
                    target_step=target,
                    steps=target - start,
                    n_sequences=4 * file_steps,
                )
            )
            count += 1
            for step in range(start + 1, target + 1):
                loss = 2.0 + 1.0 / (1 + step / 1000) + (step % 97) / 1e4
                if step % log_interval == 0 or step == target:
                    out.write(
                        line(
                            "progress",
                            step=step,
                            file=name,
                            start_step=start,
                            target_step=target,
                            loss=round(loss, 6),
                            lr=3e-4 * min(1.0, step / 2000),
                            tokens_per_s=51234.5,
                            tokens_processed=4096 * step,
                        )
                    )
                    count += 1
                if step % eval_interval == 0:
                    out.write(
                        line(
                            "eval",
                            step=step,
                            trigger="interval",
                            elapsed_s=step * 0.1,
                            tokens_processed=4096 * step,
                            progress_pct=50.0,
                            lr=3e-4,
                            file=name,
                            val_loss=round(loss + 0.1, 6),
                            val_set="recent",
                            train_loss=round(loss, 6),
                            eval_arith=round(loss + 0.2, 6),
                            eval_recent=round(loss + 0.1, 6),
                            eval_duration_s=0.9,
                            samples=[{"prompt": "Q: 2+3?\nA:", "completion": " 5"}],
                        )
                    )
                    count += 1
                    if step % (eval_interval * 20) == 0:
                        out.write(
                            line(
                                "gold_checkpoint",
                                step=step,
                                val_loss=round(loss, 6),
                                prev_best=None,
                                train_loss=round(loss, 6),
                                sets={},
                                path="checkpoints/gold",
                            )
                        )
                        count += 1
                    elif step % (eval_interval * 7) == 0:
                        out.write(
                            line(
                                "gold_blocked",
                                step=step,
                                val_loss=round(loss, 6),
                                prev_best=None,
                                train_loss=round(loss, 6),
                                guards=["overfit"],
                                reason="overfit: val/train 1.31",
                            )
                        )
                        count += 1
                if step % 1000 == 0 and step < target:
                    out.write(
                        line(
                            "checkpoint_saved",
                            step=step,
                            path=f"step-{step:08d}",
                            reason="interval",
                            duration_s=0.5,
                            blocking_s=0.5,
                        )
                    )
                    count += 1
            out.write(
                line(
                    "file_complete",
                    file=name,
                    sha256=sha,
                    start_step=start,
                    end_step=target,
                    tokens=4096 * (target - start),
                    mean_loss=2.5,
                )
            )
            count += 1
    return count


def naive(path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """The reference: every line through ``json.loads``, the series into lists."""
    series: dict[str, tuple[list[int], list[float]]] = {}

    def add(name: str, step: int, value: object) -> None:
        if isinstance(value, int | float):
            steps, values = series.setdefault(name, ([], []))
            steps.append(step)
            values.append(float(value))

    with path.open("rb") as stream:
        for raw in stream:
            record = json.loads(raw)
            kind = record.get("event")
            if kind == "progress":
                for name, field in (
                    ("train_loss", "loss"),
                    ("lr", "lr"),
                    ("tokens_per_s", "tokens_per_s"),
                ):
                    add(name, record["step"], record.get(field))
            elif kind == "eval":
                add("val_loss", record["step"], record.get("val_loss"))
                for key, value in record.items():
                    if key.startswith("eval_") and key != "eval_duration_s":
                        add(key, record["step"], value)
    return series


def best_of(trials: int, work: Callable[[], object]) -> tuple[float, object]:
    """The shortest of ``trials`` runs of ``work``, and its last result."""
    best, result = float("inf"), None
    for _ in range(trials):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--log-interval", type=int, default=10)
    parser.add_argument("--eval-interval", type=int, default=500)
    parser.add_argument("--file-steps", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        lines = synthesize(
            path,
            steps=args.steps,
            log_interval=args.log_interval,
            eval_interval=args.eval_interval,
            file_steps=args.file_steps,
        )
        size = path.stat().st_size
        print(
            f"{args.steps:,} steps, progress every {args.log_interval}: {lines:,} events, "
            f"{size / 2**20:.1f} MiB"
        )
        full = Window(points=1000)
        middle = args.steps // 2
        zoom = Window(first=middle, last=middle + 10_000, points=1000)

        def cold() -> dict:
            return SeriesStore(path).history(full)

        cold_s, answer = best_of(args.trials, cold)
        store = SeriesStore(path)
        store.history(full)
        warm_s, _ = best_of(args.trials, lambda: store.history(full))
        zoom_s, zoomed = best_of(args.trials, lambda: store.history(zoom))
        json_s, body = best_of(
            args.trials, lambda: HistoryOut.model_validate(answer).model_dump_json()
        )
        naive_s, reference = best_of(args.trials, lambda: naive(path))
        assert isinstance(answer, dict) and isinstance(zoomed, dict) and isinstance(body, str)
        assert isinstance(reference, dict)
        points = answer["series"]["train_loss"]["total"]
        assert points == len(reference["train_loss"][0]) and answer["last_event_id"] == lines
        print(f"  (best of {args.trials})                         seconds   / naive")
        rows = [
            ("cold: read the log + full-range request", cold_s),
            ("warm: full-range request (1000 points)", warm_s),
            ("warm: zoomed request (10,000 steps)", zoom_s),
            ("full-range answer as JSON (response model)", json_s),
            ("reference: json.loads per line into lists", naive_s),
        ]
        for label, seconds in rows:
            print(f"  {label:<44} {seconds:8.4f}  {seconds / naive_s:7.3f}")
        print(
            f"  {points:,} train-loss points, {len(body) / 1024:.0f} KiB of JSON; "
            f"zoomed: {zoomed['series']['train_loss']['total']:,} points in range"
        )
        verdict = "under" if cold_s + json_s < TARGET_S else "OVER"
        print(f"  cold load + JSON: {cold_s + json_s:.3f} s, {verdict} the {TARGET_S:g} s target")


if __name__ == "__main__":
    main()
