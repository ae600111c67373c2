"""Interval checkpoints written in the background (``train.async_checkpoints``): the same
bits as a synchronous save, one write at a time, a file's end committed before
``file_complete``, and a kill mid-write leaves the previous checkpoint (ARCHITECTURE.md
rules 8 and 9)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import TEST_TRAIN, text_rows, write_jsonl

from tests.runcheck import same_weights_and_moments
from trainer.checkpoint import latest_checkpoint, read_checkpoint
from trainer.checkpointer import Checkpointer
from trainer.config import RunPaths, TrainConfig
from trainer.records.checkpoints import MANIFEST, STATE, step_folder
from trainer.records.staging import STAGING_PREFIX
from trainer.records.storage import DiskFullError


def events(paths: RunPaths, kind: str) -> list[dict]:
    rows = map(json.loads, paths.events.read_text().splitlines())
    return [r for r in rows if r["event"] == kind]


def gated(checkpointer: Checkpointer) -> threading.Event:
    """Hold ``checkpointer``'s writes until the returned event is set."""
    gate, write = threading.Event(), checkpointer._write

    def held(name, content):
        assert gate.wait(30), "the gate was never opened"
        return write(name, content)

    checkpointer._write = held
    return gate


def test_a_background_checkpoint_holds_the_same_bits_as_a_synchronous_one(
    tmp_path, open_trainer, run_paths
):
    trainer = open_trainer()
    trainer.train_file(trainer.prepare(write_jsonl(tmp_path / "a.jsonl", text_rows(16))), name="a")
    lineage, step = trainer.lineage, trainer.state.global_step
    roots = {"sync": tmp_path / "sync", "async": tmp_path / "async"}
    in_background = {"sync": False, "async": True}
    writers = {
        kind: Checkpointer(
            lineage,
            root=roots[kind],
            train=TrainConfig(**{**TEST_TRAIN, "async_checkpoints": in_background[kind]}),
            events=trainer.events,
        )
        for kind in roots
    }
    writers["sync"].save(reason="interval")
    gate = gated(writers["async"])
    writers["async"].save(reason="interval")
    assert writers["async"].pending is not None and writers["async"].unsaved_steps > 0
    assert not (roots["async"] / step_folder(step)).exists()
    # Training goes on while it is written: nothing of that may reach the checkpoint.
    with torch.no_grad():
        for p in lineage.model.parameters():
            p.add_(1.0)
    for moments in lineage.optimizer.state.values():
        moments["exp_avg"].add_(1.0)
    gate.set()
    writers["async"].drain()
    assert writers["async"].unsaved_steps == 0 and writers["async"].pending is None
    sync, background = (read_checkpoint(roots[k] / step_folder(step)) for k in ("sync", "async"))
    files = {
        k: json.loads((roots[k] / step_folder(step) / MANIFEST).read_text())["files"] for k in roots
    }
    assert files["sync"].keys() == files["async"].keys()
    for name in files["sync"]:
        if name != STATE:  # it records the setting itself
            assert files["sync"][name] == files["async"][name], name
    sync_state, background_state = sync.training_state, background.training_state
    assert sync_state.pop("train_config")["async_checkpoints"] is False
    assert background_state.pop("train_config")["async_checkpoints"] is True
    assert sync_state == background_state  # RNG, data position, step: the same
    saved = events(run_paths, "checkpoint_saved")[-2:]
    assert [(e["async"], e["path"]) for e in saved] == [
        (False, str(roots["sync"] / step_folder(step))),
        (True, str(roots["async"] / step_folder(step))),
    ]
    assert all(e["blocking_s"] >= 0 and e["duration_s"] >= 0 for e in saved)


def test_one_write_at_a_time_and_a_files_end_is_committed_before_file_complete(
    tmp_path, open_trainer, run_paths
):
    trainer = open_trainer(checkpoint_interval=1, keep_checkpoints=2)
    writing, most = [], []
    write = trainer.checkpointer._write

    def slow(name, content):
        writing.append(name)
        most.append(len(writing))
        time.sleep(0.02)  # longer than a step of the test model: saves queue up
        try:
            return write(name, content)
        finally:
            writing.remove(name)

    trainer.checkpointer._write = slow
    announced = trainer.session.file_complete

    def file_complete(done):
        # What file_complete promises is on disk, committed, at that moment.
        assert latest_checkpoint(run_paths.checkpoints).step == done.end_step
        assert trainer.checkpointer.pending is None
        return announced(done)

    trainer.session.file_complete = file_complete
    data = trainer.prepare(write_jsonl(tmp_path / "a.jsonl", text_rows(40)))
    trainer.train_file(data, name="a.jsonl")
    end = trainer.state.global_step
    assert end >= 4
    assert max(most) == 1
    saved = events(run_paths, "checkpoint_saved")
    # Every step has its checkpoint, collected in order, the interval ones in the background.
    assert [e["step"] for e in saved] == list(range(end + 1))
    assert {e["reason"] for e in saved} == {"lineage_start", "interval", "file_end"}
    assert all(e["async"] == (e["reason"] == "interval") for e in saved)
    assert all("blocking_s" in e and "duration_s" in e for e in saved)
    kinds = [r["event"] for r in map(json.loads, run_paths.events.read_text().splitlines())]
    assert kinds.index("file_complete") > max(
        i for i, k in enumerate(kinds) if k == "checkpoint_saved"
    )
    assert trainer.unsaved_steps == 0


