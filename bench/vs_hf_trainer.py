"""traind against Hugging Face ``transformers.Trainer``: the same Llama, data, order and step.

Run: ``.venv/bin/python bench/vs_hf_trainer.py [--size tiny|small|1b] [--steps 40] [--rounds 3]
[--device cpu|cuda] [--precision auto|fp32|bf16] [--micro-batch 8] [--grad-accum 2]
[--threads N] [--compile] [--profile]``

``--size 1b`` (a TinyLlama-shaped 1.1B model, 2048-token window) is meant for a GPU;
``--profile`` runs traind's side once more under cProfile and prints where its time goes;
``--threads 1`` makes a shared machine's other work stall the sides less.

Both sides train one Llama, built here from a ``LlamaConfig`` with a byte-level BPE
tokenizer trained on the corpus (no hub) and saved to a temporary folder: traind through
``Trainer.train_file`` on a ``LineageSpec(source="hf:<folder>")``, Hugging Face through
``Trainer.train`` on ``AutoModelForCausalLM.from_pretrained(<folder>)``. The data is one
generated JSONL file; Hugging Face is fed exactly the rows traind trains, in traind's
order (tokenized and ordered by traind's own ``tokenize_file`` and ``FileSampler``, a
sequential sampler, the targets given as ``shift_labels`` so no position is lost to the
shift), with the same micro-batch, accumulation, precision, AdamW groups (decay on
matrices only, the fused kernel), gradient clipping and learning rate (a ``LambdaLR``
equal to traind's ``lr_at``). Hugging Face writes one checkpoint (weights, optimizer,
state) at the end; traind writes the ones it always writes, a new lineage's first and the
file's end; traind's export is off, since Hugging Face writes none.

Each side runs in a subprocess of its own, so start-up and memory are measured alike; a
round runs both, alternating which goes first, after one warm-up round that is not
counted. Printed per round and as medians: steady-state tokens/s (the optimizer steps
after the first ``--skip``), the whole process's wall time (start-up, tokenization,
model load, training, the checkpoint) and its peak resident set (``VmHWM``), each as a
traind / Hugging Face ratio; on the CPU also the median over single steps, which a burst
of another process's load moves less; then the loss of both at the last step and the
largest difference between them over every step of every round. A timing is not a test:
nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES: dict[str, dict[str, Any]] = {
    # Llama shapes of the built-in presets (SwiGLU width as trainer.model.swiglu_hidden).
    "tiny": dict(
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        block_size=256,
        vocab_size=512,
        tie_word_embeddings=True,
    ),
    "small": dict(
        hidden_size=384,
        intermediate_size=1024,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=6,
        block_size=256,
        vocab_size=512,
        tie_word_embeddings=True,
    ),
    # TinyLlama-1.1B's shape: grouped-query attention, an untied head, a 32k vocabulary.
    "1b": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        block_size=2048,
        vocab_size=32000,
        tie_word_embeddings=False,
    ),
}

EOS = "<|endoftext|>"


# --------------------------------------------------------------------------- set-up


def require_device(device: str) -> None:
    """Exit with a clear message when ``--device cuda`` has no CUDA to run on."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(
            f"--device {device}: torch {torch.__version__} sees no CUDA device here "
            f"(a CPU-only build, or no GPU visible); run with --device cpu"
        )


def corpus_lines(count: int, *, offset: int = 0) -> list[str]:
    """Arithmetic lines (~88 bytes each), as ``bench/throughput.py`` trains on."""
    lines = []
    for i in range(offset, offset + count):
        a, b = i % 97, (i * 7) % 89
        text = (
            f"If X={a} and Y={b}, what is X+Y? X+Y = {a}+{b} = {a + b}. "
            f"And X*Y = {a * b}; X-Y = {a - b}."
        )
        lines.append(json.dumps({"text": text}))
    return lines


