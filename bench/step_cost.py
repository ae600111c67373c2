"""traind's optimizer step against a hand-written one, on the same rows, in one process.

Run: ``.venv/bin/python bench/step_cost.py [--preset tiny] [--steps 60] [--threads 1]``

``bench/throughput.py`` compares whole training loops; this isolates the step. Both
sides start from the same weights and take, alternately and in the same order, steps
over the same randomly drawn rows of one tokenized file, gathered by the same
``TokenizedFile.batch``: the hand-written side does forward, mean cross-entropy,
backward per micro-batch, then clip, AdamW (fused, traind's groups) and zero_grad;
traind's side is ``StepRunner.accumulate`` + ``StepRunner.update`` (token-weighted
loss, the finite check, the same clip and AdamW). Printed: the median time of each
(the first five steps left out) and their ratio, hand-written / traind.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from throughput import write_corpus

from trainer.cache import tokenize_file
from trainer.config import TrainConfig
from trainer.data import TokenizedFile
from trainer.model import GPT
from trainer.optim import build_optimizer
from trainer.presets import model_config_for
from trainer.rows import StepRows
from trainer.step import StepRunner
from trainer.tokenizer import load_tokenizer

WARM_UP = 5


def hand_written(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, data: TokenizedFile, micro: int
):
    """The step a person writes by hand, over ``rows`` in micro-batches of ``micro``."""

    def step(rows: np.ndarray) -> None:
        parts = [rows[i : i + micro] for i in range(0, len(rows), micro)]
        for part in parts:
            x, y = (torch.from_numpy(a) for a in data.batch(part))
            logits = model(x)
            loss = F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1
            )
            (loss / len(parts)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def traind_step(runner: StepRunner, *, data: TokenizedFile, micro: int, lr: float):
    """traind's step: ``StepRunner.accumulate`` then ``update``."""

    def step(rows: np.ndarray) -> None:
        picked = StepRows.of(data, rows)
        n_targets = picked.n_targets
        loss_sum = runner.accumulate(picked, micro=micro, n_targets=n_targets)
        runner.update(loss_sum, n_targets=n_targets, lr=lr)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        micro_batch_size=args.micro_batch, grad_accum_steps=args.grad_accum, device="cpu"
    )
    model_config = model_config_for(args.preset, vocab_size=260)
    with tempfile.TemporaryDirectory(prefix="traind-step-cost-") as tmp:
        root = Path(tmp)
        data = tokenize_file(
            write_corpus(root / "corpus.jsonl", n_lines=3000),
            tokenizer=load_tokenizer("bytes"),
            block_size=model_config.block_size,
            cache_dir=root / "cache",
        )
        models = []
        for _ in range(2):
            torch.manual_seed(0)
            model = GPT(model_config)
            models.append((model, build_optimizer(model, config)))
        micro = args.micro_batch
        sides = {
            "hand-written": hand_written(*models[0], data=data, micro=micro),
            "traind": traind_step(
                StepRunner(*models[1], train=config, device=torch.device("cpu")),
                data=data,
                micro=micro,
                lr=config.learning_rate,
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in sides}
        draw = np.random.default_rng(0)
        for index in range(args.steps):
            rows = draw.integers(0, len(data.lengths), micro * args.grad_accum)
            order = list(sides) if index % 2 else list(reversed(sides))
            for name in order:
                started = time.perf_counter()
                sides[name](rows)
                times[name].append(time.perf_counter() - started)
    hand = statistics.median(times["hand-written"][WARM_UP:])
    ours = statistics.median(times["traind"][WARM_UP:])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, preset {args.preset}, "
        f"micro {micro} x accum {args.grad_accum}, {args.steps} steps each"
    )
    print(f"  hand-written step   {hand * 1e3:8.1f} ms (median)")
    print(f"  traind step         {ours * 1e3:8.1f} ms (median)")
    print(f"  ratio (hand-written / traind): {hand / ours:.3f}")


if __name__ == "__main__":
    main()
