"""Forgetting across a strong distribution shift, and what replay does about it.

Run: ``.venv/bin/python bench/forgetting.py [--replay 0 0.05 0.25] [--size 300000]
[--epochs 1] [--seed 7] [--threads N] [--keep DIR] [-v]`` (about 2 minutes for the three
runs on an idle 2-core CPU with the defaults; ``--size``, characters per drop, scales it;
``-v`` logs each evaluation). ``docs/forgetting.md`` explains the numbers.

One lineage of the built-in ``tiny`` GPT (byte tokenizer, ``block_size`` 128) is trained,
file after file, on drops of three synthetic domains made by ``bench/domains.py`` from
the seed, in this order: ``arithmetic`` (equations such as ``7*9=63 20-9=11``), ``code``
(small Python methods), ``prose`` (sentences from a word list and a grammar). They share
little, down to the bytes, so each new domain is a strong shift away from the ones
before. The same drops are trained with the same seed once per ``train.replay_fraction``
(each run in its own folder), with ``eval.holdout_fraction`` 0.1 and an evaluation at
every file end; the numbers come from the forgetting report of the ``eval`` events
(``<state>/events.jsonl``): every drop's held-out loss now, and its best so far.

Printed per run: the first drop's held-out loss at its best and after the last drop,
their ratio, the newest drop's final held-out loss and its ratio to the run without
replay, then whether the goal holds for the recommended fraction against a strong shift
(0.25): the first domain within 5% of its best, the newest within 5% of the no-replay run.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from domains import DOMAINS, write_drop

from trainer.config import EvalConfig, ExportConfig, LineageSpec, RunPaths, TrainConfig
from trainer.data import TokenizedFile
from trainer.loop import Trainer

log = logging.getLogger("bench.forgetting")

RECOMMENDED = 0.25
"""The replay fraction the docs recommend for a strong shift: the goal is checked on it."""
GOAL = 0.05
"""Both goals are within 5%."""


@dataclass(frozen=True)
class Drop:
    path: Path
    domain: str


@dataclass(frozen=True)
class RunResult:
    """What one run's forgetting report says about its first and newest drop."""

    replay: float
    steps: int
    wall_s: float
    first_best: float
    first_best_step: int
    first_final: float
    newest_final: float
    first_full: float
    """The first drop's loss on all its held-out sequences, scored here (a cross-check)."""


# ----------------------------------------------------------------- data
def write_drops(
    folder: Path, domains: list[str], *, seed: int, size: int, per_domain: int
) -> list[Drop]:
    """``per_domain`` drops of each domain, domain after domain, each of at least ``size``
    characters; no example is in two drops."""
    folder.mkdir(parents=True)
    drops: list[Drop] = []
    number = 1
    for domain in domains:
        start = 0
        for _ in range(per_domain):
            path = folder / f"{number:02d}-{domain}.jsonl"
            start = write_drop(path, domain, seed=seed, start=start, size=size)
            drops.append(Drop(path, domain))
            number += 1
    return drops


# ----------------------------------------------------------------- training
def configs(args: argparse.Namespace, replay: float) -> tuple[LineageSpec, TrainConfig, EvalConfig]:
    spec = LineageSpec(preset="tiny", overrides={"block_size": args.block_size})
    train = TrainConfig(
        device="cpu",
        precision="fp32",
        micro_batch_size=args.micro_batch,
        epochs_per_file=args.epochs,
        learning_rate=args.lr,
        warmup_steps=10,
        checkpoint_interval=10**9,
        log_interval=10**9,
        seed=args.seed,
        replay_fraction=replay,
    )
    evaluation = EvalConfig(
        holdout_fraction=args.holdout,
        interval=args.eval_interval or 10**9,
        sequences=args.eval_sequences,
        forgetting_drops=8,
        forgetting_sequences=args.eval_sequences,
    )
    return spec, train, evaluation


def train_lineage(
    drops: list[Drop], workdir: Path, args: argparse.Namespace, replay: float
) -> tuple[Trainer, TokenizedFile, float]:
    """Train every drop in order on a new lineage in ``workdir``; returns the trainer
    (finished, its model still in memory), the first drop's tokenized data and the
    seconds it took."""
    spec, train, evaluation = configs(args, replay)
    paths = RunPaths(checkpoints=workdir / "checkpoints", state=workdir / "state")
    trainer = Trainer.open(
        spec=spec,
        train=train,
        paths=paths,
        evaluation=evaluation,
        export=ExportConfig(enabled=False),
    )
    started = time.perf_counter()
    prepared = []
    try:
        for drop in drops:
            prepared.append(data := trainer.prepare(drop.path))
            trainer.train_file(data, name=drop.path.name)
            log.info(
                "replay %.2f: %s done at step %d", replay, drop.path.name, trainer.state.global_step
            )
    except BaseException:
        trainer.close()
        raise
    trainer.finish()
    return trainer, prepared[0], time.perf_counter() - started


def forgetting_reports(events: Path) -> list[dict]:
    """The ``eval`` events that carry a forgetting report, oldest first."""
    reports = []
    for line in events.read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "eval" and event.get("forgetting"):
            reports.append(event)
    return reports


def drop_entry(event: dict, name: str) -> dict:
    for entry in event["forgetting"]["drops"]:
        if entry["file"] == name:
            return entry
    raise LookupError(f"the forgetting report at step {event['step']} does not have {name}")


