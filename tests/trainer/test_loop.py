"""The training loop: cumulative step targets, token-weighted accumulation, NaN and OOM."""

import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import qa_rows, text_rows, write_jsonl

from trainer.budget import steps_for_file
from trainer.checkpoint import latest_checkpoint, read_checkpoint
from trainer.config import LineageSpec
from trainer.lineage import LineageError
from trainer.loop import FileOutcome
from trainer.optim import lr_at
from trainer.records.checkpoints import step_folders
from trainer.rows import StepRows


def events(run_paths, kind=None):
    rows = [json.loads(line) for line in run_paths.events.read_text().splitlines()]
    return [r for r in rows if kind is None or r["event"] == kind]


def test_steps_for_file_formula():
    assert steps_for_file(100, epochs=1.0, micro=4, accum=2, world=1) == 13
    assert steps_for_file(100, epochs=2.5, micro=4, accum=2, world=2) == 16
    assert steps_for_file(1, epochs=1.0, micro=64, accum=8, world=8) == 1


def test_two_files_then_a_third_continue_one_lineage(tmp_path, open_trainer, run_paths):
    """The scenario where an epoch counter would train zero steps on later files."""
    a = write_jsonl(tmp_path / "a.jsonl", text_rows(120))
    b = write_jsonl(tmp_path / "b.jsonl", qa_rows(70))
    c = write_jsonl(tmp_path / "c.jsonl", text_rows(90, offset=500))

    trainer = open_trainer(epochs_per_file=2.0)
    budgets = []
    for path in (a, b):
        data = trainer.prepare(path)
        expected = math.ceil(2.0 * data.n_sequences / (4 * 2 * 1))
        start = trainer.state.global_step
        assert trainer.train_file(data, name=path.name) is FileOutcome.COMPLETED
        assert trainer.state.global_step == start + expected
        budgets.append(expected)
    lr_before = trainer.optimizer.param_groups[0]["lr"]
    exp_avg_before = next(iter(trainer.optimizer.state.values()))["exp_avg"].clone()
    trainer.finish()
    del trainer

    # A later run (a new process in real life) continues step, optimizer and LR.
    trainer = open_trainer(epochs_per_file=2.0)
    assert trainer.state.global_step == sum(budgets)
    assert torch.equal(next(iter(trainer.optimizer.state.values()))["exp_avg"], exp_avg_before)
    data = trainer.prepare(c)
    third = math.ceil(2.0 * data.n_sequences / 8)
    assert third > 0
    trainer.train_file(data, name="c.jsonl")
    assert trainer.state.global_step == sum(budgets) + third
    assert trainer.optimizer.param_groups[0]["lr"] == lr_before  # constant schedule after warm-up

    done = trainer.state.files_completed
    assert [(f.name, f.start_step, f.end_step) for f in done] == [
        ("a.jsonl", 0, budgets[0]),
        ("b.jsonl", budgets[0], sum(budgets)),
        ("c.jsonl", sum(budgets), sum(budgets) + third),
    ]
    starts = events(run_paths, "file_start")
    assert [(e["file"], e["start_step"], e["target_step"]) for e in starts] == [
        (f.name, f.start_step, f.end_step) for f in done
    ]
    completes = events(run_paths, "file_complete")
    assert [(e["file"], e["end_step"]) for e in completes] == [(f.name, f.end_step) for f in done]
    assert all(e["tokens"] > 0 and e["mean_loss"] > 0 for e in completes)


def test_target_is_fixed_when_the_file_starts(tmp_path, open_trainer):
    """Changing batch settings mid-file must not move the file's target (rule 1)."""
    a = write_jsonl(tmp_path / "a.jsonl", text_rows(300))
    trainer = open_trainer(checkpoint_interval=4)
    data = trainer.prepare(a)
    calls = iter(range(1000))
    assert (
        trainer.train_file(data, name="a.jsonl", should_stop=lambda: next(calls) >= 6)
        is FileOutcome.STOPPED
    )
    target = trainer.state.current_file.target_step
    del trainer
    trainer = open_trainer(
        micro_batch_size=2, grad_accum_steps=1
    )  # would give 4x the steps if recomputed
    assert trainer.state.current_file.target_step == target
    trainer.train_file(trainer.prepare(a), name="a.jsonl")
    assert trainer.state.global_step == target


