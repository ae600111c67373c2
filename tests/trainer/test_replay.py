"""Replay of earlier drops and the forgetting report (``trainer.replay``,
``trainer.forgetting``): the budget counts a file's own sequences, the draw is a pure
function of (seed, global step), held-out examples and the file in progress never replay,
a resume with replay on is bit-identical, a lost cache entry is rebuilt, and the report's
losses are a direct evaluation of the drops' held-out parts."""

import json
import math
import shutil

import numpy as np
import pytest
import tiny_hf
import torch
import torch.nn.functional as F
from conftest import text_rows, write_jsonl

from tests.runcheck import same_weights_and_moments
from trainer.budget import steps_for_file
from trainer.config import EvalConfig, GoldConfig, LineageSpec, RunPaths
from trainer.forgetting import scored_drops
from trainer.gold import EvalPoint, decide_gold
from trainer.loop import FileOutcome, Trainer
from trainer.records.events import round_loss
from trainer.replay import ReplayPool, replay_share

HOLDOUT = EvalConfig(holdout_fraction=0.2, interval=10_000, forgetting_sequences=4)


def events(paths, kind):
    rows = [json.loads(line) for line in paths.events.read_text().splitlines()]
    return [r for r in rows if r["event"] == kind]


def drops(tmp_path, count=3, rows=40):
    """Distinct drops (each its own numbers), in order."""
    return [
        write_jsonl(tmp_path / f"drop{i}.jsonl", text_rows(rows, offset=1000 * i))
        for i in range(count)
    ]


def train_all(trainer, files, **options):
    for path in files:
        trainer.train_file(trainer.prepare(path), name=path.name, **options)


def stop_after(n: int):
    calls = iter(range(1000))
    return lambda: next(calls) >= n


def spy_steps(trainer) -> list:
    """The rows of every optimizer step the trainer takes from now on."""
    seen = []
    accumulate = trainer.steps.accumulate

    def spy(rows, **kwargs):
        seen.append(rows)
        return accumulate(rows, **kwargs)

    trainer.steps.accumulate = spy
    return seen


def test_the_budget_counts_the_files_own_sequences_only():
    # ceil(epochs * n / ((1 - r) * micro * accum * world)), in exact fractions.
    assert steps_for_file(76, epochs=1.0, micro=4, accum=2, world=1, replay=0.05) == 10
    assert steps_for_file(100, epochs=1.0, micro=4, accum=2, world=1, replay=0.25) == 17
    assert steps_for_file(100, epochs=2.0, micro=4, accum=2, world=1, replay=0.5) == 50
    assert steps_for_file(100, epochs=1.0, micro=4, accum=2, world=1) == 13
    # Each step's own share keeps the file's total exact: after k steps, floor(k q).
    for fraction, per_step in [(0.05, 8), (0.25, 8), (0.3, 6), (0.01, 16)]:
        own = [per_step - replay_share(k, per_step=per_step, fraction=fraction) for k in range(40)]
        assert sum(own) == math.floor(40 * per_step * (1 - fraction) + 1e-9)
        assert max(own) - min(own) <= 1


def test_replay_draws_only_earlier_training_sequences_and_is_deterministic(
    tmp_path, open_trainer, run_paths
):
    files = drops(tmp_path)
    trainer = open_trainer(evaluation=HOLDOUT, replay_fraction=0.5)
    train_all(trainer, files[:2])
    first, second = (trainer.prepare(f) for f in files[:2])
    # The first file had nothing to replay, so its budget and steps are its own.
    starts = events(run_paths, "file_start")
    assert [s["replay_fraction"] for s in starts] == [0.0, 0.5]
    seen = spy_steps(trainer)
    third = trainer.prepare(files[2])
    trainer.train_file(third, name=files[2].name)
    expected = steps_for_file(third.n_sequences, epochs=1.0, micro=4, accum=2, world=1, replay=0.5)
    assert len(seen) == expected
    held_out = {
        bytes(h.tokens[h.starts[i] : h.starts[i] + h.lengths[i]])
        for h in (first.holdout, second.holdout, third.holdout)
        for i in range(h.n_sequences)
    }
    replayed = 0
    for step, rows in enumerate(seen, start=starts[-1]["target_step"]):
        assert rows.own[0].sha256 == third.sha256
        assert len(rows) == 8 and len(rows.own[1]) == 4
        for data, picked in rows.replayed:
            assert data.sha256 in {first.sha256, second.sha256}
            assert (picked < data.n_sequences).all()
            for i in picked:
                start = data.starts[i]
                assert bytes(data.tokens[start : start + data.lengths[i]]) not in held_out
            replayed += len(picked)
        # The same (seed, step) draws the same rows in a pool built afresh.
        again = ReplayPool(
            tokenizer=trainer.tokenizer,
            block_size=trainer.feed.pool.block_size,
            cache_dir=trainer.feed.pool.cache_dir,
            seed=trainer.state.seed,
            recent_weight=0.0,
            events=trainer.events,
        )
        again.restore(trainer.state.files_completed[:2])
        redrawn = again.draw(step=step, count=4, besides=third.sha256)
        assert [(d.sha256, p.tolist()) for d, p in redrawn] == [
            (d.sha256, p.tolist()) for d, p in rows.replayed
        ]
    done = events(run_paths, "file_complete")[-1]
    assert done["replayed_sequences"] == replayed == 4 * expected
    assert done["replayed_tokens"] > 0 and done["replay_fraction"] == 0.5
    assert done["tokens"] == trainer.state.files_completed[-1].tokens