@torch.no_grad()
def full_holdout_loss(model: torch.nn.Module, holdout: TokenizedFile, *, batch: int = 16) -> float:
    """Mean loss over every target token of every held-out sequence (no sample)."""
    was_training = model.training
    model.eval()
    loss_sum, targets = 0.0, 0
    for start in range(0, holdout.n_sequences, batch):
        x_np, y_np = holdout.batch(range(start, min(start + batch, holdout.n_sequences)))
        logits = model(torch.from_numpy(x_np))
        y = torch.from_numpy(y_np)
        loss_sum += F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            y.reshape(-1),
            ignore_index=-1,
            reduction="sum",
        ).item()
        targets += int((y_np >= 0).sum())
    model.train(was_training)
    return loss_sum / targets


def run(drops: list[Drop], workdir: Path, args: argparse.Namespace, replay: float) -> RunResult:
    trainer, first, wall_s = train_lineage(drops, workdir, args, replay)
    reports = forgetting_reports(trainer.paths.events)
    if not reports:
        raise RuntimeError("no eval event carries a forgetting report: is the holdout on?")
    last = reports[-1]
    first_entry = drop_entry(last, drops[0].path.name)
    newest_entry = drop_entry(last, drops[-1].path.name)
    for event in reports:
        entry = drop_entry(event, drops[0].path.name)
        log.info(
            "replay %.2f, step %5d: %s held-out loss %.4f (best %.4f at step %d)",
            replay,
            event["step"],
            drops[0].path.name,
            entry["loss"],
            entry["best"],
            entry["best_step"],
        )
    full = full_holdout_loss(trainer.model, first.holdout)
    log.info(
        "replay %.2f: cross-check: %s after the last drop, report %.4f on %d sequences, "
        "%.4f on all %d held-out sequences",
        replay,
        drops[0].path.name,
        first_entry["loss"],
        first_entry["sequences"],
        full,
        first.holdout.n_sequences,
    )
    return RunResult(
        replay=replay,
        steps=trainer.state.global_step,
        wall_s=wall_s,
        first_best=first_entry["best"],
        first_best_step=first_entry["best_step"],
        first_final=first_entry["loss"],
        newest_final=newest_entry["loss"],
        first_full=full,
    )


# ----------------------------------------------------------------- report
def print_report(results: list[RunResult], drops: list[Drop], *, total_s: float) -> None:
    base = next((r for r in results if r.replay == 0), None)
    print(
        f"first drop: {drops[0].path.name}, newest: {drops[-1].path.name} ({len(drops)} drops); "
        "held-out losses from the forgetting report, nats per byte"
    )
    print_table(results, base)
    if base is not None:
        for r in results:
            if r.replay:
                print(
                    f"replay {r.replay:.2f} vs 0: first drop after the last "
                    f"x{r.first_final / base.first_final:.3f}, newest "
                    f"x{r.newest_final / base.newest_final:.3f}, steps x{r.steps / base.steps:.3f}"
                )
    checks = ", ".join(f"replay {r.replay:.2f} {r.first_full:.4f}" for r in results)
    print(f"cross-check, first drop after the last on all its held-out sequences: {checks}")
    print_goal(results, base)
    print(f"total {total_s:.0f} s, torch {torch.__version__}, {torch.get_num_threads()} threads")


def print_table(results: list[RunResult], base: RunResult | None) -> None:
    print(
        f"{'replay':>6} {'steps':>6} {'time s':>7} | {'first best':>10} {'@step':>6} "
        f"{'after last':>10} {'last/best':>9} | {'newest':>7} {'/ r=0':>6}"
    )
    for r in results:
        vs_base = f"{r.newest_final / base.newest_final:>6.3f}" if base else f"{'-':>6}"
        print(
            f"{r.replay:>6.2f} {r.steps:>6d} {r.wall_s:>7.1f} | {r.first_best:>10.4f} "
            f"{r.first_best_step:>6d} {r.first_final:>10.4f} "
            f"{r.first_final / r.first_best:>9.3f} | {r.newest_final:>7.4f} {vs_base}"
        )


def print_goal(results: list[RunResult], base: RunResult | None) -> None:
    chosen = next((r for r in results if r.replay == RECOMMENDED), None)
    if chosen is None or base is None:
        print(f"goal: not checked (needs runs with replay 0 and {RECOMMENDED})")
        return
    kept = chosen.first_final / chosen.first_best - 1
    newest = chosen.newest_final / base.newest_final - 1
    forgot = base.first_final / base.first_best - 1
    ok = kept <= GOAL and newest <= GOAL
    print(
        f"goal at replay {RECOMMENDED}: first drop {kept:+.1%} from its best (limit +{GOAL:.0%}), "
        f"newest {newest:+.1%} from no replay (limit +{GOAL:.0%}): {'met' if ok else 'NOT met'}; "
        f"without replay the first drop ends {forgot:+.1%} from its best"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replay", type=float, nargs="+", default=[0.0, 0.05, RECOMMENDED])
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    parser.add_argument("--drops-per-domain", type=int, default=1)
    parser.add_argument("--size", type=int, default=300_000, help="characters per drop")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--holdout", type=float, default=0.1)
    parser.add_argument("--eval-sequences", type=int, default=64)
    parser.add_argument("--eval-interval", type=int, default=0, help="0: at file ends only")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--keep", type=Path, help="work in this new folder and keep it")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO if args.verbose else logging.WARNING)
    # A forgotten domain blocks gold by the regression guard at every file end: expected here.
    logging.getLogger("trainer.checkup").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="traind-forgetting-") as tmp:
        root = args.keep or Path(tmp)
        drops = write_drops(
            root / "drops",
            args.domains,
            seed=args.seed,
            size=args.size,
            per_domain=args.drops_per_domain,
        )
        results = [run(drops, root / f"replay-{r:g}", args, r) for r in args.replay]
    print_report(results, drops, total_s=time.perf_counter() - started)


if __name__ == "__main__":
    main()