def build_model_dir(folder: Path, *, size: str, device: str, seed: int) -> Path:
    """A Llama of ``size`` with a BPE tokenizer trained on the corpus, saved as a user's
    local model folder looks (``config.json``, safetensors, ``tokenizer.json``)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    transformers.utils.logging.disable_progress_bar()
    shape = dict(SIZES[size])
    block_size = shape.pop("block_size")
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    bpe = trainers.BpeTrainer(
        vocab_size=min(shape["vocab_size"], 4096),
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [json.loads(line)["text"] for line in corpus_lines(2000)]
    tokenizer.train_from_iterator(texts, trainer=bpe)
    tokenizer.save(str(folder / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "pad_token": EOS,
        "model_max_length": block_size,
        "clean_up_tokenization_spaces": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    eos_id = tokenizer.token_to_id(EOS)
    config = LlamaConfig(
        **shape,
        max_position_embeddings=block_size,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    torch.manual_seed(seed)
    # A billion parameters initialise in seconds on the GPU, minutes on a few cores.
    with torch.device("cuda" if device.startswith("cuda") else "cpu"):
        model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return folder


def write_corpus(path: Path, *, model_dir: Path, sequences: int, block_size: int) -> Path:
    """A JSONL file that traind packs into exactly ``sequences`` windows of ``block_size``."""
    import numpy as np

    from trainer.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    # The packer cuts ceil((tokens - 1) / block) windows: keep the most lines that stay
    # within `sequences` windows, so the last window is nearly full (less padding).
    limit = sequences * block_size + 1
    lines: list[str] = []
    total = 0
    while True:
        chunk = corpus_lines(4096, offset=len(lines))
        texts = [json.loads(line)["text"] for line in chunk]
        sizes = np.array([len(ids) + 1 for ids in tokenizer.encode_batch(texts)])
        cumulative = total + np.cumsum(sizes)
        take = int(np.searchsorted(cumulative, limit, side="right"))
        lines += chunk[:take]
        if take < len(chunk):
            break
        total = int(cumulative[-1])
    path.write_text("\n".join(lines) + "\n")
    return path


def step_rows(data: Any, *, seed: int, steps: int, per_step: int) -> Any:
    """The row indices of each optimizer step traind takes over ``data``, in its order
    (one file from global step 0: the cursor moves ``per_step`` rows a step)."""
    import numpy as np

    from trainer.data import FileSampler

    sampler = FileSampler(data, seed=seed)
    return np.stack([sampler.indices(step * per_step, per_step) for step in range(steps)])


def train_config(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig both sides train with (as a dict, for the subprocesses)."""
    import dataclasses

    from trainer.config import TrainConfig

    warmup = max(1, min(10, args.steps // 4))
    if args.compile and "compile" not in {f.name for f in dataclasses.fields(TrainConfig)}:
        sys.exit("--compile: this traind's TrainConfig has no `compile` field yet")
    extra = {"compile": True} if args.compile else {}
    config = TrainConfig(
        micro_batch_size=args.micro_batch,
        grad_accum_steps=args.grad_accum,
        epochs_per_file=1.0,
        learning_rate=args.lr,
        lr_schedule="cosine",
        warmup_steps=warmup,
        lr_decay_steps=max(1, args.steps - warmup),
        checkpoint_interval=10**9,
        log_interval=10**9,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        **extra,
    )
    return config.to_dict()


# --------------------------------------------------------------------------- the two sides


def peak_rss_bytes() -> int:
    """This process's peak resident set since its exec (``VmHWM``; ``ru_maxrss`` would
    count the parent's pages a fork copied before the exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_traind(job: dict[str, Any], *, profile: bool = False) -> dict[str, Any]:
    """traind's side: open a new lineage of the model folder, train the file, finish."""
    import torch

    from trainer.config import ExportConfig, LineageSpec, RunPaths, TrainConfig
    from trainer.loop import Trainer

    work = Path(job["workdir"])
    config = TrainConfig.from_dict(job["train"])
    paths = RunPaths(checkpoints=work / "checkpoints", state=work / "state")
    trainer = Trainer.open(
        spec=LineageSpec(source=f"hf:{job['model_dir']}"),
        train=config,
        paths=paths,
        export=ExportConfig(enabled=False),
    )
    data = trainer.prepare(Path(job["corpus"]))
    losses: list[torch.Tensor] = []
    stamps: list[float] = []
    update = trainer.steps.update

    def recorded(loss_sum, *, n_targets, lr):
        result = update(loss_sum, n_targets=n_targets, lr=lr)
        if len(stamps) + 1 in (job["skip"], job["steps"]):
            sync(job["device"])  # the steady-state window starts and ends with the device idle
        stamps.append(time.perf_counter())
        # Kept on the device (a read here would add a sync where traind defers it).
        values = getattr(result, "values", None)  # [loss, grad norm]; older: .loss
        losses.append(values[0].detach() if values is not None else torch.tensor(result.loss))
        return result

    trainer.steps.update = recorded
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    trainer.train_file(data, name=Path(job["corpus"]).name)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(work / "traind.prof")
    trainer.finish()
    read = torch.stack([loss.float().cpu() for loss in losses]).tolist()
    return {"losses": read, "stamps": stamps, "steps": trainer.state.global_step}


def run_hf(job: dict[str, Any]) -> dict[str, Any]:
    """Hugging Face's side: ``Trainer.train`` over traind's rows, in traind's order."""
    import numpy as np
    import torch
    from transformers import (
        AutoModelForCausalLM,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from trainer.cache import tokenize_file
    from trainer.config import TrainConfig
    from trainer.optim import lr_at
    from trainer.tokenizer import load_tokenizer

    work = Path(job["workdir"])
    config = TrainConfig.from_dict(job["train"])
    device = job["device"]
    model_dir = Path(job["model_dir"])
    steps, per_step = job["steps"], config.micro_batch_size * config.grad_accum_steps
    # Tokenized by the same code as traind's side: the sequences are then identical.
    data = tokenize_file(
        Path(job["corpus"]),
        tokenizer=load_tokenizer(str(model_dir)),
        block_size=job["block_size"],
        cache_dir=work / "cache",
    )
    order = step_rows(data, seed=config.seed, steps=steps, per_step=per_step).reshape(-1)

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(order)

        def __getitem__(self, index: int) -> int:
            return int(order[index])

    def collate(rows: list[int]) -> dict[str, torch.Tensor]:
        x, y = data.batch(np.asarray(rows))
        targets = torch.from_numpy(np.where(y < 0, -100, y))
        # shift_labels: y is already the next token of each x position (traind's layout);
        # labels only tells the model to compute a loss.
        return {"input_ids": torch.from_numpy(x), "labels": targets, "shift_labels": targets}

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, local_files_only=True, dtype=torch.float32, attn_implementation="sdpa"
    )
    model.to(device)
    # traind's groups (trainer.optim): decay on matrices, none on norm gains and biases.
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups, lr=config.learning_rate, betas=(config.beta1, config.beta2), fused=True
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, config) / config.learning_rate
    )
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device != "cpu")
    arguments = TrainingArguments(
        output_dir=str(work / "hf"),
        max_steps=steps,
        per_device_train_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.grad_accum_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        adam_beta1=config.beta1,
        adam_beta2=config.beta2,
        max_grad_norm=config.grad_clip,
        train_sampling_strategy="sequential",
        remove_unused_columns=False,
        logging_strategy="no",
        save_strategy="steps",
        save_steps=steps,  # one checkpoint at the end, as traind's file_end
        report_to="none",
        disable_tqdm=True,
        bf16=bf16,
        tf32=True if device.startswith("cuda") else None,  # traind turns TF32 on for CUDA
        use_cpu=device == "cpu",
        torch_compile=getattr(config, "compile", False),
        seed=config.seed,
    )
    micro_losses: list[torch.Tensor] = []
    stamps: list[float] = []

    class Recorded(Trainer):
        def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            # Each micro-batch's loss is its target sum over the step's target count: their
            # sum over a step is the step's mean loss, as traind reports it.
            loss = super().training_step(*args, **kwargs)
            micro_losses.append(loss)
            return loss

    class Stamps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (job["skip"], steps):
                sync(device)  # the steady-state window starts and ends with the device idle
            stamps.append(time.perf_counter())

    trainer = Recorded(
        model=model,
        args=arguments,
        train_dataset=Rows(),
        data_collator=collate,
        optimizers=(optimizer, schedule),
        callbacks=[Stamps()],
    )
    trainer.train()
    per_step_losses = torch.stack(micro_losses).float().reshape(steps, -1).sum(dim=1)
    return {"losses": per_step_losses.tolist(), "stamps": stamps, "steps": steps}