def test_recent_weight_leans_the_draw_toward_newer_drops(tmp_path, open_trainer):
    trainer = open_trainer(replay_fraction=0.5, replay_recent_weight=0.9)
    train_all(trainer, drops(tmp_path, count=3, rows=24))
    pool = trainer.feed.drops()
    counts = {d.sha256: 0 for d in pool.drops}
    for step in range(200):
        for data, picked in pool.draw(step=step, count=8, besides=""):
            counts[data.sha256] += len(picked)
    oldest, middle, newest = counts.values()
    assert newest > 5 * middle > 0 and middle > 5 * oldest


def test_a_resume_with_replay_is_bit_identical(tmp_path, open_trainer):
    files = drops(tmp_path)
    roots = [tmp_path / "straight", tmp_path / "resumed"]
    runs = []
    for root in roots:
        paths = RunPaths(checkpoints=root / "checkpoints", state=root / "state")
        options = dict(paths=paths, evaluation=HOLDOUT, replay_fraction=0.25)
        trainer = open_trainer(**options)
        train_all(trainer, files[:2])
        data = trainer.prepare(files[2])
        if root.name == "resumed":
            outcome = trainer.train_file(data, name=files[2].name, should_stop=stop_after(2))
            assert outcome is FileOutcome.STOPPED
            trainer = open_trainer(**options)  # a new process would do the same
            data = trainer.prepare(files[2])
        trainer.train_file(data, name=files[2].name)
        runs.append(trainer)
    straight, resumed = runs
    assert straight.state.global_step == resumed.state.global_step
    assert straight.state.files_completed[-1].replayed_tokens > 0
    same_weights_and_moments(*roots)


def test_a_lost_cache_entry_is_rebuilt_from_its_source_or_left_out(
    tmp_path, open_trainer, run_paths
):
    files = drops(tmp_path)
    trainer = open_trainer(evaluation=HOLDOUT, replay_fraction=0.5)
    train_all(trainer, files[:2])
    first = trainer.prepare(files[0])
    entry = run_paths.cache / first.key
    shutil.rmtree(entry)
    trainer.close()
    # Reopened with a way to find the source: the entry comes back, the draw is whole.
    reopened = Trainer.open(
        spec=LineageSpec(preset="test"),
        train=trainer.train,
        paths=run_paths,
        evaluation=HOLDOUT,
        source_of={first.sha256: files[0]}.get,
    )
    try:
        pool = reopened.feed.drops()
        assert [d.sha256 for d in pool.drops] == [f.sha256 for f in reopened.state.files_completed]
        assert (entry / "meta.json").is_file()
    finally:
        reopened.close()
    # Lost again with no source: left out, said as an event, training goes on.
    shutil.rmtree(entry)
    trainer = open_trainer(evaluation=HOLDOUT, replay_fraction=0.5)
    train_all(trainer, files[2:])
    missing = events(run_paths, "replay_source_missing")
    assert [m["sha256"] for m in missing] == [first.sha256]
    assert "no source file" in missing[0]["reason"]
    assert first.sha256 not in [d.sha256 for d in trainer.feed.pool.drops]
    assert trainer.state.files_completed[-1].replayed_sequences > 0