def _one_step_weights(tmp_path, open_trainer, *, micro, accum, name):
    rows = qa_rows(8)
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    from trainer.config import RunPaths

    paths = RunPaths(checkpoints=tmp_path / name / "ck", state=tmp_path / name / "st")
    trainer = open_trainer(
        paths=paths,
        micro_batch_size=micro,
        grad_accum_steps=accum,
        epochs_per_file=1.0,
        grad_clip=0.0,
        warmup_steps=0,
    )
    data = trainer.prepare(path)
    assert data.n_sequences == 8
    lengths = data.lengths.tolist()
    assert len(set(lengths)) > 3  # variable-length sequences
    trainer.train_file(data, name="qa.jsonl")
    assert trainer.state.global_step == 1
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_micro2_accum4_equals_micro8_accum1(tmp_path, open_trainer):
    """Rule 4: one step's loss is the mean over all its target tokens, not a mean of means."""
    big = _one_step_weights(tmp_path, open_trainer, micro=8, accum=1, name="big")
    small = _one_step_weights(tmp_path, open_trainer, micro=2, accum=4, name="small")
    for key in big:
        torch.testing.assert_close(small[key], big[key], rtol=0, atol=1e-6, msg=key)
    # And the weights did move: the comparison is not vacuous.
    from trainer.model import GPT
    from trainer.presets import model_config_for

    torch.manual_seed(1337)
    fresh = GPT(model_config_for("test", vocab_size=260)).state_dict()
    assert not torch.equal(fresh["wte.weight"], big["wte.weight"])


def test_mean_of_means_would_differ(tmp_path, open_trainer):
    """Guard that the data above really has unequal target counts per micro-batch."""
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(8))
    trainer = open_trainer()
    data = trainer.prepare(path)
    counts = [data.targets_of(np.array([i])) for i in range(8)]
    assert len(set(counts)) > 2


def cut_off_reply(question: str) -> dict:
    """A conversation whose assistant turn lies past the test preset's block size (64)."""
    user = {"role": "user", "content": question + " " + "." * 100}
    return {"messages": [user, {"role": "assistant", "content": "ok"}]}


ANSWERED = {
    "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
}


def test_no_target_micro_batch_gives_zero_loss_and_no_nan(tmp_path, open_trainer):
    """Rule 5: all-prompt micro-batches contribute nothing, never NaN."""
    # Replies cut off by the block size leave no target token; the last line keeps the
    # file trainable (one with nothing to learn at all is rejected).
    rows = [cut_off_reply(f"hello {i}") for i in range(4)] + [ANSWERED]
    path = write_jsonl(tmp_path / "cut_off.jsonl", rows)
    trainer = open_trainer(micro_batch_size=4, grad_accum_steps=1, warmup_steps=0)
    data = trainer.prepare(path)
    assert data.targets_of(np.arange(4)) == 0
    loss = trainer.steps.accumulate(StepRows.of(data, np.arange(4)), micro=4, n_targets=0)
    assert loss.item() == 0.0
    for p in trainer.model.parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) == 0


def test_mixed_micro_batches_ignore_the_empty_one(tmp_path, open_trainer):
    """A no-target micro-batch inside a step changes nothing about that step's update."""
    user_only = [cut_off_reply(f"hi {i}") for i in range(2)]
    with_answer = [
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    ] * 2
    path = write_jsonl(tmp_path / "mixed.jsonl", user_only + with_answer)
    trainer = open_trainer(micro_batch_size=2, grad_accum_steps=2)
    data = trainer.prepare(path)
    n = data.targets_of(np.arange(4))
    trainer.steps.accumulate(StepRows.of(data, np.array([0, 1, 2, 3])), micro=2, n_targets=n)
    both = [p.grad.clone() for p in trainer.model.parameters()]
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.steps.accumulate(StepRows.of(data, np.array([2, 3])), micro=2, n_targets=n)
    alone = [p.grad.clone() for p in trainer.model.parameters()]
    for a, b in zip(both, alone, strict=True):
        torch.testing.assert_close(a, b)
        assert torch.isfinite(a).all()


class NaNAt:
    """A forward hook that poisons the logits on chosen forward calls."""

    def __init__(self, calls):
        self.calls = set(calls)
        self.count = 0

    def __call__(self, module, inputs, output):
        self.count += 1
        if self.count in self.calls:
            return output * float("nan")
        return output


