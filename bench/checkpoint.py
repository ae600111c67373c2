"""How long a checkpoint holds up training: synchronous saves against background ones
(``train.async_checkpoints``), in one run, on the CPU.

Run: ``.venv/bin/python bench/checkpoint.py [--steps 24] [--interval 4] [--rounds 1]``

Two models of about 11M parameters: the built-in ``small`` preset and a Hugging Face
Llama of the same width and depth (built here from a config, no hub; the byte
tokenizer). Each is trained on the same file three ways, back to back: without interval
checkpoints (the reference), with them written synchronously, and in the background,
a checkpoint every ``--interval`` steps. Printed per model:

* the blocking time per interval save (the ``checkpoint_saved`` event's ``blocking_s``,
  median): what training waits for;
* the wall time a save adds to the run, against the reference (it also counts the
  steps a background write slows down by sharing the CPU);
* both as a share of the wall time at the default ``train.checkpoint_interval`` (500
  steps and one save), from the time per step of the reference run.

Ratios are async / sync. Timings on a shared machine drift; nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.config import EvalConfig, ExportConfig, LineageSpec, RunPaths, TrainConfig
from trainer.loop import Trainer
from trainer.presets import model_config_for
from trainer.tokenizer import load_tokenizer

DEFAULT_INTERVAL = TrainConfig().checkpoint_interval


@dataclass(frozen=True, kw_only=True)
class Run:
    """One training run of the file."""

    wall_s: float
    """Seconds ``train_file`` took (the file-end checkpoint included, the same in every run)."""
    steps: int
    """Optimizer steps taken."""
    blocking_s: list[float]
    """``blocking_s`` of each interval checkpoint."""
    duration_s: list[float]
    """``duration_s`` of each interval checkpoint (start to committed)."""


def write_corpus(path: Path, *, n_lines: int) -> Path:
    """Arithmetic lines (~88 bytes each), as ``bench/throughput.py`` trains on."""
    lines = []
    for i in range(n_lines):
        a, b = i % 97, (i * 7) % 89
        text = f"If X={a} and Y={b}, what is X+Y? X+Y = {a}+{b} = {a + b}. And X*Y = {a * b}."
        lines.append(json.dumps({"text": text}) + "\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


def llama_folder(folder: Path) -> Path:
    """A Llama as wide and deep as ``small``, saved with ``save_pretrained``."""
    import transformers

    small = model_config_for("small", vocab_size=260)
    tokenizer = load_tokenizer("bytes")
    folder.mkdir(parents=True)
    (folder / "tokenizer.json").write_text(tokenizer.to_json(), encoding="utf-8")
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=small.n_embd,
        intermediate_size=1024,  # SwiGLU at ~8/3 the width: the weights of a 4x GELU MLP
        num_hidden_layers=small.n_layer,
        num_attention_heads=small.n_head,
        num_key_value_heads=small.n_head,
        max_position_embeddings=small.block_size,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    transformers.utils.logging.disable_progress_bar()
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def train_once(spec: LineageSpec, corpus: Path, *, workdir: Path, train: TrainConfig) -> Run:
    paths = RunPaths(checkpoints=workdir / "checkpoints", state=workdir / "state")
    trainer = Trainer.open(
        spec=spec,
        train=train,
        paths=paths,
        evaluation=EvalConfig(at_file_end=False),
        export=ExportConfig(enabled=False),
    )
    try:
        data = trainer.prepare(corpus)
        start = trainer.state.global_step
        started = time.perf_counter()
        trainer.train_file(data, name=corpus.name)
        wall = time.perf_counter() - started
        steps = trainer.state.global_step - start
    finally:
        trainer.checkpointer.drain(strict=False)
        trainer.close()
    events = [json.loads(line) for line in paths.events.read_text().splitlines()]
    saves = [e for e in events if e["event"] == "checkpoint_saved" and e["reason"] == "interval"]
    return Run(
        wall_s=wall,
        steps=steps,
        blocking_s=[e["blocking_s"] for e in saves],
        duration_s=[e["duration_s"] for e in saves],
    )


def measure(
    name: str, spec: LineageSpec, corpus: Path, *, root: Path, args: argparse.Namespace
) -> None:
    base = dict(
        micro_batch_size=1,
        grad_accum_steps=1,
        warmup_steps=2,
        log_interval=10**9,
        device="cpu",
        precision="fp32",
    )
    ways = {
        "none": TrainConfig(**base, checkpoint_interval=10**9),
        "sync": TrainConfig(**base, checkpoint_interval=args.interval, async_checkpoints=False),
        "async": TrainConfig(**base, checkpoint_interval=args.interval, async_checkpoints=True),
    }
    runs: dict[str, list[Run]] = {way: [] for way in ways}
    for round_ in range(args.rounds + 1):  # round 0 warms caches and allocators, not counted
        order = list(ways) if round_ % 2 else list(reversed(ways))
        for way in order:
            run = train_once(spec, corpus, workdir=root / f"{name}-{way}-{round_}", train=ways[way])
            if round_:
                runs[way].append(run)
    step_s = statistics.median(r.wall_s / r.steps for r in runs["none"])
    saves = len(runs["sync"][0].blocking_s)
    print(f"{name}: {step_s:.3f} s per step, {saves} interval saves per run")
    print(
        f"  {'':<6} {'blocking s':>10} {'write s':>8} {'added wall s':>12} "
        f"{'blocked share':>13} {'added share':>11}"
    )
    result = {}
    for way in ("sync", "async"):
        blocking = statistics.median(b for r in runs[way] for b in r.blocking_s)
        duration = statistics.median(d for r in runs[way] for d in r.duration_s)
        added = statistics.median(
            (r.wall_s - ref.wall_s) / len(r.blocking_s)
            for r, ref in zip(runs[way], runs["none"], strict=True)
        )
        result[way] = (blocking, added)
        print(
            f"  {way:<6} {blocking:>10.3f} {duration:>8.3f} {added:>12.3f} "
            f"{_share(blocking, step_s):>13.2%} {_share(added, step_s):>11.2%}"
        )
    blocked = result["async"][0] / result["sync"][0]
    added = result["async"][1] / result["sync"][1] if result["sync"][1] > 0 else float("nan")
    print(f"  async / sync: blocking {blocked:.3f}, added wall time {added:.3f}")


def _share(cost_s: float, step_s: float) -> float:
    """``cost_s`` as a share of the wall time of one save and the steps between two saves
    at the default ``train.checkpoint_interval``."""
    return cost_s / (DEFAULT_INTERVAL * step_s + cost_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--interval", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU fp32, micro 1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        block = model_config_for("small", vocab_size=260).block_size
        # About --steps packed sequences of one micro-batch each (~88 bytes a line).
        corpus = write_corpus(root / "bench.jsonl", n_lines=args.steps * (block + 1) // 86)
        models = {
            "small": LineageSpec(preset="small"),
            "hf-llama": LineageSpec(source=f"hf:{llama_folder(root / 'llama')}"),
        }
        for name, spec in models.items():
            params = _params(spec, root)
            print(f"\n{name}: {params / 1e6:.1f}M parameters")
            measure(name, spec, corpus, root=root, args=args)


def _params(spec: LineageSpec, root: Path) -> int:
    probe = root / f"probe-{abs(hash(spec.source + spec.preset))}"
    paths = RunPaths(checkpoints=probe / "checkpoints", state=probe / "state")
    trainer = Trainer.open(spec=spec, train=TrainConfig(device="cpu"), paths=paths)
    try:
        return sum(p.numel() for p in trainer.model.parameters())
    finally:
        trainer.close()


if __name__ == "__main__":
    main()