def run_side(side: str, job_path: Path, report_path: Path, *, profile: bool) -> None:
    """A subprocess's whole life: one side, its report as JSON (beside it: its work)."""
    job = {**json.loads(job_path.read_text()), "workdir": str(report_path.parent)}
    if job["threads"]:
        import torch

        torch.set_num_threads(job["threads"])
    result = run_traind(job, profile=profile) if side == "traind" else run_hf(job)
    result["peak_rss"] = peak_rss_bytes()
    report_path.write_text(json.dumps(result))


# --------------------------------------------------------------------------- the parent


def spawn(side: str, *, job_path: Path, workdir: Path, profile: bool = False) -> dict[str, Any]:
    """Run one side in a fresh interpreter; its report with the process's wall time."""
    workdir.mkdir(parents=True)
    report = workdir / "report.json"
    command = [sys.executable, __file__, "--side", side, "--job", str(job_path)]
    command += ["--report", str(report)] + (["--profile"] if profile else [])
    started = time.perf_counter()
    with (workdir / "output.txt").open("w") as output:
        done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - started
    if done.returncode:
        tail = (workdir / "output.txt").read_text()[-3000:]
        sys.exit(f"the {side} side failed (exit {done.returncode}):\n{tail}")
    # Checkpoints of a 1B model are tens of GB a run: keep only the report and the output.
    for heavy in ("checkpoints", "state", "hf", "cache"):
        shutil.rmtree(workdir / heavy, ignore_errors=True)
    return {**json.loads(report.read_text()), "wall_s": wall}


