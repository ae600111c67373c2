"""The fast path: deferred readback (``train.readback``), fixed shapes and ``train.compile``.

Each is checked against the plain path on CPU: the deferred readback commits the same
bits and events as reading back every step, skips and rewinds included; a compiled
model follows the eager loss curve over 50 steps.
"""

import dataclasses
import json
import time

import numpy as np
import pytest
import torch
from conftest import qa_rows, text_rows, write_jsonl
from test_loop import NaNAt

from trainer import readback as readback_module
from trainer.checkpoint import latest_checkpoint
from trainer.config import RunPaths
from trainer.distributed import SOLO, Group
from trainer.loop import FileOutcome
from trainer.progress import ProgressMeter
from trainer.readback import StepRecord
from trainer.records.state import FileProgress
from trainer.rows import StepRows
from trainer.step import UpdateResult, fixed_shape, read_back, resolve_readback

# What differs between two runs by nature: clocks, the lineage's random id, the setting.
VARYING = {
    "timestamp",
    "completed_at",
    "duration_s",
    "eval_duration_s",
    "elapsed_s",
    "blocking_s",
    "tokens_per_s",
    "steps_per_s",
    "lineage_id",
    "train_config",
}


def steady_events(paths: RunPaths) -> list[dict]:
    """The event log without wall-clock fields (they differ from run to run), and with
    the run's own folder taken out of paths."""
    root = str(paths.checkpoints.parent)
    text = paths.events.read_text().replace(root, "RUN")
    return [steady(json.loads(line)) for line in text.splitlines()]


def steady(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in VARYING}


def train_two_files(tmp_path, open_trainer, *, name, poison, **train):
    """Two files, NaN logits on the forward calls in ``poison``; returns the finished
    trainer, its paths and how many steps each readback settled."""
    paths = RunPaths(checkpoints=tmp_path / name / "ckpt", state=tmp_path / name / "state")
    trainer = open_trainer(paths=paths, **train)
    settled = []
    settle = trainer.readback.settle

    def counting():
        settled.append(len(trainer.readback.pending))
        settle()

    trainer.readback.settle = trainer.checkpointer.before_save = counting
    trainer.model.register_forward_hook(NaNAt(poison))
    for file, rows in (("a.jsonl", text_rows(160)), ("b.jsonl", qa_rows(90))):
        path = write_jsonl(tmp_path / file, rows)
        trainer.train_file(trainer.prepare(path), name=file)
    trainer.finish()
    return trainer, paths, settled


@pytest.mark.parametrize(
    "poison",
    [pytest.param({7}, id="one-skip"), pytest.param({16, 18, 20}, id="rewind")],
)
def test_reading_back_at_log_intervals_commits_what_every_step_readback_does(
    tmp_path, open_trainer, poison
):
    """The same skips, rewinds, losses and events, and bit-identical weights and moments,
    whether the host reads each step's numbers at once or only at the boundaries."""
    # Synchronous saves: a background save's event comes whenever its write ends.
    # The rewind's third skip is step 9, so both runs rewind at step 10: the deferred
    # run then reads back (a log interval), the plain one has just read the skip.
    train = dict(log_interval=5, nan_skip_limit=3, nan_window=10, checkpoint_interval=10)
    train.update(async_checkpoints=False)
    eager, eager_paths, _ = train_two_files(
        tmp_path, open_trainer, name="step", poison=poison, readback="step", **train
    )
    deferred, deferred_paths, settled = train_two_files(
        tmp_path, open_trainer, name="log", poison=poison, readback="log", **train
    )
    assert deferred.steps.deferred and not eager.steps.deferred
    assert max(settled) == 5  # a log interval's steps read back with one sync
    assert deferred.state.nan_skips_total == eager.state.nan_skips_total == len(poison)
    assert deferred.state.rollbacks == eager.state.rollbacks == (len(poison) == 3)
    assert steady_events(deferred_paths) == steady_events(eager_paths)
    for done, done_too in zip(
        deferred.state.files_completed, eager.state.files_completed, strict=True
    ):
        assert steady(dataclasses.asdict(done)) == steady(dataclasses.asdict(done_too))
    left = latest_checkpoint(eager_paths.checkpoints)
    right = latest_checkpoint(deferred_paths.checkpoints)
    assert left.step == right.step
    for key, value in left.weights().items():
        assert torch.equal(value, right.weights()[key]), key
    left_moments, right_moments = left.optimizer_state(), right.optimizer_state()
    for index, moments in left_moments["state"].items():
        for key, value in moments.items():
            assert torch.equal(value, right_moments["state"][index][key]), (index, key)


