"""The optimizer step: traind's AdamW (``trainer.optim.build_optimizer``, the fused kernel)
against torch's default multi-tensor ``foreach`` AdamW, in one run, on the CPU.

Run: ``.venv/bin/python bench/optimizer.py [--presets tiny small] [--steps 40]``

For each preset: the same parameters and gradients, the same groups (decayed matrices,
the rest without decay), ``--steps`` optimizer steps each way, alternating so a busy
machine slows both alike. Printed: the median milliseconds per step, the ratio
fused / foreach, and the largest difference between the two results after the steps
(the kernels round differently in the last bits; each is deterministic on its own).
Timings on a shared machine drift; nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from trainer.config import TrainConfig
from trainer.model import GPT
from trainer.optim import build_optimizer, optimizer_layout
from trainer.presets import model_config_for

BYTE_VOCAB = 259


def foreach_like(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the same groups as traind's, on torch's default (foreach) path."""
    named = dict(model.named_parameters())
    decay, no_decay = ([named[name] for name in group] for group in optimizer_layout(model))
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
        betas=(config.beta1, config.beta2),
        foreach=True,
    )


def measure(preset: str, *, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    config = TrainConfig()
    model = GPT(model_config_for(preset, vocab_size=BYTE_VOCAB))
    twin = copy.deepcopy(model)
    runs = {
        "fused": (model, build_optimizer(model, config)),
        "foreach": (twin, foreach_like(twin, config)),
    }
    for net, _ in runs.values():
        generator = torch.Generator().manual_seed(1)
        for p in net.parameters():
            p.grad = torch.randn(p.shape, generator=generator) * 1e-2
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(steps):
        for name, (_, optimizer) in runs.items():
            started = time.perf_counter()
            optimizer.step()
            times[name].append(time.perf_counter() - started)
    diff = max(
        (a - b).abs().max().item()
        for a, b in zip(model.parameters(), twin.parameters(), strict=True)
    )
    params = sum(p.numel() for p in model.parameters())
    return {
        "params_m": params / 1e6,
        "fused_ms": statistics.median(times["fused"]) * 1e3,
        "foreach_ms": statistics.median(times["foreach"]) * 1e3,
        "max_diff": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"{'preset':8} {'params':>8} {'fused ms':>9} {'foreach ms':>11} {'ratio':>6} {'max diff':>9}"
    )
    for preset in args.presets:
        r = measure(preset, steps=args.steps)
        print(
            f"{preset:8} {r['params_m']:7.1f}M {r['fused_ms']:9.2f} {r['foreach_ms']:11.2f} "
            f"{r['fused_ms'] / r['foreach_ms']:6.2f} {r['max_diff']:9.1e}"
        )


if __name__ == "__main__":
    main()
