"""Evaluation in the trainer: held-out data is never trained on, evaluating leaves the
training trajectory bit-identical, gold is written, kept through rotation and carries
optimizer state, and a lineage can go back to it."""

import json
import logging

import pytest
import torch
from conftest import qa_rows, text_rows, write_jsonl

from trainer.cache import tokenize_file
from trainer.checkpoint import CheckpointError, read_checkpoint
from trainer.config import EvalConfig, ExportConfig, GoldConfig, RunPaths
from trainer.evaluate import EvalSetError
from trainer.packing import is_held_out
from trainer.records.checkpoints import step_folders
from trainer.tokenizer import build_byte_tokenizer

TOKENIZER = build_byte_tokenizer()


def events(run_paths, kind=None):
    rows = [json.loads(line) for line in run_paths.events.read_text().splitlines()]
    return [r for r in rows if kind is None or r["event"] == kind]


def test_holdout_is_chosen_by_content_and_never_in_the_training_part(tmp_path):
    rows = qa_rows(300)
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    data = tokenize_file(
        path, tokenizer=TOKENIZER, block_size=64, cache_dir=tmp_path / "c", holdout_fraction=0.2
    )
    held = {
        i + 1 for i, row in enumerate(rows) if is_held_out((row["prompt"], row["completion"]), 0.2)
    }
    assert 30 < len(held) < 90  # about 20%
    assert data.holdout.n_sequences == len(held)
    assert data.n_sequences == len(rows) - len(held)
    train_lines = {first for first, _ in data.lines_of(range(data.n_sequences))}
    holdout_lines = {first for first, _ in data.holdout.lines_of(range(data.holdout.n_sequences))}
    assert not train_lines & holdout_lines
    # The same example in another drop, at another line, is held out there too.
    first_held = rows[min(held) - 1]
    other = write_jsonl(tmp_path / "b.jsonl", [*qa_rows(5, offset=1000), first_held])
    again = tokenize_file(
        other, tokenizer=TOKENIZER, block_size=64, cache_dir=tmp_path / "c", holdout_fraction=0.2
    )
    assert 6 in {first for first, _ in again.holdout.lines_of(range(again.holdout.n_sequences))}
    # Without a holdout the same file is another cache entry, with every example.
    whole = tokenize_file(path, tokenizer=TOKENIZER, block_size=64, cache_dir=tmp_path / "c")
    assert whole.holdout is None and whole.n_sequences == len(rows) and whole.key != data.key


def test_a_file_too_small_to_split_is_trained_whole(tmp_path):
    # Find a one-line file whose only example draws the holdout.
    row = next(r for r in qa_rows(200) if is_held_out((r["prompt"], r["completion"]), 0.5))
    path = write_jsonl(tmp_path / "one.jsonl", [row])
    data = tokenize_file(
        path, tokenizer=TOKENIZER, block_size=64, cache_dir=tmp_path / "c", holdout_fraction=0.5
    )
    assert data.n_sequences == 1 and data.holdout is None and data.holdout_fraction == 0.0


def _train_one_file(tmp_path, open_trainer, paths, evaluation):
    trainer = open_trainer(paths=paths, evaluation=evaluation, export=ExportConfig(enabled=False))
    path = write_jsonl(tmp_path / "drop.jsonl", qa_rows(96))
    trainer.train_file(trainer.prepare(path), name=path.name)
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    moments = trainer.optimizer.state_dict()
    trainer.close()
    return weights, moments