CHILD = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    import trainer.checkpoint
    from trainer.config import LineageSpec, RunPaths, TrainConfig
    from trainer.loop import Trainer
    fault, renames = trainer.checkpoint.fault_point, []

    def in_the_background(point):
        if point == "checkpoint:before_rename":
            # The kill this test is about (the third write) happens on the writer's thread.
            renames.append(threading.current_thread().name)
            assert len(renames) < 3 or renames[-1] == "checkpoint-writer", renames
        fault(point)

    trainer.checkpoint.fault_point = in_the_background
    root, drop = Path(sys.argv[1]), Path(sys.argv[2])
    run = Trainer.open(
        spec=LineageSpec(preset="test"),
        train=TrainConfig(**{train}),
        paths=RunPaths(checkpoints=root / "checkpoints", state=root / "state"),
    )
    run.train_file(run.prepare(drop), name=drop.name)
    """
)


def test_a_kill_during_a_background_write_leaves_the_previous_checkpoint(tmp_path, open_trainer):
    drop = write_jsonl(tmp_path / "a.jsonl", text_rows(80))
    settings = {**TEST_TRAIN, "checkpoint_interval": 2}
    killed = tmp_path / "killed"
    # Writes: step 0 (lineage start), then steps 2 and 4 in the background; the third dies.
    result = subprocess.run(
        [sys.executable, "-c", CHILD.format(train=repr(settings)), str(killed), str(drop)],
        env={**os.environ, "TRAIND_FAULT": "checkpoint:before_rename@3"},
        cwd=Path(__file__).parents[2],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    checkpoints = killed / "checkpoints"
    staged = [p.name for p in checkpoints.iterdir() if p.name.startswith(STAGING_PREFIX)]
    assert len(staged) == 1 and staged[0].startswith(f"{STAGING_PREFIX}{step_folder(4)}-")
    previous = latest_checkpoint(checkpoints)
    assert previous.step == 2
    assert previous.weights() and previous.optimizer_state()["state"]
    # Resumed from it, the run ends where an uninterrupted one (saving synchronously) does,
    # bit for bit.
    resumed = open_trainer(
        paths=RunPaths(checkpoints=checkpoints, state=killed / "state"), checkpoint_interval=2
    )
    assert resumed.state.global_step == 2
    assert not [p for p in checkpoints.iterdir() if p.name.startswith(STAGING_PREFIX)]
    resumed.train_file(resumed.prepare(drop), name=drop.name)
    whole = tmp_path / "whole"
    reference = open_trainer(
        paths=RunPaths(checkpoints=whole / "checkpoints", state=whole / "state"),
        checkpoint_interval=2,
        async_checkpoints=False,
    )
    reference.train_file(reference.prepare(drop), name=drop.name)
    same_weights_and_moments(killed, whole)


def test_a_background_save_that_finds_the_disk_full_is_covered_by_a_synchronous_one(
    open_trainer, run_paths
):
    trainer = open_trainer()
    checkpointer, waits = trainer.checkpointer, []
    write = checkpointer._write

    def full(name, content):
        if threading.current_thread().name == "checkpoint-writer":
            raise DiskFullError("out of disk space (simulated)", path=run_paths.checkpoints)
        return write(name, content)

    checkpointer._write = full
    # Without on_disk_full (traind train) the error comes out on the training thread, at the
    # next boundary, as a synchronous save would have raised it.
    checkpointer.save(reason="interval")
    with pytest.raises(DiskFullError):
        checkpointer.poll(wait=True)
    assert checkpointer.pending is None
    # With it (the worker's wait for space), this boundary is then written synchronously.
    checkpointer.on_disk_full = waits.append
    checkpointer.save(reason="interval")
    checkpointer.poll(wait=True)
    assert [str(w) for w in waits] == ["out of disk space (simulated)"]
    assert checkpointer.unsaved_steps == 0 and checkpointer.pending is None
    last = events(run_paths, "checkpoint_saved")[-1]
    assert (last["reason"], last["async"]) == ("interval", False)
    assert latest_checkpoint(run_paths.checkpoints).step == trainer.state.global_step
