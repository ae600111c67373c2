"""Tokens/s of traind's training loop against a bare PyTorch loop, measured in one run.

Run: ``.venv/bin/python bench/throughput.py [--presets tiny small] [--steps 40] [--rounds 3]``
(``make bench`` runs the defaults). On a GPU: ``.venv/bin/python bench/throughput.py
--device cuda [--presets gpt2-124m llama-1b] [--compile]``.

Both sides train the same model (same preset, same initial weights), on the same packed
sequences, with the same micro-batch, accumulation, dtype, AdamW and gradient clipping.
The bare loop is what a person writes by hand: index a token tensor, forward, mean
cross-entropy, backward, clip, step. traind's side is ``Trainer.train_file`` on a real
file with everything on (data cache, token-weighted loss, non-finite checks, LR
schedule, progress meter); its timing covers the optimizer steps, not the one checkpoint
written at the end of the file (reported separately). Each round runs both sides back to
back, alternating which goes first; the printed ratio is the median of the per-round
ratios, so drift of the machine over a long run hits both sides alike.

Models: any built-in preset (``gpt2-124m`` and ``gpt-750m`` with GPT-2's vocabulary size,
50304 rows, as their names promise, though the text is byte-tokenized), and
``llama-1b``, a Hugging Face Llama of TinyLlama-1.1B's shape built here from a config (no
hub), trained through ``model.source = "hf:<folder>"``. ``--compile`` compiles both sides
(traind's ``train.compile``, the bare loop's ``torch.compile(model, dynamic=False)``).

On CUDA both sides train under bf16 autocast, tokens/s leave out the first ``--skip``
steps (start-up, compilation), and the table adds the model FLOPs utilisation of each
side: FLOPs per token ``6 N + 12 L H Q T`` (nanoGPT, PaLM appendix B; N the parameters
that multiply, L layers, H heads, Q head size, T the window) times tokens/s, against the
device's datasheet dense bf16 peak (when the device is in ``DATASHEET_BF16_TFLOPS``) and
against the bf16 matmul rate measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from vs_hf_trainer import SIZES as LLAMA_SIZES

from trainer.cache import tokenize_file
from trainer.config import LineageSpec, RunPaths, TrainConfig
from trainer.loop import Trainer
from trainer.model import GPT
from trainer.optim import build_optimizer
from trainer.presets import model_config_for
from trainer.tokenizer import load_tokenizer

PRESET_OVERRIDES = {
    # GPT-2's 50257 tokens padded to a multiple of 64, as nanoGPT does: the head's share
    # of the compute is then what these shapes really cost.
    "gpt2-124m": {"vocab_size": 50304},
    "gpt-750m": {"vocab_size": 50304},
}


def llama_shape(size: str) -> dict[str, Any]:
    """A Llama shape of ``bench/vs_hf_trainer.py``, as ``LlamaConfig`` fields."""
    shape = dict(LLAMA_SIZES[size])
    shape["max_position_embeddings"] = shape.pop("block_size")
    return shape


HF_MODELS = {
    # TinyLlama-1.1B's shape, as bench/vs_hf_trainer.py trains it.
    "llama-1b": llama_shape("1b"),
}

DATASHEET_BF16_TFLOPS = (
    # (part of torch.cuda.get_device_name(), dense bf16 TFLOPS); the first match wins, so
    # a longer name comes before a name it contains.
    ("GH200", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
)


@dataclass(frozen=True, kw_only=True)
class Workload:
    """One model as both sides train it."""

    name: str
    spec: LineageSpec
    """How traind's side opens it."""
    build: Callable[[], torch.nn.Module]
    """The bare side's model, with the initial weights traind's side starts from."""
    skeleton: Callable[[], torch.nn.Module]
    """The same architecture without weights (on the meta device), for counting."""
    block_size: int
    n_layer: int
    n_head: int
    head_size: int


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