def test_evaluating_does_not_change_the_training_trajectory(tmp_path, open_trainer, run_paths):
    general = write_jsonl(tmp_path / "general.jsonl", text_rows(20))
    quiet = EvalConfig(interval=10_000, at_file_end=False, holdout_fraction=0.2)
    busy = EvalConfig(
        interval=1,
        sequences=8,
        batch_size=4,
        holdout_fraction=0.2,
        sets=(("general", general),),
        prompts=("Q1: what is",),
        sample_tokens=5,
    )
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir(), b_dir.mkdir()
    a_paths = RunPaths(checkpoints=a_dir / "ck", state=a_dir / "st")
    b_paths = RunPaths(checkpoints=b_dir / "ck", state=b_dir / "st")
    weights_a, moments_a = _train_one_file(a_dir, open_trainer, a_paths, quiet)
    weights_b, moments_b = _train_one_file(b_dir, open_trainer, b_paths, busy)
    assert events(b_paths, "eval") and not events(a_paths, "eval")
    for key, value in weights_a.items():
        assert torch.equal(value, weights_b[key]), key
    for index, state in moments_a["state"].items():
        for name, value in state.items():
            assert torch.equal(value, moments_b["state"][index][name])


def test_eval_events_gold_and_rotation(tmp_path, open_trainer, run_paths):
    general = write_jsonl(tmp_path / "general.jsonl", text_rows(12))
    evaluation = EvalConfig(
        interval=2,
        sequences=8,
        batch_size=4,
        holdout_fraction=0.25,
        sets=(("general", general),),
        prompts=("If X=1",),
        sample_tokens=3,
    )
    trainer = open_trainer(
        evaluation=evaluation, gold=GoldConfig(), keep_checkpoints=1, checkpoint_interval=2
    )
    path = write_jsonl(tmp_path / "drop.jsonl", qa_rows(120))
    trainer.train_file(trainer.prepare(path), name=path.name)
    evals = events(run_paths, "eval")
    end = trainer.state.global_step
    # The baseline before the first step, every interval, and the file's end (once).
    expected = [(0, "lineage_start"), *((s, "interval") for s in range(2, end, 2))]
    assert [(e["step"], e["trigger"]) for e in evals] == [*expected, (end, "file_end")]
    assert evals[-1]["progress_pct"] == 100 and evals[-1]["file"] == path.name
    first = evals[0]
    assert first["val_set"] == "recent" and first["val_loss"] == first["eval_recent"]
    assert "eval_general" in first and first["samples"][0]["prompt"] == "If X=1"
    for key in ("elapsed_s", "tokens_processed", "progress_pct", "lr", "file", "eval_duration_s"):
        assert key in first
    assert round(first["val_loss"], 6) == first["val_loss"]
    promoted = events(run_paths, "gold_checkpoint")
    assert promoted and promoted[0]["prev_best"] is None
    gold = read_checkpoint(run_paths.checkpoints / "gold")
    assert gold.step == promoted[-1]["step"] == trainer.state.gold["step"]
    assert gold.optimizer_state()["state"], "gold carries the optimizer moments"
    assert gold.training_state["gold"]["val_loss"] == promoted[-1]["val_loss"]
    # keep_checkpoints=1 rotated every older step-* away, never gold.
    assert len(step_folders(run_paths.checkpoints)) == 1
    assert trainer.state.gold_history[-1]["step"] == gold.step
    trainer.finish()
    (complete,) = events(run_paths, "training_complete")
    assert complete["gold_step"] == gold.step
    assert complete["best_val_loss"] == min(e["val_loss"] for e in evals)
    assert complete["tokens_per_s"] > 0