def test_a_deferred_skip_leaves_weights_moments_and_step_count_alone(tmp_path, open_trainer):
    """The device-side check: the fused AdamW's found_inf stops a non-finite step whole."""
    trainer = open_trainer(readback="log")
    trainer.train_file(
        trainer.prepare(write_jsonl(tmp_path / "a.jsonl", text_rows(40))), name="a.jsonl"
    )
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    moments = {i: {k: t.clone() for k, t in s.items()} for i, s in trainer.optimizer.state.items()}
    loss_sum = torch.tensor(float("nan"))
    for p in trainer.steps.params:
        p.grad = torch.ones_like(p)
    result = trainer.steps.update(loss_sum, n_targets=10, lr=1e-2)
    assert result.applied is None
    [(loss, norm, applied)] = read_back([result])
    assert not applied and loss != loss and norm > 0
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    for index, state in trainer.optimizer.state.items():
        for key, value in state.items():
            assert torch.equal(value, moments[index][key]), (index, key)
    assert not hasattr(trainer.optimizer, "found_inf")


def test_read_back_takes_every_result_in_order():
    results = [
        UpdateResult(values=torch.tensor([2.5, 1.0]), applied=True),
        UpdateResult(values=torch.tensor([float("inf"), 1.0]), applied=None),
        UpdateResult(values=torch.tensor([3.0, 0.5]), applied=None),
    ]
    assert read_back(results) == [(2.5, 1.0, True), (float("inf"), 1.0, False), (3.0, 0.5, True)]
    assert read_back([]) == []


def test_readback_is_deferred_only_in_one_process_with_the_fused_adamw():
    weights = [torch.nn.Parameter(torch.zeros(2))]
    fused = torch.optim.AdamW(weights, fused=True)
    plain = torch.optim.AdamW(weights, foreach=True)
    cpu, pair = torch.device("cpu"), Group(rank=0, world_size=2)

    def resolved(readback, optimizer=fused, group=SOLO):
        return resolve_readback(readback, device=cpu, optimizer=optimizer, group=group)

    assert resolved("auto") == "step"  # no accelerator to wait for
    assert resolved("log") == "log"
    assert resolved("step") == "step"
    assert resolved("log", optimizer=plain) == "step"  # only fused skips by a device flag
    assert resolved("log", group=pair) == "step"  # rank 0 decides at every step


def test_fixed_shape_pads_rows_and_columns_with_no_targets():
    x = np.arange(6).reshape(2, 3)
    y = np.arange(6).reshape(2, 3) + 10
    px, py = fixed_shape(x, y, rows=4, length=5, pad_id=99)
    assert px.shape == py.shape == (4, 5)
    assert (px[:2, :3] == x).all() and (py[:2, :3] == y).all()
    assert (px[2:] == 99).all() and (px[:, 3:] == 99).all()
    assert (py[2:] == -1).all() and (py[:, 3:] == -1).all()
    same_x, same_y = fixed_shape(x, y, rows=2, length=3, pad_id=99)
    assert same_x is x and same_y is y


def losses_per_step(paths: RunPaths) -> dict[int, float]:
    rows = [json.loads(line) for line in paths.events.read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["event"] == "progress"}


