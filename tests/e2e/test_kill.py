"""SIGKILL the whole service at random moments, or stop it cleanly with SIGTERM, restart,
repeat: in the end every file is done exactly once, the final step is the sum of the
budgets, and (CPU) the weights equal an uninterrupted ``traind train`` of the same files in
the same order. With a change of ``train.micro_batch_size`` between two rounds the weights
may differ by float error, but every file still trains each of its sequences exactly once:
the file in progress keeps its step size, and later files take the new one."""

import itertools
import math
import os
import random
import signal
import time

import pytest
import torch
from conftest import Reference, Service, beside_the_module, wait_for

from service.ledger import FileState
from tests.corpus import make_drops
from trainer.checkpoint import latest_checkpoint


def kill_rounds(
    tmp_path, *, rounds: int, seed: int, batch_change_at: int | None = None, copies: int = 1
):
    """``rounds`` starts, each ended at a random moment by SIGKILL or (one time in three)
    SIGTERM; from round ``batch_change_at`` on, micro-batches of 2 instead of 4 (and then
    no reference run: the weights differ by float error). ``copies``: each drop holds its
    lines that many times."""
    drops = make_drops(tmp_path / "drops")
    for drop in drops:
        drop.write_text(drop.read_text() * copies)
    started = None
    if batch_change_at is None:
        # Trained while the rounds run (see ``Reference``).
        started = Reference(tmp_path / "reference", drops)
    service = Service(tmp_path / "killed")
    service.inbox.mkdir(parents=True)
    now = time.time()
    for i, drop in enumerate(drops):  # arrival order a, b, c (the rescan sorts by mtime)
        target = service.inbox / drop.name
        target.write_bytes(drop.read_bytes())
        os.utime(target, (now - 100 + i, now - 100 + i))
    rng = random.Random(seed)
    kills = terms = 0
    try:
        for round_ in range(rounds):
            if round_ == batch_change_at:
                service.env["TRAIND_TRAIN__MICRO_BATCH_SIZE"] = "2"
            service.start(wait_ready=False)
            if batch_change_at is not None and round_ == batch_change_at - 1:
                # The change must find a file in progress, whatever the timing: killed as
                # soon as training is under way.
                wait_for(
                    lambda: ((service.status() or {}).get("global_step") or 0) > 0,
                    timeout=60,
                    what="training under way before the batch change",
                )
                service.kill()
                kills += 1
                continue
            # From start-up (watcher recording, migrations) to well into training.
            time.sleep(rng.uniform(0.3, 6.0))
            if service.proc.poll() is not None:
                continue
            if rng.random() < 1 / 3:
                # Killed by the signal itself if it lands before serve's handler is in
                # place (nothing has started then); a clean exit 0 from then on.
                code = service.terminate()
                assert code in (0, -signal.SIGTERM), (code, service.log_tail())
                terms += 1
            else:
                service.kill()
                kills += 1
        service.start()
        done = service.wait_done(3, timeout=180)
        assert service.terminate() == 0
    finally:
        service.cleanup()
    reference = started.result() if started is not None else None
    return service, reference, done, kills, terms


def check(service, reference, done, drops_names=("a.jsonl", "b.jsonl", "c.jsonl"), *, weights=True):
    records = service.files()
    assert sorted(f.name for f in records) == sorted(drops_names)
    assert all(f.state is FileState.DONE for f in records), [(f.name, f.state) for f in records]
    completes = service.events("file_complete")
    assert sorted(e["file"] for e in completes) == sorted(drops_names), "each file_complete once"
    final = latest_checkpoint(service.root / "checkpoints")
    ranges = sorted((f.start_step, f.end_step) for f in records)
    assert ranges[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert final.step == ranges[-1][1] == sum(end - start for start, end in ranges)
    for start in service.events("file_start"):
        # Each budget is the file's sequences over the step size it started with.
        per_step = start["sequences_per_step"]
        assert start["steps"] == math.ceil(1.5 * start["n_sequences"] / per_step), start
    assert not service.events("file_failed") and all(f.attempts == 0 for f in records)
    if not weights:
        return
    assert final.step == reference.step
    ref_weights = reference.weights()
    for key, value in final.weights().items():
        assert torch.equal(value, ref_weights[key]), f"{key} differs from the uninterrupted run"


def test_sigkill_and_sigterm_the_service_over_8_rounds(tmp_path):
    # 8 rounds keep CI inside its 15 minutes; the slow soak below runs 80.
    service, reference, done, kills, terms = kill_rounds(tmp_path, rounds=8, seed=7)
    assert kills >= 4 and terms >= 3
    check(service, reference, done)


BATCH_CHANGE_TEST = "test_kill_rounds_with_a_batch_change_still_train_every_sequence_once"

# The batch-change rounds run beside the 8 rounds (both are random moments: nothing they
# check depends on when a kill lands), so the two take about the time of the longer one.
batch_change_rounds = beside_the_module(
    BATCH_CHANGE_TEST,
    lambda root, _services: kill_rounds(root, rounds=7, seed=5, batch_change_at=1, copies=6),
)


def test_kill_rounds_with_a_batch_change_still_train_every_sequence_once(batch_change_rounds):
    service, reference, done, kills, terms = batch_change_rounds.result()
    assert kills + terms >= 4
    check(service, reference, done, weights=False)
    sizes = {e["file"]: e["sequences_per_step"] for e in service.events("file_start")}
    assert set(sizes.values()) <= {8, 4} and 4 in sizes.values()


@pytest.mark.slow
def test_sigkill_and_sigterm_the_service_soak(tmp_path):
    service, reference, done, _kills, _terms = kill_rounds(tmp_path, rounds=80, seed=11)
    check(service, reference, done)
