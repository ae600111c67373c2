"""Ingest latency of traind: drop -> queued for a burst, and drop -> first training step.

Run: ``.venv/bin/python bench/ingest.py [--files 1000] [--trials 5]`` (``make bench`` runs it;
``--trials 0`` measures the burst alone).

1. A burst of small files renamed into a watched inbox at once (the recommended way to
   drop). For each file: the time from its rename to its ``queued`` record in the
   ledger. The reference, measured in the same run on the same folder, is the bare
   notification: a watchdog observer that only notes when each rename event arrives.
   The ratio says how much later than the OS notification traind has checked, hashed,
   recorded and moved the file.
2. A real ``traind serve`` on a free port with an idle, resident worker (tiny preset):
   the time from renaming one file into the inbox to its ``file_start`` event (the
   worker claimed it, tokenized it and fixed its budget) and to the ``progress`` event
   of its first optimizer step (``train.log_interval = 1``), both by the events' own
   timestamps. The bench only watches the event log's size meanwhile: polling
   ``/v1/status`` every few milliseconds would take a core from the worker on a small
   machine and slow the very step it times. The reference is ``worker.poll_s``, the
   idle worker's polling interval, which bounded the pickup before the worker was woken.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
from serving import Serve
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from service.config.sections import WatcherSection
from service.inbox.watcher import InboxWatcher
from service.ledger import FileState, Ledger
from trainer.records.events import EventLog


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def write_sources(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        path = folder / f"drop-{i:05d}.jsonl"
        path.write_text(json.dumps({"text": f"If X={i} and Y={i + 1}, X+Y = {2 * i + 1}."}) + "\n")
        paths.append(path)
    return paths


class _Arrivals(FileSystemEventHandler):
    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    # A rename from outside the watched folder arrives as a creation (IN_MOVED_TO alone).
    def on_created(self, event) -> None:
        self.seen.setdefault(Path(event.src_path).name, time.monotonic())

    def on_moved(self, event) -> None:
        self.seen.setdefault(Path(event.dest_path).name, time.monotonic())


def bare_notification(root: Path, count: int) -> list[float]:
    inbox = root / "bare-inbox"
    inbox.mkdir()
    sources = write_sources(root / "bare-src", count)
    handler = _Arrivals()
    observer = Observer()
    observer.schedule(handler, str(inbox), recursive=False)
    observer.start()
    dropped = {}
    for source in sources:
        dropped[source.name] = time.monotonic()
        source.replace(inbox / source.name)
    deadline = time.monotonic() + 60
    while len(handler.seen) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    observer.stop()
    observer.join()
    return [handler.seen[name] - dropped[name] for name in dropped if name in handler.seen]


@dataclass(frozen=True)
class Burst:
    """When a burst began and when its last file was queued (monotonic clock)."""

    first_drop: float
    """The first rename into the inbox."""
    last_queued: float
    """The moment the last file was seen queued in the ledger."""

    def rate(self, count: int) -> float:
        """Files queued per second, from the first rename to the last file queued."""
        return count / max(1e-9, self.last_queued - self.first_drop)


def traind_burst(root: Path, count: int) -> tuple[list[float], Burst]:
    inbox = root / "inbox"
    ledger = Ledger.open(f"sqlite:///{root / 'ledger.db'}")
    watcher = InboxWatcher(
        inbox,
        ledger=ledger,
        settings=WatcherSection(settle_s=0.5),
        events=EventLog(root / "events.jsonl"),
    )
    watcher.start()
    sources = write_sources(root / "src", count)
    dropped = {}
    for source in sources:
        dropped[source.name] = time.monotonic()
        source.replace(inbox / source.name)
    queued: dict[str, float] = {}
    deadline = time.monotonic() + 300
    while len(queued) < count and time.monotonic() < deadline:
        # Only the rows not seen yet: ids grow in commit order, and reading the whole
        # queue every 5 ms would take the watcher's CPU (and GIL) on a small machine.
        fresh = ledger.list_files(states=[FileState.QUEUED], limit=count + 10, offset=len(queued))
        for record in fresh[0]:
            queued.setdefault(record.name, time.monotonic())
        time.sleep(0.005)
    watcher.stop()
    ledger.close()
    return [queued[name] - dropped[name] for name in dropped if name in queued], Burst(
        first_drop=min(dropped.values()), last_queued=max(queued.values(), default=0.0)
    )


def first_step(root: Path, trials: int) -> tuple[list[float], list[float], float]:
    poll_s = 0.5
    serve = Serve(
        root,
        TRAIND_MODEL__PRESET="tiny",
        TRAIND_WORKER__POLL_S=str(poll_s),
        TRAIND_TRAIN__DEVICE="cpu",
        TRAIND_TRAIN__LOG_INTERVAL="1",
    )
    to_start, to_step = [], []
    with serve:
        url = serve.url + "/v1/status"
        events = root / "state" / "events.jsonl"
        for trial in range(trials):
            time.sleep(2 * poll_s)  # let the worker go idle again
            source = root / f"trial-{trial}.jsonl"
            source.write_text(
                "".join(
                    json.dumps({"text": f"trial {trial} line {i}: 7*{i} = {7 * i}."}) + "\n"
                    for i in range(400)
                )
            )
            wall_drop = time.time()
            source.replace(root / "inbox" / source.name)
            start = step = None
            size = events.stat().st_size
            deadline = time.monotonic() + 60
            while step is None and time.monotonic() < deadline:
                time.sleep(0.005)
                if events.stat().st_size == size:
                    continue  # nothing new: no parsing, no request to the service
                size = events.stat().st_size
                for line in events.read_text().splitlines():
                    event = json.loads(line)
                    if event.get("file") != source.name:
                        continue
                    if event["event"] == "file_start":
                        start = start or stamp(event)
                    elif event["event"] == "progress":
                        step = step or stamp(event)
            if start is not None:
                to_start.append(start - wall_drop)
            if step is not None:
                to_step.append(step - wall_drop)
            # Wait for the file to finish so the next trial starts from an idle worker.
            while httpx.get(url, timeout=2).json()["state"] != "idle":
                time.sleep(0.05)
    return to_start, to_step, poll_s


def stamp(event: dict) -> float:
    """An event's timestamp, in seconds since the epoch."""
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bare = bare_notification(root, args.files)
        (root / "traind").mkdir()
        ours, burst = traind_burst(root / "traind", args.files)
        print(f"burst of {args.files} renamed-in files (ms)   median    p99    max")
        print(
            f"  bare watchdog notification          {statistics.median(bare) * 1e3:7.1f} "
            f"{percentile(bare, 0.99) * 1e3:6.1f} {max(bare) * 1e3:6.1f}"
        )
        print(
            f"  traind drop -> queued               {statistics.median(ours) * 1e3:7.1f} "
            f"{percentile(ours, 0.99) * 1e3:6.1f} {max(ours) * 1e3:6.1f}"
        )
        print(
            f"  ratio (median)                      {statistics.median(ours) / statistics.median(bare):7.1f}x"
            f"  ({len(ours)}/{args.files} queued)"
        )
        print(
            f"  traind throughput                   {burst.rate(len(ours)):7.0f} files/s queued "
            f"(first rename -> last queued, {burst.last_queued - burst.first_drop:.2f} s)"
        )
        if args.trials <= 0:
            return
        (root / "serve").mkdir()
        to_start, to_step, poll_s = first_step(root / "serve", args.trials)
        print(f"idle resident worker, {args.trials} trials (s)      median    max")
        print(
            f"  drop -> file_start                  {statistics.median(to_start):7.2f} {max(to_start):6.2f}"
        )
        if to_step:
            print(
                f"  drop -> first training step         {statistics.median(to_step):7.2f} {max(to_step):6.2f}"
            )
        print(
            f"  reference: worker.poll_s            {poll_s:7.2f}  ratio (first step / poll_s) "
            f"{statistics.median(to_step or to_start) / poll_s:.1f}x"
        )


if __name__ == "__main__":
    main()
