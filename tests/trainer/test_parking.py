"""The data position is in sequences (rule 14): a batch change mid-file trains the rest of
the file exactly once, and a file set aside unfinished continues where it stopped."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import qa_rows, write_jsonl

from trainer.checkpoint import latest_checkpoint
from trainer.config import RunPaths
from trainer.loop import FileOutcome
from trainer.records.state import FORMAT_VERSION, TrainingState, upgrade


def record_sequences(trainer) -> list[int]:
    """Every sequence index the trainer's optimizer steps take from now on."""
    seen: list[int] = []
    accumulate = trainer.steps.accumulate

    def spy(rows, **kwargs):
        seen.extend(int(i) for i in rows.own[1])
        return accumulate(rows, **kwargs)

    trainer.steps.accumulate = spy
    return seen


def stop_after(n: int):
    calls = iter(range(1000))
    return lambda: next(calls) >= n


def events(paths, kind):
    rows = [json.loads(line) for line in paths.events.read_text().splitlines()]
    return [r for r in rows if r["event"] == kind]


@pytest.mark.parametrize("new_micro", [2, 16])
def test_a_batch_change_mid_file_neither_drops_nor_repeats_sequences(
    tmp_path, open_trainer, new_micro
):
    """Stopped at step 2 of 6 with micro 8, resumed with another micro-batch: the file's
    48 sequences are each trained exactly once and the file ends at its recorded target
    (before, micro 2 reached the target having trained only a quarter of the rest)."""
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(48))
    trainer = open_trainer(micro_batch_size=8, grad_accum_steps=1, checkpoint_interval=100)
    data = trainer.prepare(path)
    assert data.n_sequences == 48
    seen = record_sequences(trainer)
    assert trainer.train_file(data, name="qa.jsonl", should_stop=stop_after(2)) is (
        FileOutcome.STOPPED
    )
    target = trainer.state.current_file.target_step
    assert (trainer.state.global_step, target) == (2, 6)
    trainer.close()

    trainer = open_trainer(micro_batch_size=new_micro, grad_accum_steps=1)
    rest = record_sequences(trainer)
    assert trainer.train_file(trainer.prepare(path), name="qa.jsonl") is FileOutcome.COMPLETED
    assert trainer.state.global_step == target
    assert sorted(seen + rest) == list(range(48)), "every sequence once, none twice"
    # The next file takes the new batch settings.
    other = write_jsonl(tmp_path / "next.jsonl", qa_rows(48, offset=100))
    before = trainer.state.global_step
    trainer.train_file(trainer.prepare(other), name="next.jsonl")
    assert trainer.state.global_step - before == -(-48 // new_micro)


def test_after_a_batch_change_the_update_matches_an_unchanged_run(tmp_path, open_trainer):
    """Same sequences per step, split into other micro-batches: the same updates up to
    float error (rule 4), so the trajectory is the one the file started on."""
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(32))

    def run(name, *, switch_to):
        paths = RunPaths(checkpoints=tmp_path / name / "ck", state=tmp_path / name / "st")
        options = dict(paths=paths, grad_clip=0.0, warmup_steps=0, checkpoint_interval=100)
        trainer = open_trainer(micro_batch_size=8, grad_accum_steps=1, **options)
        trainer.train_file(trainer.prepare(path), name="qa.jsonl", should_stop=stop_after(2))
        trainer.close()
        trainer = open_trainer(micro_batch_size=switch_to, grad_accum_steps=1, **options)
        trainer.train_file(trainer.prepare(path), name="qa.jsonl")
        assert trainer.state.global_step == 4
        return {k: v.clone() for k, v in trainer.model.state_dict().items()}

    same = run("same", switch_to=8)
    changed = run("changed", switch_to=2)
    for key in same:
        torch.testing.assert_close(changed[key], same[key], rtol=0, atol=1e-5, msg=key)