def test_from_gold_rolls_the_lineage_back(tmp_path, open_trainer, run_paths):
    evaluation = EvalConfig(interval=3, sequences=8, batch_size=4, holdout_fraction=0.25)
    trainer = open_trainer(evaluation=evaluation, checkpoint_interval=4)
    first = write_jsonl(tmp_path / "a.jsonl", qa_rows(48))
    trainer.train_file(trainer.prepare(first), name=first.name)
    gold_step = trainer.state.gold["step"]
    # From here on no candidate passes, so gold stays in the first file, behind the latest.
    trainer.checkup.gold_config = GoldConfig(overfit_ratio=1e-9)
    second = write_jsonl(tmp_path / "b.jsonl", qa_rows(48, offset=500))
    trainer.train_file(trainer.prepare(second), name=second.name)
    end = trainer.state.global_step
    assert trainer.state.gold["step"] == gold_step < end
    assert events(run_paths, "gold_blocked")
    trainer.close()

    back = open_trainer(evaluation=evaluation, from_gold=True)
    assert back.state.global_step == gold_step
    (event,) = events(run_paths, "rolled_back_to_gold")
    assert (event["gold_step"], event["from_step"]) == (gold_step, end)
    assert all(step <= gold_step for step, _ in step_folders(run_paths.checkpoints))
    kept = sorted(p.name for p in (run_paths.checkpoints / "rolled-back").glob("*/step-*"))
    assert kept == sorted(event["moved"]) and kept
    assert [f.name for f in back.state.files_completed] == [
        f.name for f in back.state.files_completed if f.end_step <= gold_step
    ]
    assert back.state.current_file is None  # gold's unfinished file is not resumed
    third = write_jsonl(tmp_path / "c.jsonl", qa_rows(16, offset=900))
    back.train_file(back.prepare(third), name=third.name)
    assert back.state.files_completed[-1].start_step == gold_step


def test_from_gold_without_gold_is_refused(open_trainer):
    open_trainer().close()
    with pytest.raises(CheckpointError, match="no usable gold checkpoint"):
        open_trainer(from_gold=True)


def test_a_bad_named_eval_set_is_refused_with_its_name(tmp_path, open_trainer):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"nope": 1}\n')
    with pytest.raises(EvalSetError, match=r"eval set 'general'.*line 2"):
        open_trainer(evaluation=EvalConfig(sets=(("general", bad),)))


def test_tensorboard_scalars_continue_across_restarts(tmp_path, open_trainer, run_paths):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    evaluation = EvalConfig(
        interval=2, sequences=4, batch_size=4, holdout_fraction=0.25, tensorboard=True
    )
    trainer = open_trainer(evaluation=evaluation)
    first = write_jsonl(tmp_path / "a.jsonl", qa_rows(40))
    trainer.train_file(trainer.prepare(first), name=first.name)
    middle = trainer.state.global_step
    trainer.close()
    trainer = open_trainer(evaluation=evaluation)
    second = write_jsonl(tmp_path / "b.jsonl", qa_rows(40, offset=300))
    trainer.train_file(trainer.prepare(second), name=second.name)
    end = trainer.state.global_step
    trainer.close()

    steps: dict[str, list[int]] = {}
    for run in sorted((run_paths.state / "tensorboard").iterdir()):
        scalars = EventAccumulator(str(run))
        scalars.Reload()
        for tag in scalars.Tags()["scalars"]:
            steps.setdefault(tag, []).extend(e.step for e in scalars.Scalars(tag))
    assert {"train/loss", "lr", "tokens_per_sec", "val/recent"} <= set(steps)
    assert sorted(steps["train/loss"]) == list(range(1, end + 1))
    assert middle < end and max(steps["val/recent"]) == end - end % 2


def test_the_start_line_says_what_was_held_out(tmp_path, open_trainer, caplog):
    trainer = open_trainer(evaluation=EvalConfig(interval=1000, holdout_fraction=0.05))
    small = write_jsonl(tmp_path / "small.jsonl", qa_rows(3))
    large = write_jsonl(tmp_path / "large.jsonl", qa_rows(200, offset=100))
    with caplog.at_level(logging.INFO, logger="trainer.budget"):
        for path in (small, large):
            trainer.train_file(trainer.prepare(path), name=path.name)
    small_line, large_line = (
        r.getMessage() for r in caplog.records if "sequences," in r.getMessage()
    )
    assert "small.jsonl: " in small_line
    assert (
        "held out: none of its 3 examples (too small for eval.holdout_fraction 0.05" in small_line
    )
    held = trainer.state.files_completed[-1].n_holdout
    assert held > 0 and "large.jsonl: " in large_line
    assert " of its 200 examples, for the recent set" in large_line