def preset_workload(preset: str, *, seed: int) -> Workload:
    """A built-in preset; the bare model is seeded as a new lineage seeds it."""
    overrides = PRESET_OVERRIDES.get(preset, {})
    config = model_config_for(preset, vocab_size=260, overrides=overrides)

    def build() -> torch.nn.Module:
        torch.manual_seed(seed)
        return GPT(config)

    def skeleton() -> torch.nn.Module:
        with torch.device("meta"):
            return GPT(config)

    return Workload(
        name=preset,
        spec=LineageSpec(preset=preset, overrides=overrides),
        build=build,
        skeleton=skeleton,
        block_size=config.block_size,
        n_layer=config.n_layer,
        n_head=config.n_head,
        head_size=config.n_embd // config.n_head,
    )


def hf_workload(name: str, *, root: Path, device: torch.device) -> Workload:
    """A Hugging Face Llama saved to a folder (byte tokenizer), which both sides load."""
    import transformers

    shape = HF_MODELS[name]
    config = transformers.LlamaConfig(**shape)
    folder = root / name
    folder.mkdir()
    (folder / "tokenizer.json").write_text(load_tokenizer("bytes").to_json(), encoding="utf-8")
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    # A billion parameters initialise in seconds on a GPU, in minutes on a few cores.
    with device:
        transformers.LlamaForCausalLM(config).save_pretrained(folder)

    def build() -> torch.nn.Module:
        return transformers.AutoModelForCausalLM.from_pretrained(
            folder, local_files_only=True, dtype=torch.float32, attn_implementation="sdpa"
        )

    def skeleton() -> torch.nn.Module:
        with torch.device("meta"):
            return transformers.LlamaForCausalLM(config)

    return Workload(
        name=name,
        spec=LineageSpec(source=f"hf:{folder}"),
        build=build,
        skeleton=skeleton,
        block_size=shape["max_position_embeddings"],
        n_layer=shape["num_hidden_layers"],
        n_head=shape["num_attention_heads"],
        head_size=shape["hidden_size"] // shape["num_attention_heads"],
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device) -> None:
    """Give back what the side that just ran held, before the other side starts."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def traind_side(
    corpus: Path, *, workload: Workload, config: TrainConfig, workdir: Path, skip: int
) -> tuple[float, float]:
    """(tokens/s over the optimizer steps after the first ``skip``, seconds of the
    end-of-file checkpoint)."""
    paths = RunPaths(checkpoints=workdir / "checkpoints", state=workdir / "state")
    trainer = Trainer.open(spec=workload.spec, train=config, paths=paths)
    data = trainer.prepare(corpus)
    saves: list[float] = []
    original = trainer.checkpointer.save  # what the file's end calls

    def timed_save(*args, **kwargs):
        started = time.perf_counter()
        result = original(*args, **kwargs)
        saves.append(time.perf_counter() - started)
        return result

    trainer.checkpointer.save = timed_save
    # Tokens counted before each step, and the time each step's update returned: the
    # window after the first `skip` steps leaves out start-up and compilation.
    device, state = trainer.device, trainer.state
    counted: list[int] = []
    stamps: list[float] = []
    update = trainer.steps.update

    def stamped(loss_sum, *, n_targets, lr):
        counted.append(state.tokens_processed)
        result = update(loss_sum, n_targets=n_targets, lr=lr)
        # The window starts and ends with the device idle (the step is not counted yet).
        if len(stamps) + 1 == skip or state.global_step + 1 == state.current_file.target_step:
            sync(device)
        stamps.append(time.perf_counter())
        return result

    trainer.steps.update = stamped
    try:
        started = time.perf_counter()
        trainer.train_file(data, name=corpus.name)
        if skip == 0:  # the whole file, as before steady-state windows existed
            elapsed = time.perf_counter() - started - sum(saves)
            return trainer.state.tokens_processed / elapsed, sum(saves)
        elapsed = stamps[-1] - stamps[skip - 1]
        return (trainer.state.tokens_processed - counted[skip]) / elapsed, sum(saves)
    finally:
        trainer.close()


def bare_side(
    corpus: Path,
    *,
    workload: Workload,
    config: TrainConfig,
    steps: int,
    cache: Path,
    skip: int,
    compile_model: bool,
) -> float:
    """The hand-written loop, on the same packed sequences traind trains on."""
    device = torch.device(config.device)
    tokenizer = load_tokenizer("bytes")
    block = workload.block_size
    data = tokenize_file(corpus, tokenizer=tokenizer, block_size=block, cache_dir=cache)
    full = data.lengths == block + 1
    windows = torch.stack(
        [
            torch.from_numpy(data.tokens[s : s + block + 1].astype("int64"))
            for s in data.starts[full]
        ]
    ).to(device)
    model = workload.build().to(device)
    optimizer = build_optimizer(model, config)
    forward = torch.compile(model, dynamic=False) if compile_model else model
    bf16 = config.precision == "bf16"
    micro, accum = config.micro_batch_size, config.grad_accum_steps
    generator = torch.Generator().manual_seed(0)
    tokens = 0
    started = time.perf_counter()
    for step in range(steps):
        if step == skip and skip:
            sync(device)
            tokens, started = 0, time.perf_counter()
        for _ in range(accum):
            rows = torch.randint(len(windows), (micro,), generator=generator).to(device)
            batch = windows[rows]
            x, y = batch[:, :-1], batch[:, 1:]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = logits_of(forward(x))
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
            (loss / accum).backward()
            tokens += x.numel()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    return tokens / (time.perf_counter() - started)


def logits_of(output: object) -> torch.Tensor:
    """The built-in GPT returns logits; a Hugging Face model an output holding them."""
    return output if isinstance(output, torch.Tensor) else output.logits


def flops_per_token(workload: Workload) -> float:
    """``6 N + 12 L H Q T`` for one trained token (forward and backward), N counting the
    parameters that multiply: a tied embedding once (as the head), an untied input
    embedding or a position table not at all (they are looked up)."""
    model = workload.skeleton()
    multiplied = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    looked_up = sum(
        m.weight.numel()
        for m in model.modules()
        if isinstance(m, torch.nn.Embedding) and id(m.weight) not in multiplied
    )
    n = sum(p.numel() for p in model.parameters()) - looked_up
    attention = 12 * workload.n_layer * workload.n_head * workload.head_size * workload.block_size
    return 6 * n + attention


def datasheet_tflops(name: str) -> float | None:
    """The dense bf16 peak of a device named ``name``, or None when not in the table."""
    return next((peak for part, peak in DATASHEET_BF16_TFLOPS if part in name), None)


def matmul_tflops(device: torch.device, *, n: int = 8192, repeats: int = 30) -> float:
    """The bf16 matmul rate this device reaches now (TFLOPS), on n x n x n products."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    seconds = time.perf_counter() - started
    del a, b
    release_memory(device)
    return 2 * n**3 * repeats / seconds / 1e12


