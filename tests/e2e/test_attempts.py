"""Only a crash is an attempt (rule 13), end to end through a real ``traind serve``: clean
restarts and slow steps never count against a file, a file failed by crashes continues
where the lineage left it once retried, and a hung worker is noticed, reported and
replaced."""

import contextlib
import os
import signal
import time

import torch
from conftest import Reference, traind_cli, wait_for

from service.ledger import FileState
from tests.corpus import make_drops
from trainer.checkpoint import latest_checkpoint


def big_drop(tmp_path, copies=6):
    drops = make_drops(tmp_path / "drops")
    big = tmp_path / "big.jsonl"
    big.write_text(drops[0].read_text() * copies)
    return big


def assert_same_weights(root, reference):
    final = latest_checkpoint(root / "checkpoints")
    assert final.step == reference.step
    ref = reference.weights()
    for key, value in final.weights().items():
        assert torch.equal(value, ref[key]), f"{key} differs from the uninterrupted run"


def test_clean_restarts_mid_file_never_count_as_crashes(tmp_path, service_factory):
    """Three SIGTERM restarts during one file, with max_attempts = 1: before, the third
    re-claim failed the file as "crashed the worker 3 times", half-trained."""
    # About 180 steps: the third stop comes at step 60 and a few, far from the file's end
    # (100 copies, about 460 steps, only made both runs longer).
    big = big_drop(tmp_path, copies=40)
    started = Reference(tmp_path / "reference", [big])  # trained meanwhile
    service = service_factory(TRAIND_WORKER__MAX_ATTEMPTS="1")
    service.start()
    service.drop(big)
    for round_ in range(3):
        least = 20 * (round_ + 1)
        wait_for(
            lambda least=least: (service.status() or {}).get("global_step", 0) >= least,
            timeout=60,
            what=f"step {least}",
        )
        assert service.terminate() == 0
        (record,) = service.files()
        assert record.state is FileState.QUEUED and record.attempts == 0
        service.start()
    (done,) = service.wait_done(1)
    assert done.attempts == 0 and done.error is None
    assert not service.events("file_failed")
    assert service.terminate() == 0
    assert_same_weights(service.root, started.result())


def test_a_step_longer_than_the_lease_keeps_its_claim(tmp_path, service_factory):
    """Leases renewed every 1.5 s but lasting 0.2 s: before, the reaper took the file from
    the live worker between renewals and each re-claim counted as an attempt."""
    big = big_drop(tmp_path, copies=40)
    service = service_factory(
        TRAIND_LEDGER__LEASE_S="0.2",
        TRAIND_WORKER__HEARTBEAT_S="1.5",
        TRAIND_WORKER__MAX_ATTEMPTS="1",
    )
    service.start()
    service.drop(big)
    (done,) = service.wait_done(1, timeout=180)
    assert done.attempts == 0 and not service.events("file_failed")
    log = service.log.read_text()
    assert "back in the queue" not in log and "no longer holds its lease" not in log
    assert service.terminate() == 0


def test_a_file_failed_by_crashes_and_retried_continues_where_the_lineage_left_it(
    tmp_path, service_factory
):
    """Every worker dies at its 6th step until the file fails (max_attempts 2); with the
    cause fixed, ``traind retry`` continues it: no step of it is trained twice, and the
    weights are those of a run that never crashed."""
    big = big_drop(tmp_path)
    started = Reference(tmp_path / "reference", [big])  # trained meanwhile
    crashing = service_factory(
        "svc", TRAIND_FAULT="loop:mid_step@6", TRAIND_WORKER__MAX_ATTEMPTS="2"
    )
    crashing.start()
    crashing.drop(big)
    failed = wait_for(
        lambda: [f for f in crashing.files() if f.state is FileState.FAILED],
        timeout=120,
        what="the file to fail",
        every=0.3,
    )[0]
    assert failed.attempts == 2 and "crashed the worker 2 times" in failed.error
    assert "killed by SIGKILL" in failed.error
    parked = wait_for(
        lambda: crashing.events("file_parked"), timeout=30, what="its progress parked"
    )[0]
    assert parked["steps_left"] > 0 and parked["step"] > 0
    assert crashing.terminate() == 0

    fixed = service_factory("svc")  # same folders, no fault
    fixed.start()
    retried = traind_cli(fixed, "retry", str(failed.id))
    assert retried.returncode == 0, retried.stderr
    (done,) = fixed.wait_done(1)
    reference = started.result()
    assert done.attempts == 0
    resumed = fixed.events("file_resumed")
    assert [e["step"] for e in resumed] == [parked["step"]]
    assert done.end_step == reference.step == parked["target_step"]
    assert fixed.terminate() == 0
    assert_same_weights(fixed.root, reference)


def test_a_hung_worker_is_reported_then_replaced(tmp_path, service_factory):
    """A SIGSTOPped worker used to leave /v1/status saying "idle" forever; now the status
    says no report has come, and after worker.hang_timeout_s it is killed and replaced."""
    big = big_drop(tmp_path)
    service = service_factory(
        TRAIND_WORKER__HANG_TIMEOUT_S="4", TRAIND_TRAIN__EPOCHS_PER_FILE="3"
    ).start()
    service.drop(big)
    status = wait_for(
        lambda: (s := service.status()) and s["state"] == "training" and s["global_step"] > 2 and s,
        timeout=60,
        what="training",
    )
    hung_pid = status["worker"]["pid"]
    os.kill(hung_pid, signal.SIGSTOP)
    try:
        silent = wait_for(
            lambda: (s := service.status()) and s["error"] and s,
            timeout=10,
            what="the silence reported",
        )
        assert "no report from the worker" in silent["error"] or "hung" in silent["error"]
        assert silent["state"] != "idle"
        replaced = wait_for(
            lambda: (s := service.status()) and "hung" in (s["error"] or "") and s,
            timeout=15,
            what="the hang reported",
        )
        assert replaced["state"] == "error" and str(hung_pid) in replaced["error"]
        wait_for(
            lambda: (
                (s := service.status())
                and s["worker"]["pid"] not in (None, hung_pid)
                and s["worker"]["model_loaded"]
            ),
            timeout=60,
            what="a new worker",
        )
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed, as it should be
            os.kill(hung_pid, signal.SIGCONT)
    (done,) = service.wait_done(1, timeout=180)
    assert done.attempts == 1  # a hang counts against the file it was training
    assert service.status()["error"] is None
    assert "it is hung: killing and replacing it" in service.log.read_text()
    assert service.terminate() == 0


def test_a_second_serve_on_the_same_folders_is_refused(tmp_path, service_factory):
    """It used to say ready (reading the first one's heartbeat), race its watcher and
    restart its worker forever against the lineage lock."""
    first = service_factory("svc").start()
    second = service_factory("svc")
    started = time.monotonic()
    second.start(wait_ready=False)
    assert second.proc.wait(timeout=30) == 2
    assert time.monotonic() - started < 20
    log = second.log.read_text()
    assert f"another traind serve (pid {first.proc.pid}" in log and "paths.state" in log
    # The first one goes on untroubled.
    drops = make_drops(tmp_path / "drops")
    first.drop(drops[1])
    first.wait_done(1)
    assert [f.name for f in first.files()] == ["b.jsonl"]
    assert first.terminate() == 0
