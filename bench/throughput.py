"""Tokens/s of traind's training loop against a bare PyTorch loop, measured in one run.

Run: ``.venv/bin/python bench/throughput.py [--presets tiny small] [--steps 40] [--rounds 3]``
(``make bench`` runs the defaults).

Both sides train the same model (same preset, same initial weights), on the same packed
sequences, with the same micro-batch, accumulation, dtype, AdamW and gradient clipping.
The bare loop is what a person writes by hand: index a token tensor, forward, mean
cross-entropy, backward, clip, step. traind's side is ``Trainer.train_file`` on a real
file with everything on (data cache, token-weighted loss, non-finite checks, LR
schedule, progress meter); its timing covers the optimizer steps, not the one checkpoint
written at the end of the file (reported separately). Each round runs both sides back to
back, alternating which goes first; the printed ratio is the median of the per-round
ratios, so drift of the machine over a long run hits both sides alike.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from trainer.cache import tokenize_file
from trainer.config import LineageSpec, RunPaths, TrainConfig
from trainer.loop import Trainer
from trainer.model import GPT
from trainer.optim import build_optimizer
from trainer.tokenizer import load_tokenizer


def write_corpus(path: Path, *, n_lines: int) -> Path:
    with path.open("w") as fh:
        for i in range(n_lines):
            a, b = i % 97, (i * 7) % 89
            fh.write(
                json.dumps(
                    {
                        "text": f"If X={a} and Y={b}, what is X+Y? X+Y = {a}+{b} = {a + b}. "
                        f"And X*Y = {a * b}; X-Y = {a - b}."
                    }
                )
                + "\n"
            )
    return path


def traind_side(
    corpus: Path, *, preset: str, config: TrainConfig, workdir: Path
) -> tuple[float, float]:
    """(tokens/s over the optimizer steps, seconds of the end-of-file checkpoint)."""
    paths = RunPaths(checkpoints=workdir / "checkpoints", state=workdir / "state")
    trainer = Trainer.open(spec=LineageSpec(preset=preset), train=config, paths=paths)
    data = trainer.prepare(corpus)
    saves: list[float] = []
    original = trainer.save_checkpoint

    def timed_save(*, reason: str):
        started = time.perf_counter()
        result = original(reason=reason)
        saves.append(time.perf_counter() - started)
        return result

    trainer.save_checkpoint = timed_save
    started = time.perf_counter()
    trainer.train_file(data, name=corpus.name)
    elapsed = time.perf_counter() - started - sum(saves)
    return trainer.state.tokens_processed / elapsed, sum(saves)


def bare_side(corpus: Path, *, preset: str, config: TrainConfig, steps: int, cache: Path) -> float:
    """The hand-written loop, on the same packed sequences traind trains on."""
    tokenizer = load_tokenizer("bytes")
    from trainer.presets import model_config_for

    model_config = model_config_for(preset, vocab_size=tokenizer.vocab_size)
    data = tokenize_file(
        corpus, tokenizer=tokenizer, block_size=model_config.block_size, cache_dir=cache
    )
    full = data.lengths == model_config.block_size + 1
    windows = torch.stack(
        [
            torch.from_numpy(data.tokens[s : s + model_config.block_size + 1].astype("int64"))
            for s in data.starts[full]
        ]
    )
    torch.manual_seed(config.seed)
    model = GPT(model_config)
    optimizer = build_optimizer(model, config)
    micro, accum = config.micro_batch_size, config.grad_accum_steps
    generator = torch.Generator().manual_seed(0)
    tokens = 0
    started = time.perf_counter()
    for _ in range(steps):
        for _ in range(accum):
            batch = windows[torch.randint(len(windows), (micro,), generator=generator)]
            x, y = batch[:, :-1], batch[:, 1:]
            logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
            (loss / accum).backward()
            tokens += x.numel()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return tokens / (time.perf_counter() - started)


def measure(preset: str, *, steps: int, rounds: int, micro: int, accum: int) -> dict[str, float]:
    from trainer.presets import model_config_for

    block = model_config_for(preset, vocab_size=260).block_size
    config = TrainConfig(
        micro_batch_size=micro,
        grad_accum_steps=accum,
        epochs_per_file=1.0,
        warmup_steps=10,
        checkpoint_interval=10**9,
        log_interval=10**9,
        device="cpu",
        precision="fp32",
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # Enough packed sequences for exactly `steps` optimizer steps (~88 bytes a line).
        n_lines = steps * micro * accum * (block + 1) // 86
        corpus = write_corpus(root / "bench.jsonl", n_lines=n_lines)
        ours, theirs, saves, ratios = [], [], [], []
        for round_ in range(rounds + 1):  # round 0 warms caches and allocators, not counted
            # Alternate which side goes first: under a long sustained load the machine
            # drifts (clocks, allocator), and always running one side second biases it.
            workdir = root / f"run{round_}"
            if round_ % 2:
                rate, save_s = traind_side(corpus, preset=preset, config=config, workdir=workdir)
                bare = bare_side(
                    corpus, preset=preset, config=config, steps=steps, cache=root / "cache"
                )
            else:
                bare = bare_side(
                    corpus, preset=preset, config=config, steps=steps, cache=root / "cache"
                )
                rate, save_s = traind_side(corpus, preset=preset, config=config, workdir=workdir)
            if round_:
                theirs.append(bare)
                ours.append(rate)
                saves.append(save_s)
                ratios.append(rate / bare)
    bare_rate, traind_rate = statistics.median(theirs), statistics.median(ours)
    return {
        "bare": bare_rate,
        "traind": traind_rate,
        "ratio": traind_rate / bare_rate,
        "checkpoint_s": statistics.median(saves),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU fp32, "
        f"micro {args.micro_batch} x accum {args.grad_accum}, {args.steps} steps x {args.rounds} rounds"
    )
    print(f"{'preset':<8} {'bare tok/s':>12} {'traind tok/s':>13} {'ratio':>7} {'ckpt s':>7}")
    for preset in args.presets:
        r = measure(
            preset,
            steps=args.steps,
            rounds=args.rounds,
            micro=args.micro_batch,
            accum=args.grad_accum,
        )
        print(
            f"{preset:<8} {r['bare']:>12,.0f} {r['traind']:>13,.0f} {r['ratio']:>7.3f} {r['checkpoint_s']:>7.2f}"
        )


if __name__ == "__main__":
    main()
