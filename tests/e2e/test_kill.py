"""SIGKILL the whole service at random moments, restart, repeat: in the end every file is
done exactly once, the final step is the sum of the budgets, and (CPU) the weights equal
an uninterrupted ``traind train`` of the same files in the same order."""

import itertools
import os
import random
import subprocess
import sys
import time

import pytest
import torch
from conftest import Service, service_env

from service.ledger import FileState
from tests.corpus import make_drops
from trainer.checkpoint import latest_checkpoint


def reference_run(root, drops):
    root.mkdir(parents=True, exist_ok=True)
    env = service_env(root, port=1)  # same training settings; no server is started
    result = subprocess.run(
        [sys.executable, "-m", "api.cli", "train", *map(str, drops)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return latest_checkpoint(root / "checkpoints")


def kill_rounds(tmp_path, *, rounds: int, seed: int):
    drops = make_drops(tmp_path / "drops")
    reference = reference_run(tmp_path / "reference", drops)
    service = Service(tmp_path / "killed")
    service.inbox.mkdir(parents=True)
    now = time.time()
    for i, drop in enumerate(drops):  # arrival order a, b, c (the rescan sorts by mtime)
        target = service.inbox / drop.name
        target.write_bytes(drop.read_bytes())
        os.utime(target, (now - 100 + i, now - 100 + i))
    rng = random.Random(seed)
    kills = 0
    try:
        for _ in range(rounds):
            service.start(wait_ready=False)
            # From start-up (watcher recording, migrations) to well into training.
            time.sleep(rng.uniform(0.3, 6.0))
            if service.proc.poll() is None:
                service.kill()
                kills += 1
        service.start()
        done = service.wait_done(3, timeout=180)
        assert service.terminate() == 0
    finally:
        service.cleanup()
    return service, reference, done, kills


def check(service, reference, done, drops_names=("a.jsonl", "b.jsonl", "c.jsonl")):
    records = service.files()
    assert sorted(f.name for f in records) == sorted(drops_names)
    assert all(f.state is FileState.DONE for f in records), [(f.name, f.state) for f in records]
    completes = service.events("file_complete")
    assert sorted(e["file"] for e in completes) == sorted(drops_names), "each file_complete once"
    final = latest_checkpoint(service.root / "checkpoints")
    ranges = sorted((f.start_step, f.end_step) for f in records)
    assert ranges[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert final.step == ranges[-1][1] == sum(end - start for start, end in ranges)
    assert final.step == reference.step
    ref_weights = reference.weights()
    for key, value in final.weights().items():
        assert torch.equal(value, ref_weights[key]), f"{key} differs from the uninterrupted run"


def test_sigkill_the_service_over_20_rounds(tmp_path):
    service, reference, done, kills = kill_rounds(tmp_path, rounds=20, seed=7)
    assert kills >= 15
    check(service, reference, done)


@pytest.mark.slow
def test_sigkill_the_service_soak(tmp_path):
    service, reference, done, _kills = kill_rounds(tmp_path, rounds=80, seed=11)
    check(service, reference, done)