def workload_for(name: str, *, root: Path, device: torch.device, seed: int) -> Workload:
    if name in HF_MODELS:
        return hf_workload(name, root=root, device=device)
    return preset_workload(name, seed=seed)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The settings both sides train with; ``compile`` only where traind has the field."""
    fields = dict(
        micro_batch_size=args.micro_batch,
        grad_accum_steps=args.grad_accum,
        epochs_per_file=1.0,
        warmup_steps=10,
        checkpoint_interval=10**9,
        log_interval=10**9,
        device=args.device,
        precision=args.precision,
    )
    if args.compile and "compile" in {f.name for f in dataclasses.fields(TrainConfig)}:
        fields["compile"] = True
    elif args.compile:
        print("note: this traind has no train.compile yet; its side runs uncompiled")
    return TrainConfig(**fields)


def measure(
    workload: Workload,
    *,
    root: Path,
    config: TrainConfig,
    steps: int,
    rounds: int,
    skip: int,
    compile_model: bool,
) -> dict[str, float]:
    micro, accum = config.micro_batch_size, config.grad_accum_steps
    block = workload.block_size
    # Enough packed sequences for exactly `steps` optimizer steps (~88 bytes a line).
    n_lines = steps * micro * accum * (block + 1) // 86
    corpus = write_corpus(root / f"{workload.name}.jsonl", n_lines=n_lines)
    cache = root / "cache"
    ours, theirs, saves, ratios = [], [], [], []
    for round_ in range(rounds + 1):  # round 0 warms caches and allocators, not counted
        # Alternate which side goes first: under a long sustained load the machine
        # drifts (clocks, allocator), and always running one side second biases it.
        workdir = root / f"{workload.name}-run{round_}"
        done: dict[str, object] = {}
        for side in ("traind", "bare") if round_ % 2 else ("bare", "traind"):
            if side == "traind":
                done[side] = traind_side(
                    corpus, workload=workload, config=config, workdir=workdir, skip=skip
                )
            else:
                done[side] = bare_side(
                    corpus,
                    workload=workload,
                    config=config,
                    steps=steps,
                    cache=cache,
                    skip=skip,
                    compile_model=compile_model,
                )
            release_memory(torch.device(config.device))  # before the other side starts
        rate, save_s = done["traind"]
        # A billion-parameter lineage's checkpoints are tens of GB: one round's at a time.
        shutil.rmtree(workdir, ignore_errors=True)
        if round_:
            theirs.append(done["bare"])
            ours.append(rate)
            saves.append(save_s)
            ratios.append(rate / done["bare"])
    bare_rate, traind_rate = statistics.median(theirs), statistics.median(ours)
    return {
        "bare": bare_rate,
        "traind": traind_rate,
        "ratio": statistics.median(ratios),
        "checkpoint_s": statistics.median(saves),
    }


def require_device(name: str) -> torch.device:
    """The device of ``--device``; exits with a clear message when CUDA is asked for and absent."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            f"--device {name}: torch {torch.__version__} sees no CUDA device here (a CPU-only "
            "build, or no GPU visible); run without --device for the CPU benchmark"
        )
    return device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--presets", nargs="+", help="default: tiny small on CPU, gpt2-124m on CUDA"
    )
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), help="default: fp32 on CPU, bf16 on CUDA"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile both sides")
    parser.add_argument(
        "--skip", type=int, help="first steps left out of tokens/s (default: 0 on CPU, 5 on CUDA)"
    )
    args = parser.parse_args()
    device = require_device(args.device)
    cuda = device.type == "cuda"
    args.presets = args.presets or (["gpt2-124m"] if cuda else ["tiny", "small"])
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    skip = args.skip if args.skip is not None else (5 if cuda or args.compile else 0)
    if skip >= args.steps:
        parser.error("--skip must be below --steps")
    logging.basicConfig(level=logging.WARNING)
    config = train_config(args)
    where = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where} {args.precision}"
        f"{', compiled' if args.compile else ''}, micro {args.micro_batch} x accum "
        f"{args.grad_accum}, {args.steps} steps x {args.rounds} rounds"
        + (f", tokens/s after step {skip}" if skip else "")
    )
    peaks: dict[str, float] = {}
    if cuda:
        sheet = datasheet_tflops(where)
        measured = matmul_tflops(device)
        if sheet is not None:
            peaks["sheet"] = sheet
        peaks["matmul"] = measured
        print(
            f"bf16 peak: datasheet {f'{sheet:,.0f} TFLOPS' if sheet else 'unknown for this device'}"
            f", measured 8192^3 matmul {measured:,.0f} TFLOPS"
        )
    header = f"{'preset':<10} {'bare tok/s':>12} {'traind tok/s':>13} {'ratio':>7} {'ckpt s':>7}"
    if cuda:
        header += "".join(
            f" {f'MFU {side} {peak}':>18}" for peak in peaks for side in ("bare", "traind")
        )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in args.presets:
            workload = workload_for(name, root=root, device=device, seed=config.seed)
            r = measure(
                workload,
                root=root,
                config=config,
                steps=args.steps,
                rounds=args.rounds,
                skip=skip,
                compile_model=args.compile,
            )
            line = (
                f"{name:<10} {r['bare']:>12,.0f} {r['traind']:>13,.0f} {r['ratio']:>7.3f} "
                f"{r['checkpoint_s']:>7.2f}"
            )
            if cuda:
                flops = flops_per_token(workload)
                for peak in peaks.values():
                    for side in ("bare", "traind"):
                        line += f" {r[side] * flops / (peak * 1e12):>18.1%}"
            print(line)


if __name__ == "__main__":
    main()