def steady_rate(result: dict[str, Any], *, step_tokens: list[int], skip: int) -> float:
    """Tokens/s over the steps after the first ``skip`` (start-up, first allocations)."""
    stamps = result["stamps"]
    seconds = stamps[-1] - stamps[skip - 1]
    return sum(step_tokens[skip:]) / seconds


def step_rates(result: dict[str, Any], *, step_tokens: list[int], skip: int) -> list[float]:
    """Tokens/s of each step after the first ``skip`` (exact on the CPU only: on a GPU the
    Hugging Face side's steps are not synchronised one by one)."""
    stamps = result["stamps"]
    return [step_tokens[i] / (stamps[i] - stamps[i - 1]) for i in range(skip, len(stamps))]


def prepare(args: argparse.Namespace, root: Path) -> tuple[Path, dict[str, Any], list[int]]:
    """The model folder, the corpus and the job both sides run; the tokens of each step."""
    from trainer.cache import tokenize_file
    from trainer.tokenizer import load_tokenizer

    block_size = SIZES[args.size]["block_size"]
    model_dir = build_model_dir(root / "model", size=args.size, device=args.device, seed=args.seed)
    per_step = args.micro_batch * args.grad_accum
    corpus = write_corpus(
        root / "corpus.jsonl",
        model_dir=model_dir,
        sequences=args.steps * per_step,
        block_size=block_size,
    )
    data = tokenize_file(
        corpus,
        tokenizer=load_tokenizer(str(model_dir)),
        block_size=block_size,
        cache_dir=root / "c",
    )
    steps = -(-data.n_sequences // per_step)  # traind's budget for one epoch
    rows = step_rows(data, seed=args.seed, steps=steps, per_step=per_step)
    step_tokens = [int(data.lengths[r].sum()) - len(r) for r in rows]
    job = {
        "model_dir": str(model_dir),
        "corpus": str(corpus),
        "train": train_config(args),
        "device": args.device,
        "steps": steps,
        "skip": args.skip,
        "block_size": block_size,
        "threads": args.threads,
    }
    return model_dir, job, step_tokens


def describe(model_dir: Path) -> str:
    """Parameters and shape of the model folder, for the header."""
    import safetensors

    count = 0
    for path in model_dir.glob("*.safetensors"):
        with safetensors.safe_open(path, "pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                count += _numel(fh, name)
    config = json.loads((model_dir / "config.json").read_text())
    return (
        f"Llama {count / 1e6:,.2f}M params ({config['num_hidden_layers']} layers, width "
        f"{config['hidden_size']}, vocab {config['vocab_size']}, window "
        f"{config['max_position_embeddings']})"
    )


def _numel(fh: Any, name: str) -> int:
    size = 1
    for dim in fh.get_slice(name).get_shape():
        size *= dim
    return size


def print_profile(path: Path, *, limit: int = 25) -> None:
    """The heaviest functions of traind's training loop, by own time and cumulative time."""
    print(f"\ntraind's train_file under cProfile ({path}):")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--skip", type=int, default=5, help="first steps left out of tokens/s")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile both sides (traind's train.compile, TrainingArguments.torch_compile)",
    )
    parser.add_argument("--profile", action="store_true", help="profile traind's side once")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads of both sides (default: torch's choice); 1 on a shared machine "
        "keeps another process's load from stalling every multi-threaded kernel",
    )
    parser.add_argument("--side", choices=("traind", "hf"), help=argparse.SUPPRESS)
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        run_side(args.side, args.job, args.report, profile=args.profile)
        return
    require_device(args.device)
    if not 1 <= args.skip < args.steps:
        parser.error("--skip must be at least 1 and below --steps")
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir, job, step_tokens = prepare(args, root)
        job_path = root / "job.json"
        job_path.write_text(json.dumps(job))
        precision = job["train"]["precision"]
        if precision == "auto":
            precision = "fp32" if args.device == "cpu" else "bf16 autocast"
        if args.compile:
            precision += ", compiled"
        print(
            f"{describe(model_dir)}\n{args.device} {precision}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}, {args.threads or torch.get_num_threads()} threads; "
            f"micro {args.micro_batch} x accum {args.grad_accum}, {job['steps']} steps of "
            f"~{statistics.mean(step_tokens):,.0f} tokens, tokens/s over steps {args.skip + 1}-{job['steps']}; "
            f"{args.rounds} rounds after a warm-up round"
        )
        header = (
            f"{'round':<6}{'first':<8}{'traind tok/s':>13}{'HF tok/s':>11}{'ratio':>7}"
            f"{'traind wall':>13}{'HF wall':>9}{'ratio':>7}{'traind RSS':>12}{'HF RSS':>9}{'ratio':>7}"
        )
        print(header)
        rows: list[dict[str, float]] = []
        losses: list[tuple[list[float], list[float]]] = []
        per_step: dict[str, list[float]] = {"traind": [], "hf": []}
        for round_ in range(args.rounds + 1):
            # Alternate which side goes first: a machine drifts under sustained load.
            order = ("traind", "hf") if round_ % 2 else ("hf", "traind")
            results = {
                side: spawn(side, job_path=job_path, workdir=root / f"r{round_}-{side}")
                for side in order
            }
            ours, theirs = results["traind"], results["hf"]
            losses.append((ours["losses"], theirs["losses"]))
            row = {
                "traind_rate": steady_rate(ours, step_tokens=step_tokens, skip=args.skip),
                "hf_rate": steady_rate(theirs, step_tokens=step_tokens, skip=args.skip),
                "traind_wall": ours["wall_s"],
                "hf_wall": theirs["wall_s"],
                "traind_rss": ours["peak_rss"] / 2**20,
                "hf_rss": theirs["peak_rss"] / 2**20,
            }
            label = f"{round_}" if round_ else "warm"
            print_row(label, order[0], row)
            if round_:
                rows.append(row)
                for side, result in results.items():
                    per_step[side] += step_rates(result, step_tokens=step_tokens, skip=args.skip)
        median = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        ratios = {
            what: statistics.median(r[f"traind_{what}"] / r[f"hf_{what}"] for r in rows)
            for what in ("rate", "wall", "rss")
        }
        print_row("median", "", median, ratios=ratios)
        if args.device == "cpu":
            # A step slowed by another process's burst of load weighs less in a median.
            ours, theirs = (statistics.median(per_step[side]) for side in ("traind", "hf"))
            print(
                f"median of single steps: traind {ours:,.0f} tok/s, HF {theirs:,.0f} tok/s, "
                f"ratio {ours / theirs:.3f} ({len(per_step['hf'])} steps a side)"
            )
        print_losses(losses)
        if args.profile:
            result = spawn("traind", job_path=job_path, workdir=root / "profile", profile=True)
            print_profile(root / "profile" / "traind.prof")
            del result


def print_row(
    label: str, first: str, row: dict[str, float], *, ratios: dict[str, float] | None = None
) -> None:
    """One line of the table; ``ratios`` (medians of per-round ratios) replace the
    ratios of the medians on the summary line."""
    ratios = ratios or {
        what: row[f"traind_{what}"] / row[f"hf_{what}"] for what in ("rate", "wall", "rss")
    }
    print(
        f"{label:<6}{first:<8}{row['traind_rate']:>13,.0f}{row['hf_rate']:>11,.0f}"
        f"{ratios['rate']:>7.3f}{row['traind_wall']:>12.2f}s{row['hf_wall']:>8.2f}s"
        f"{ratios['wall']:>7.3f}{row['traind_rss']:>9,.0f}MiB{row['hf_rss']:>6,.0f}MiB"
        f"{ratios['rss']:>7.3f}"
    )


def print_losses(losses: list[tuple[list[float], list[float]]]) -> None:
    """The last step's loss on both sides, and their largest difference over all steps."""
    ours, theirs = losses[-1]
    worst = max(abs(a - b) for mine, other in losses for a, b in zip(mine, other, strict=True))
    print(
        f"loss at step {len(ours)}: traind {ours[-1]:.6f}, HF {theirs[-1]:.6f} (step 1: "
        f"{ours[0]:.6f} / {theirs[0]:.6f}); largest |difference| over {len(ours)} steps x "
        f"{len(losses)} runs: {worst:.2e}"
    )


if __name__ == "__main__":
    main()
