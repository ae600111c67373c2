"""Peak memory of loading a checkpoint's weights: traind's one-tensor-at-a-time load
against reading the whole weights file and then ``load_state_dict``, in one run.

Run: ``.venv/bin/python bench/checkpoint_memory.py [--preset gpt2-124m] [--shard-mb 200]``

A checkpoint of the built-in ``preset`` (its weights sharded above ``--shard-mb``) is
written once; then each way of loading it runs in a fresh child process, which builds
the model and loads the weights into it, and reports its peak resident memory (maxrss)
and that of building the model alone. Printed: the memory each load adds on top of the
model, and the ratio of traind's to the reference's. A load that never holds the weights
twice adds about one tensor; the reference adds a whole copy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from trainer.checkpoint import CheckpointContent, read_checkpoint, write_checkpoint
from trainer.model import GPT
from trainer.presets import model_config_for

_CHILD = """
import json, resource, sys, torch
from trainer.checkpoint import read_checkpoint
from trainer.model import GPT
from trainer.presets import model_config_for
from trainer.weights import read_tensors
preset, path, way = sys.argv[1:4]
model = GPT(model_config_for(preset, vocab_size=50304))
built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
checkpoint = read_checkpoint(__import__("pathlib").Path(path))
if way == "traind":
    checkpoint.load_into(model)
elif way == "whole-file":
    model.load_state_dict(read_tensors(checkpoint.path), strict=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"built_kib": built, "peak_kib": peak}))
"""


def measure(preset: str, path: Path, way: str) -> dict[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, preset, str(path), way],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gpt2-124m")
    parser.add_argument("--shard-mb", type=float, default=200.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = GPT(model_config_for(args.preset, vocab_size=50304))
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        path = write_checkpoint(
            Path(tmp),
            "step-00000001",
            CheckpointContent(
                model=model,
                optimizer_state={"state": {}, "param_groups": []},
                config=model.config.to_dict(),
                tokenizer_json="{}",
                training_state={"format_version": 3, "global_step": 1},
                shard_bytes=int(args.shard_mb * 1e6),
            ),
        )
        del model
        files = sorted(p.name for p in path.iterdir() if "safetensors" in p.name)
        print(f"{args.preset}: {weights_mb:.0f} MB of fp32 weights in {len(files)} file(s)")
        read_checkpoint(path)  # verified once here, so the children time the same work
        added = {}
        for way in ("traind", "whole-file"):
            sample = measure(args.preset, path, way)
            added[way] = (sample["peak_kib"] - sample["built_kib"]) / 1024
            print(
                f"  {way:<11} model {sample['built_kib'] / 1024:8.0f} MiB, peak "
                f"{sample['peak_kib'] / 1024:8.0f} MiB, load adds {added[way]:7.0f} MiB"
            )
    ratio = added["traind"] / added["whole-file"] if added["whole-file"] > 0 else float("nan")
    print(f"memory a load adds, traind / whole-file: {ratio:.2f}")


if __name__ == "__main__":
    main()
