"""How long a checkpoint holds up a torchrun group: synchronous saves against background
ones (``train.async_checkpoints``, DCP's ``async_save``), in one run, on the CPU.

Run: ``.venv/bin/python bench/group_checkpoint.py [--nproc 2] [--strategy fsdp]
[--preset small] [--interval 5] [--rows 400]``

The same file is trained twice by ``traind train --nproc-per-node N`` (gloo), once with
interval checkpoints written by every process before training goes on and once in the
background; printed for each: the blocking time per interval save (the median of the
``checkpoint_saved`` events' ``blocking_s``, taken by rank 0, which waits for the whole
group's write), the save's own duration, the steps per second of the run, and the ratio
async / sync. Timings on a shared machine drift; nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_file(path: Path, rows: int) -> Path:
    lines = [
        json.dumps({"text": f"The quick brown fox {i} jumps over the lazy dog. " * 6})
        for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(root: Path, data: Path, *, background: bool, args: argparse.Namespace) -> dict:
    """One ``traind train`` of ``data`` by the group; its interval saves and speed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}
    env.update(
        PYTHONPATH=str(REPO),
        TRAIND_PATHS__CHECKPOINTS=str(root / "checkpoints"),
        TRAIND_PATHS__STATE=str(root / "state"),
        TRAIND_PATHS__INBOX=str(root / "inbox"),
        TRAIND_MODEL__PRESET=args.preset,
        TRAIND_MODEL__OVERRIDES=json.dumps({"block_size": 128}),
        TRAIND_TRAIN__MICRO_BATCH_SIZE="2",
        TRAIND_TRAIN__EPOCHS_PER_FILE="1",
        TRAIND_TRAIN__CHECKPOINT_INTERVAL=str(args.interval),
        TRAIND_TRAIN__DEVICE="cpu",
        TRAIND_TRAIN__ASYNC_CHECKPOINTS=str(background).lower(),
        TRAIND_WORKER__STRATEGY=args.strategy,
        TRAIND_EVAL__INTERVAL="1000000",
    )
    command = [sys.executable, "-m", "api.cli.main", "train", str(data)]
    command.append(f"--nproc-per-node={args.nproc}")
    done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    events = [json.loads(line) for line in (root / "state" / "events.jsonl").open()]
    saves = [e for e in events if e["event"] == "checkpoint_saved" and e["reason"] == "interval"]
    end = next(e for e in reversed(events) if e["event"] == "training_complete")
    return {
        "saves": len(saves),
        "blocking_s": statistics.median(e["blocking_s"] for e in saves),
        "duration_s": statistics.median(e["duration_s"] for e in saves),
        "steps_per_s": end["steps_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--strategy", choices=("ddp", "fsdp"), default="fsdp")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--interval", type=int, default=5)
    parser.add_argument("--rows", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="traind-bench-") as tmp:
        data = write_file(Path(tmp) / "d.jsonl", args.rows)
        results = {}
        for background in (False, True):
            root = Path(tmp) / ("async" if background else "sync")
            root.mkdir()
            results[background] = run(root, data, background=background, args=args)
    print(
        f"{args.nproc} processes, {args.strategy}, preset {args.preset}, every {args.interval} steps"
    )
    print(f"{'':8} {'saves':>6} {'blocking':>10} {'save':>8} {'steps/s':>8}")
    for background, name in ((False, "sync"), (True, "async")):
        r = results[background]
        print(
            f"{name:8} {r['saves']:>6} {r['blocking_s']:>9.3f}s {r['duration_s']:>7.3f}s "
            f"{r['steps_per_s']:>8.3f}"
        )
    sync, background = results[False], results[True]
    print(
        f"async / sync: blocking {background['blocking_s'] / sync['blocking_s']:.3f}, "
        f"steps/s {background['steps_per_s'] / sync['steps_per_s']:.3f}"
    )


if __name__ == "__main__":
    main()