def test_the_forgetting_report_is_a_direct_evaluation_of_each_drops_holdout(
    tmp_path, open_trainer, run_paths
):
    files = drops(tmp_path, count=4)
    evaluation = EvalConfig(
        holdout_fraction=0.2, interval=10_000, forgetting_drops=3, forgetting_sequences=64
    )
    trainer = open_trainer(evaluation=evaluation)
    train_all(trainer, files)
    report = events(run_paths, "eval")[-1]["forgetting"]
    held = [trainer.prepare(f) for f in files]
    # Three of four drops: the oldest and the newest always.
    assert report["measured"] == 3 and report["drops_total"] == 4
    assert [d["sha256"] for d in report["drops"]] == [
        f.sha256 for f in scored_drops(trainer.state.files_completed, count=3)
    ]
    assert report["drops"][0]["sha256"] == held[0].sha256
    assert report["drops"][-1]["sha256"] == held[-1].sha256
    model = trainer.model.eval()
    for drop in report["drops"]:
        holdout = next(h.holdout for h in held if h.sha256 == drop["sha256"])
        assert drop["sequences"] == holdout.n_sequences  # all of it: fewer than 64
        x, y = (torch.from_numpy(a) for a in holdout.batch(np.arange(holdout.n_sequences)))
        with torch.no_grad():
            logits = model(x)
        direct = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1
        )
        assert drop["loss"] == pytest.approx(round_loss(direct.item()), abs=2e-6)
        assert drop["best"] <= drop["loss"] and drop["increase"] >= 0
        assert drop["increase"] == pytest.approx(drop["loss"] / drop["best"] - 1, abs=1e-6)
    assert report["worst"]["increase"] == max(d["increase"] for d in report["drops"])
    # The bests are the lowest each drop ever scored, kept in the state.
    for drop in report["drops"]:
        assert trainer.state.drop_best[drop["sha256"]]["loss"] == drop["best"]


def test_the_gold_guard_blocks_a_best_that_forgets_a_drop_and_names_it():
    report = {
        "drops": [
            {
                "file": "old.jsonl",
                "end_step": 40,
                "loss": 2.3,
                "best": 2.0,
                "best_step": 40,
                "increase": 0.15,
            },
            {
                "file": "new.jsonl",
                "end_step": 80,
                "loss": 1.5,
                "best": 1.5,
                "best_step": 80,
                "increase": 0.0,
            },
        ]
    }
    point = EvalPoint(step=80, val_loss=1.5, train_loss=1.4, sets={"recent": 1.5})
    blocked = decide_gold(
        point,
        history=[],
        gold=None,
        config=GoldConfig(forgetting_threshold=0.1),
        forgetting=report,
    )
    assert not blocked.promote and blocked.guards == ("forgetting",)
    assert "'old.jsonl'" in blocked.reason and "15.0% worse" in blocked.reason
    assert "new.jsonl" not in blocked.reason
    allowed = decide_gold(
        point,
        history=[],
        gold=None,
        config=GoldConfig(forgetting_threshold=0.2),
        forgetting=report,
    )
    assert allowed.promote
    assert decide_gold(point, history=[], gold=None, config=GoldConfig(), forgetting=report).promote


def test_replay_on_a_hugging_face_model(tmp_path, open_trainer, run_paths):
    folder = tiny_hf.make_llama_dir(tmp_path / "llama")
    trainer = open_trainer(
        spec=LineageSpec(source=f"hf:{folder}"), evaluation=HOLDOUT, replay_fraction=0.25
    )
    train_all(trainer, drops(tmp_path, count=2, rows=24))
    done = events(run_paths, "file_complete")
    assert [d["replay_fraction"] for d in done] == [0.0, 0.25]
    assert done[-1]["replayed_sequences"] > 0
    assert events(run_paths, "eval")[-1]["forgetting"]["measured"] == 2


def test_a_file_keeps_the_replay_share_it_started_with_across_a_settings_change(
    tmp_path, open_trainer, run_paths
):
    files = drops(tmp_path)
    trainer = open_trainer(evaluation=HOLDOUT, replay_fraction=0.5)
    train_all(trainer, files[:2])
    data = trainer.prepare(files[2])
    assert trainer.train_file(data, name=files[2].name, should_stop=stop_after(1)) is (
        FileOutcome.STOPPED
    )
    target = trainer.state.current_file.target_step
    # Restarted with replay off: the file in progress keeps its half, and its target.
    trainer = open_trainer(evaluation=HOLDOUT, replay_fraction=0.0)
    seen = spy_steps(trainer)
    trainer.train_file(trainer.prepare(files[2]), name=files[2].name)
    assert trainer.state.global_step == target
    assert seen and all(r.replayed_sequences == 4 for r in seen)
    # The next file starts with the setting in force: no replay.
    fourth = write_jsonl(tmp_path / "drop3.jsonl", text_rows(40, offset=3000))
    seen.clear()
    trainer.train_file(trainer.prepare(fourth), name=fourth.name)
    assert seen and not any(r.replayed_sequences for r in seen)
    assert [e["replay_fraction"] for e in events(run_paths, "file_complete")] == [0, 0.5, 0.5, 0]