def test_injected_nan_is_skipped_and_never_reaches_the_weights(tmp_path, open_trainer, run_paths):
    path = write_jsonl(tmp_path / "a.jsonl", text_rows(200))
    trainer = open_trainer(micro_batch_size=4, grad_accum_steps=2, nan_skip_limit=3)
    data = trainer.prepare(path)
    snapshots = {}

    original = trainer.steps.update

    def spy(loss_sum, *, n_targets, lr):
        step = trainer.state.global_step
        snapshots[step] = (
            {k: v.clone() for k, v in trainer.model.state_dict().items()},
            {i: {k: t.clone() for k, t in s.items()} for i, s in trainer.optimizer.state.items()},
        )
        return original(loss_sum, n_targets=n_targets, lr=lr)

    trainer.steps.update = spy
    # Forward call 7 is micro-batch 1 of step 3 (2 micro-batches per step).
    trainer.model.register_forward_hook(NaNAt({7}))
    trainer.train_file(data, name="a.jsonl")
    weights_before, moments_before = snapshots[3]
    weights_after, moments_after = snapshots[4]
    for k in weights_before:
        assert torch.equal(weights_before[k], weights_after[k]), k
    for i in moments_before:
        for k in moments_before[i]:
            assert torch.equal(moments_before[i][k], moments_after[i][k])
    for v in trainer.model.state_dict().values():
        assert torch.isfinite(v).all()
    assert trainer.state.nan_skips_total == 1
    skipped = events(run_paths, "nan_skipped")
    assert len(skipped) == 1 and skipped[0]["step"] == 3 and skipped[0]["file"] == "a.jsonl"
    assert skipped[0]["lines"]  # the offending line numbers
    assert not events(run_paths, "rollback")
    assert trainer.state.global_step == trainer.state.files_completed[0].end_step  # budget kept


def test_progress_events_every_log_interval_steps_and_at_the_file_end(
    tmp_path, open_trainer, run_paths
):
    """What the dashboard plots: one ``progress`` event per log interval, its loss the mean
    of the interval's steps that had one (a skipped step left out), its lr the step's."""
    path = write_jsonl(tmp_path / "a.jsonl", text_rows(120))
    trainer = open_trainer(log_interval=5, warmup_steps=6, nan_skip_limit=3)
    data = trainer.prepare(path)
    trainer.model.register_forward_hook(NaNAt({7}))  # micro-batch 1 of step 3: skipped
    assert trainer.train_file(data, name="a.jsonl") is FileOutcome.COMPLETED
    (done,) = trainer.state.files_completed
    assert done.end_step % 5 != 0  # the file's last step is reported though off the interval
    progress = events(run_paths, "progress")
    assert [e["step"] for e in progress] == [*range(5, done.end_step, 5), done.end_step]
    for event in progress:
        assert (event["file"], event["start_step"], event["target_step"]) == (
            "a.jsonl",
            0,
            done.end_step,
        )
        assert event["lr"] == lr_at(event["step"] - 1, trainer.train)  # warm-up: all differ
        assert event["tokens_per_s"] > 0 and 0 < event["loss"] < 20
    processed = [e["tokens_processed"] for e in progress]
    assert processed == sorted(set(processed))
    assert processed[-1] == trainer.state.tokens_processed
    # Interval means weighted by the steps that had a loss give the file's mean loss.
    counted = [5 - (e["step"] == 5) for e in progress[:-1]]
    counted.append(done.end_step - progress[-2]["step"])
    mean = sum(e["loss"] * n for e, n in zip(progress, counted, strict=True)) / sum(counted)
    assert trainer.state.nan_skips_total == 1
    assert mean == pytest.approx(done.mean_loss, rel=1e-5)


def test_repeated_nan_rolls_back_to_the_last_good_checkpoint(tmp_path, open_trainer, run_paths):
    path = write_jsonl(tmp_path / "a.jsonl", text_rows(300))
    trainer = open_trainer(
        micro_batch_size=4,
        grad_accum_steps=1,
        nan_skip_limit=3,
        nan_window=10,
        checkpoint_interval=5,
    )
    data = trainer.prepare(path)
    # Steps 7, 8 and 9 (forward calls 8-10) are poisoned: three skips inside the window.
    trainer.model.register_forward_hook(NaNAt({8, 9, 10}))
    good = {}

    def remember(step):
        found = read_checkpoint(trainer.paths.checkpoints / f"step-{step:08d}")
        good[step] = found.weights()

    original = trainer.checkpointer.save

    def save(*, reason):
        path_ = original(reason=reason)
        trainer.checkpointer.poll(wait=True)  # an interval save is written in the background
        remember(trainer.state.global_step)
        return path_

    trainer.checkpointer.save = save
    trainer.train_file(data, name="a.jsonl")
    rollbacks = events(run_paths, "rollback")
    assert len(rollbacks) == 1
    assert rollbacks[0]["checkpoint_step"] == 5 and rollbacks[0]["step"] == 10
    assert rollbacks[0]["skipped_steps"] == [7, 8, 9]
    # The rollback was made durable at step 10 with step 5's weights.
    for k, v in good[5].items():
        assert torch.equal(v, good[10][k]), k
    assert trainer.state.rollbacks == 1
    assert trainer.state.global_step == trainer.state.files_completed[0].end_step


