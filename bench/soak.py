"""Memory over a long run: 100 small files through a real ``traind serve``, the worker's
resident set (and on a GPU its peak allocated memory) at file 10 against file 100.

Run: ``.venv/bin/python bench/soak.py [--files 100] [--preset tiny]``

The files are dropped in batches of ten, each batch after the previous one is done, so
the queue never holds more than ten (as days of drops would). After each file the
worker's memory is read from ``/v1/status`` (its latest heartbeat, ``memory``). Printed:
the resident set after files 10, 50 and 100 and the drift from file 10 to 100 (the
issue's target: under 5%); with CUDA, the device's peak allocated bytes the same way.
Nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from serving import Serve

MIB = 2**20


def write_drop(path: Path, *, n: int) -> None:
    lines = (json.dumps({"text": f"file {n} line {i}: {n}*{i} = {n * i}."}) for i in range(60))
    path.write_text("\n".join(lines) + "\n")


def wait_done(serve: Serve, count: int, *, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = serve.status()
        if body["queue"].get("done", 0) >= count and body["state"] == "idle":
            return body
        time.sleep(0.2)
    raise TimeoutError(f"{count} files not done after {timeout}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()
    marks = sorted({10, args.files // 2, args.files})
    with tempfile.TemporaryDirectory(prefix="traind-soak-") as tmp:
        root = Path(tmp)
        serve = Serve(
            root,
            TRAIND_MODEL__PRESET=args.preset,
            TRAIND_WORKER__HEARTBEAT_S="0.2",
            TRAIND_EVAL__INTERVAL="20",
            TRAIND_EVAL__HOLDOUT_FRACTION="0.1",
        )
        seen: dict[int, dict] = {}
        started = time.monotonic()
        with serve:
            staging = root / "staging"
            staging.mkdir()
            for first in range(1, args.files + 1, 10):
                for n in range(first, min(first + 10, args.files + 1)):
                    source = staging / f"day-{n:04d}.jsonl"
                    write_drop(source, n=n)
                    source.replace(root / "inbox" / source.name)
                done = min(first + 9, args.files)
                body = wait_done(serve, done, timeout=600)
                for mark in marks:
                    if first <= mark <= done and mark not in seen:
                        seen[mark] = body["memory"] or {}
    wall = time.monotonic() - started
    print(f"{args.files} files, preset {args.preset}, {wall:.0f} s")
    for field, label in (
        ("host_rss_bytes", "worker RSS"),
        ("device_peak_bytes", "device peak"),
    ):
        values = {mark: seen.get(mark, {}).get(field) for mark in marks}
        if any(v is None for v in values.values()):
            continue
        row = "  ".join(f"file {m}: {v / MIB:8.1f} MiB" for m, v in values.items())
        drift = values[marks[-1]] / values[10] - 1
        print(f"  {label:12} {row}  drift 10 -> {marks[-1]}: {drift * 100:+.1f}%")


if __name__ == "__main__":
    main()