def test_a_cancelled_file_trained_again_continues_where_it_stopped(
    tmp_path, open_trainer, run_paths
):
    """Parked at step 2 of 6, another file trains, then the first is trained again: it
    gets exactly its 4 remaining steps on the sequences it had not seen."""
    path = write_jsonl(tmp_path / "a.jsonl", qa_rows(48))
    other = write_jsonl(tmp_path / "b.jsonl", qa_rows(16, offset=300))
    trainer = open_trainer(micro_batch_size=8, grad_accum_steps=1, checkpoint_interval=100)
    seen = record_sequences(trainer)
    data = trainer.prepare(path)
    trainer.train_file(data, name="a.jsonl", should_stop=stop_after(2))
    trainer.park_current(reason="cancelled on request at step 2")
    assert trainer.state.current_file is None and trainer.state.parked[0].parked_at == 2
    first_part = list(seen)
    trainer.close()

    # A new process: the parked progress is in the checkpoint.
    trainer = open_trainer(micro_batch_size=8, grad_accum_steps=1)
    assert [f.name for f in trainer.state.parked] == ["a.jsonl"]
    trainer.train_file(trainer.prepare(other), name="b.jsonl")
    assert trainer.state.global_step == 4
    seen = record_sequences(trainer)
    trainer.train_file(trainer.prepare(path), name="a.jsonl (retried)")
    assert trainer.state.global_step == 4 + 4
    assert sorted(first_part + seen) == list(range(48))
    assert trainer.state.parked == []
    done = trainer.state.files_completed[-1]
    assert (done.name, done.start_step, done.end_step) == ("a.jsonl (retried)", 0, 8)
    (resumed,) = events(run_paths, "file_resumed")
    assert (resumed["step"], resumed["steps_left"], resumed["target_step"]) == (4, 4, 8)
    (parked,) = events(run_paths, "file_parked")
    assert (parked["step"], parked["steps_left"]) == (2, 4)


def test_parked_and_taken_up_at_once_is_bit_identical_to_never_parked(tmp_path, open_trainer):
    path = write_jsonl(tmp_path / "a.jsonl", qa_rows(40))

    def run(name, *, park):
        paths = RunPaths(checkpoints=tmp_path / name / "ck", state=tmp_path / name / "st")
        trainer = open_trainer(paths=paths, micro_batch_size=4, grad_accum_steps=2)
        data = trainer.prepare(path)
        if park:
            trainer.train_file(data, name="a.jsonl", should_stop=stop_after(3))
            trainer.park_current(reason="test")
            trainer.close()
            trainer = open_trainer(paths=paths, micro_batch_size=4, grad_accum_steps=2)
            data = trainer.prepare(path)
        trainer.train_file(data, name="a.jsonl")
        return latest_checkpoint(paths.checkpoints)

    plain, parked = run("plain", park=False), run("parked", park=True)
    assert parked.step == plain.step
    ref = plain.weights()
    for key, value in parked.weights().items():
        assert torch.equal(value, ref[key]), key


def test_a_version_2_state_mid_file_keeps_the_step_size_it_started_with():
    """An older checkpoint has no step size on record: the split in force is the one the
    file started with (a change of settings since is applied at the next open)."""
    v2 = {
        "format_version": 2,
        "global_step": 7,
        "micro_batch_size": 4,
        "grad_accum_steps": 2,
        "configured_batch": [4, 2],
        "current_file": {
            "name": "a.jsonl",
            "sha256": "ab" * 32,
            "n_sequences": 40,
            "steps_for_file": 10,
            "start_step": 0,
            "target_step": 10,
            "cursor": 56,
            "epoch": 1,
        },
        "eval_history": [],
        "gold": None,
        "gold_history": [],
    }
    upgraded = upgrade(v2)
    assert upgraded["format_version"] == FORMAT_VERSION
    state = TrainingState.from_dict(v2)
    assert state.current_file.sequences_per_step == 8
    assert state.parked == [] and state.rollback_served is None
    assert state.files_rolled_back == []
    # And it is written back in the new layout.
    again = TrainingState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again.current_file.sequences_per_step == 8


def test_the_micro_batch_splits_a_step_it_does_not_divide(tmp_path, open_trainer):
    """micro 3 on a file that takes 8 sequences a step: micro-batches of 3, 3 and 2."""
    path = write_jsonl(tmp_path / "qa.jsonl", qa_rows(16))
    trainer = open_trainer(micro_batch_size=8, grad_accum_steps=1)
    data = trainer.prepare(path)
    trainer.train_file(data, name="qa.jsonl", should_stop=stop_after(1))
    trainer.close()
    trainer = open_trainer(micro_batch_size=3, grad_accum_steps=1)
    sizes = []
    batch = trainer.prepare(path).batch

    def spy(indices):
        sizes.append(len(np.asarray(indices)))
        return batch(indices)

    data = trainer.prepare(path)
    object.__setattr__(data, "batch", spy)
    trainer.train_file(data, name="qa.jsonl")
    assert sizes == [3, 3, 2]
    assert Counter(sizes) == Counter({3: 2, 2: 1})