def test_oom_halves_micro_batch_and_doubles_accumulation(tmp_path, open_trainer, run_paths):
    path = write_jsonl(tmp_path / "a.jsonl", text_rows(200))
    trainer = open_trainer(micro_batch_size=8, grad_accum_steps=1)

    def too_big(module, inputs):
        if inputs[0].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    trainer.model.register_forward_pre_hook(too_big)
    data = trainer.prepare(path)
    expected = steps_for_file(data.n_sequences, epochs=1.0, micro=8, accum=1, world=1)
    trainer.train_file(data, name="a.jsonl")
    assert (trainer.state.micro_batch_size, trainer.state.grad_accum_steps) == (
        2,
        4,
    )
    assert trainer.state.global_step == expected  # same effective batch, same budget
    recovered = events(run_paths, "oom_recovered")
    assert [(e["micro_batch_size"], e["grad_accum_steps"]) for e in recovered] == [(4, 2), (2, 4)]
    # The reduced split survives a restart instead of OOMing again.
    trainer = open_trainer(micro_batch_size=8, grad_accum_steps=1)
    assert (trainer.state.micro_batch_size, trainer.state.grad_accum_steps) == (
        2,
        4,
    )


def test_rotation_keeps_k_during_training(tmp_path, open_trainer, run_paths):
    path = write_jsonl(tmp_path / "a.jsonl", text_rows(400))
    trainer = open_trainer(checkpoint_interval=2, keep_checkpoints=2)
    trainer.train_file(trainer.prepare(path), name="a.jsonl")
    steps = [s for s, _ in step_folders(run_paths.checkpoints)]
    assert len(steps) == 2 and steps[0] == trainer.state.global_step


def test_architecture_change_keeps_weights_and_resets_optimizer(
    tmp_path, open_trainer, run_paths, caplog
):
    path = write_jsonl(tmp_path / "a.jsonl", text_rows(100))
    trainer = open_trainer()
    trainer.train_file(trainer.prepare(path), name="a.jsonl")
    old = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    step = trainer.state.global_step
    del trainer
    trainer = open_trainer(spec=LineageSpec(preset="test", overrides={"n_layer": 3}))
    assert "OPTIMIZER RESET" in caplog.text
    assert trainer.state.global_step == step  # the lineage goes on
    assert not trainer.optimizer.state  # fresh moments
    new = trainer.model.state_dict()
    assert torch.equal(new["blocks.0.attn.qkv.weight"], old["blocks.0.attn.qkv.weight"])
    assert "blocks.2.attn.qkv.weight" in new and "blocks.2.attn.qkv.weight" not in old
    resets = events(run_paths, "optimizer_reset")
    assert len(resets) == 1 and "n_layer" in resets[0]["reason"]
    assert trainer.state.optimizer_resets


def test_optimizer_state_that_does_not_fit_is_a_specific_error(tmp_path, open_trainer):
    path = write_jsonl(tmp_path / "a.jsonl", text_rows(100))
    trainer = open_trainer()
    trainer.train_file(trainer.prepare(path), name="a.jsonl")
    # Save again with moments of the wrong shape (what a tampered optimizer.pt holds).
    for state in trainer.optimizer.state.values():
        state["exp_avg"] = state["exp_avg"].reshape(-1)[:3].clone()
    saved = trainer.save_checkpoint(reason="test")
    del trainer
    # Never a fresh optimizer in silence (nor a loud one): the lineage does not open, and
    # the message names the checkpoint, the parameter and what to do.
    with pytest.raises(LineageError, match=rf"{saved.name}.*parameter #0 has shape.*move this"):
        open_trainer()


