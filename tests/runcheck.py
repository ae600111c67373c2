"""Comparing two runs of ``traind train`` on the same drops: the newest checkpoints' weights
and Adam moments bit for bit, and the files the event log says were completed."""

import itertools
import json
from pathlib import Path

import torch

from trainer.checkpoint import latest_checkpoint


def same_weights_and_moments(a: Path, b: Path) -> None:
    """The newest checkpoints under ``a`` and ``b`` (run roots) are at the same step with
    ``torch.equal`` tensors (the same names) and Adam moments."""
    one, two = latest_checkpoint(a / "checkpoints"), latest_checkpoint(b / "checkpoints")
    assert one.step == two.step
    wa, wb = one.weights(), two.weights()
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    ma, mb = one.optimizer_state(), two.optimizer_state()
    assert ma["state"].keys() == mb["state"].keys()
    for index, moments in ma["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(moments[key], mb["state"][index][key]), (index, key)


def completions(root: Path) -> list[dict]:
    """The ``file_complete`` events of the run under ``root``, in order."""
    lines = (root / "state" / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == "file_complete"]


def same_files_and_steps(root: Path, reference: Path, files: list[Path]) -> list[dict]:
    """The run under ``root`` completed ``files`` in order, each starting where the one
    before ended, on the same step ranges as the run under ``reference``; its completions."""
    done = completions(root)
    assert [d["file"] for d in done] == [f.name for f in files]
    for before, after in itertools.pairwise(done):
        assert after["start_step"] == before["end_step"]
    steps = [(d["file"], d["start_step"], d["end_step"]) for d in done]
    assert steps == [(d["file"], d["start_step"], d["end_step"]) for d in completions(reference)]
    return done