# Inductor's own imports touch torch.jit.script_method (torch 2.13), which warns.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_a_compiled_model_follows_the_plain_loss_curve_over_50_steps(tmp_path, open_trainer):
    """``train.compile`` against eager on CPU: one fixed shape for every micro-batch (the
    file's last rows are fewer and shorter), and the same losses within rounding."""
    rows = qa_rows(420)  # 54 steps of 4 x 2 packed sequences with the test preset
    curves, shapes = {}, {}
    for compiled in (False, True):
        name = "compiled" if compiled else "eager"
        paths = RunPaths(checkpoints=tmp_path / name / "ckpt", state=tmp_path / name / "state")
        trainer = open_trainer(paths=paths, compile=compiled, log_interval=1, learning_rate=1e-3)
        seen = shapes[name] = set()
        to_device = trainer.steps.to_device

        def spy(array, *, seen=seen, to_device=to_device):
            seen.add(array.shape)
            return to_device(array)

        trainer.steps.to_device = spy
        path = write_jsonl(tmp_path / "a.jsonl", rows)
        trainer.train_file(trainer.prepare(path), name="a.jsonl")
        trainer.finish()
        curves[name] = losses_per_step(paths)
    assert shapes["compiled"] == {(4, 64)}  # micro-batch rows x the preset's block size
    assert len(shapes["eager"]) > 1
    eager, compiled = curves["eager"], curves["compiled"]
    assert sorted(eager) == sorted(compiled) and len(eager) >= 50
    for step, loss in eager.items():
        assert compiled[step] == pytest.approx(loss, rel=2e-3, abs=2e-3), step
    assert compiled[max(compiled)] < compiled[1] - 0.5  # it learned


def test_a_stop_that_reads_back_a_rewind_commits_its_boundary_once(tmp_path, open_trainer):
    """Deferred skips read back by a stop's save: the rewind they call for commits the
    step (reason ``rollback``), and the stop does not write it a second time."""
    trainer = open_trainer(
        readback="log", log_interval=50, checkpoint_interval=50, nan_skip_limit=3, nan_window=10
    )
    trainer.model.register_forward_hook(NaNAt({8, 10, 12}))  # steps 3, 4 and 5 (from 0)
    path = write_jsonl(tmp_path / "a.jsonl", text_rows(160))
    outcome = trainer.train_file(
        trainer.prepare(path), name="a.jsonl", should_stop=lambda: trainer.state.global_step == 8
    )
    assert outcome is FileOutcome.STOPPED
    rows = [json.loads(line) for line in trainer.paths.events.read_text().splitlines()]
    [rollback] = [r for r in rows if r["event"] == "rollback"]
    assert rollback["step"] == 8 and rollback["skipped_steps"] == [3, 4, 5]
    saved = [r for r in rows if r["event"] == "checkpoint_saved" and r["step"] == 8]
    assert [r["reason"] for r in saved] == ["rollback"]
    assert [r["step"] for r in rows if r["event"] == "nan_skipped"] == [3, 4, 5]


def test_deferred_steps_share_the_time_the_readback_waited(tmp_path, open_trainer, monkeypatch):
    """On a GPU the host only queues deferred steps and waits at the readback: each step
    is charged an equal share of the whole, so the pace and ETA stay true."""
    trainer = open_trainer(readback="log")
    trainer.train_file(
        trainer.prepare(write_jsonl(tmp_path / "a.jsonl", text_rows(40))), name="a.jsonl"
    )
    real = readback_module.read_back

    def slow(results):
        time.sleep(0.3)  # the device finishing the queued steps
        return real(results)

    monkeypatch.setattr(readback_module, "read_back", slow)
    meter = ProgressMeter(file_name="b", start_step=100, target_step=200, session_start_step=100)
    progress = FileProgress(
        name="b",
        sha256="0" * 64,
        n_sequences=400,
        steps_for_file=100,
        start_step=100,
        target_step=200,
    )
    rows = StepRows.of(trainer.prepare(tmp_path / "a.jsonl"), np.arange(4))
    for step in (101, 102, 103):
        trainer.readback.add(
            StepRecord(
                step=step,
                result=None,
                rows=rows,
                current=progress,
                meter=meter,
                tokens=1000,
                seconds=0.001,  # queued, not run
                lr=1e-3,
            )
        )
    trainer.readback.settle()
    report = trainer.readback.last_report
    assert report.step == 103
    assert 0.1 <= report.seconds < 0.2  # (3 x 0.001 + 0.3) / 3
    assert meter.take().tokens_per_s == pytest.approx(3000 / (3 * report.seconds), rel=1e-6)