def test_init_from_starts_a_new_lineage_at_step_zero(tmp_path, open_trainer, run_paths):

    from trainer.config import RunPaths
    from trainer.lineage import LineageError

    path = write_jsonl(tmp_path / "a.jsonl", text_rows(100))
    trainer = open_trainer()
    trainer.train_file(trainer.prepare(path), name="a.jsonl")
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    source_step = trainer.state.global_step
    new_paths = RunPaths(checkpoints=tmp_path / "new" / "ck", state=tmp_path / "new" / "st")
    fresh = open_trainer(paths=new_paths, init_from=run_paths.checkpoints)
    assert fresh.state.global_step == 0 and not fresh.state.files_completed
    assert fresh.state.init_from["global_step"] == source_step
    assert not fresh.optimizer.state
    for k, v in fresh.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert latest_checkpoint(new_paths.checkpoints).step == 0
    # The same file is new to the new lineage.
    fresh.train_file(fresh.prepare(path), name="a.jsonl")
    assert fresh.state.global_step == source_step
    with pytest.raises(LineageError, match="already holds a lineage"):
        open_trainer(paths=new_paths, init_from=run_paths.checkpoints)


def test_one_trainer_per_lineage(tmp_path, run_paths):
    """An orphaned worker and its replacement must never train the same lineage."""
    from conftest import TEST_TRAIN

    from trainer.config import TrainConfig
    from trainer.loop import Trainer
    from trainer.opening import LineageLockedError

    def open_():
        return Trainer.open(
            spec=LineageSpec(preset="test"), train=TrainConfig(**TEST_TRAIN), paths=run_paths
        )

    first = open_()
    with pytest.raises(LineageLockedError, match=f"pid {os.getpid()}"):
        open_()
    first.close()
    second = open_()
    second.close()


def test_checkpoint_records_the_data_position(tmp_path, open_trainer, run_paths):
    path = write_jsonl(tmp_path / "a.jsonl", text_rows(60))
    trainer = open_trainer(epochs_per_file=3.0)
    data = trainer.prepare(path)
    calls = iter(range(1000))
    per_epoch = math.ceil(data.n_sequences / 8)
    trainer.train_file(data, name="a.jsonl", should_stop=lambda: next(calls) >= per_epoch + 1)
    saved = latest_checkpoint(run_paths.checkpoints).training_state["current_file"]
    assert saved["name"] == "a.jsonl" and saved["sha256"] == data.sha256
    assert saved["cursor"] == (per_epoch + 1) * 8
    assert saved["epoch"] == saved["cursor"] // data.n_sequences >= 1
    assert saved["target_step"] - saved["start_step"] == saved["steps_for_file"]
    resumed = open_trainer(epochs_per_file=3.0)
    assert resumed.state.current_file.cursor == saved["cursor"]


def test_init_from_lineage_keeps_the_source_architecture_on_resume(tmp_path, open_trainer, caplog):
    """The settings' preset describes new lineages; it must not 'change' an --init-from one."""
    from trainer.config import RunPaths

    path = write_jsonl(tmp_path / "a.jsonl", text_rows(60))
    source = open_trainer(spec=LineageSpec(preset="test", overrides={"n_layer": 3}))
    source.train_file(source.prepare(path), name="a.jsonl")
    new_paths = RunPaths(checkpoints=tmp_path / "new" / "ck", state=tmp_path / "new" / "st")

    def open_new(spec):
        return open_trainer(spec=spec, paths=new_paths)

    first = open_trainer(
        spec=LineageSpec(preset="test"), paths=new_paths, init_from=source.paths.checkpoints
    )
    assert first.lineage.model_config.n_layer == 3
    first.train_file(first.prepare(write_jsonl(tmp_path / "b.jsonl", qa_rows(20))), name="b.jsonl")
    moments = len(first.optimizer.state)
    resumed = open_new(LineageSpec(preset="test"))  # same settings as at the start: no change
    assert resumed.lineage.model_config.n_layer == 3
    assert len(resumed.optimizer.state) == moments and not resumed.state.optimizer_resets
    assert "OPTIMIZER RESET" not in caplog.text
    # Changing the model settings is an intended change, applied once and recorded.
    changed = open_new(LineageSpec(preset="test", overrides={"n_layer": 4}))
    assert changed.lineage.model_config.n_layer == 4 and "OPTIMIZER RESET" in caplog.text
    changed.save_checkpoint(reason="test")
    again = open_new(LineageSpec(preset="test", overrides={"n_layer": 4}))
    assert again.lineage.model_config.n_layer == 4 and len(again.state.optimizer_resets) == 1
