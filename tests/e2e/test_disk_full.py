"""A full disk through a real ``traind serve``, on real small filesystems (tmpfs): named as
such, nothing failed or counted against the file, ``error`` in /v1/status and /metrics
while it lasts, and training goes on by itself once space is freed.

Before, a full checkpoints filesystem gave ``RuntimeError ... unexpected pos`` from
``torch.save``, crash-looped the worker and failed a good file for good while the status
said ``idle``; a full state filesystem crash-looped the worker on its heartbeat.
"""

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import wait_for
from test_lost_state import reference

from service.ledger import FileState
from tests.corpus import make_drops

MIB = 2**20


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of the given size at a fresh folder; unmounted at the end."""
    mounted = []

    def mount(name: str, size: int) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
            check=False,
        )
        # Not skipped: without a real full filesystem there is no evidence at all.
        assert result.returncode == 0, f"mounting a tmpfs needs root: {result.stderr}"
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, *, leave: int) -> Path:
    """Fill ``folder``'s filesystem until ``leave`` bytes are free; the filler file.

    The service keeps writing meanwhile (heartbeats, events): should it take the last
    ``leave`` bytes first, the filler stops at the full disk, which is what it was for."""
    filler = folder / "filler.bin"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    remaining = max(0, free - leave)
    chunk = bytes(MIB)
    with filler.open("wb", buffering=0) as out:
        try:
            while remaining > 0:
                remaining -= out.write(chunk[:remaining])
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler


def metric(service, name: str) -> float | None:
    for line in service.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def big_file(tmp_path, copies: int) -> Path:
    drops = make_drops(tmp_path / "drops")
    big = tmp_path / "big.jsonl"
    big.write_text(drops[0].read_text() * copies)
    return big


def test_a_full_checkpoints_disk_waits_reports_and_recovers(tmp_path, service_factory, small_disk):
    big = big_file(tmp_path, copies=40)
    settings = {"TRAIND_TRAIN__KEEP_CHECKPOINTS": "2", "TRAIND_EVAL__HOLDOUT_FRACTION": "0"}
    started = reference(tmp_path, [big], **settings)  # trained meanwhile
    disk = small_disk("ckdisk", 16 * MIB)
    service = service_factory(TRAIND_PATHS__CHECKPOINTS=str(disk / "checkpoints"), **settings)
    service.start()
    wait_for(lambda: list((disk / "checkpoints").glob("step-*")), timeout=30, what="step 0")
    filler = fill(disk, leave=64 * 1024)
    service.drop(big)
    full = wait_for(
        lambda: (s := service.status()) and s["state"] == "error" and s,
        timeout=60,
        what="the full disk reported",
    )
    assert "out of disk space" in full["error"] and str(disk) in full["error"]
    assert metric(service, "traind_error") == 1
    assert metric(service, 'traind_disk_free_bytes{folder="checkpoints"}') < 128 * 1024
    pid = full["worker"]["pid"]
    (record,) = service.files()
    assert record.state is FileState.TRAINING and record.attempts == 0
    filler.unlink()
    (done,) = service.wait_done(1, timeout=120)
    assert done.attempts == 0 and done.error is None
    status = service.status()
    assert status["error"] is None and status["worker"]["pid"] == pid, "never restarted"
    assert metric(service, "traind_error") == 0
    assert service.events("disk_full") and service.events("disk_space_recovered")
    assert not service.events("file_failed")
    log = service.log.read_text()
    assert "unexpected pos" not in log and "Traceback" not in log
    assert service.terminate() == 0
    final = service.root / "final"
    final.mkdir()
    with contextlib.suppress(FileNotFoundError):
        (disk / "checkpoints" / ".lock").unlink()
    from trainer.checkpoint import latest_checkpoint

    ours = latest_checkpoint(disk / "checkpoints")
    ref = started.result()
    assert ours.step == ref.step
    weights = ref.weights()
    for key, value in ours.weights().items():
        assert torch.equal(value, weights[key]), f"{key}: a wait must not change training"


def test_a_full_state_disk_waits_reports_and_recovers(tmp_path, service_factory, small_disk):
    big = big_file(tmp_path, copies=40)
    disk = small_disk("statedisk", 24 * MIB)
    service = service_factory(TRAIND_PATHS__STATE=str(disk / "state"))
    service.start()
    service.drop(big)
    wait_for(
        lambda: (s := service.status()) and s["state"] == "training" and s,
        timeout=60,
        what="training",
    )
    filler = fill(disk, leave=16 * 1024)
    full = wait_for(
        lambda: (s := service.status()) and s["state"] == "error" and s,
        timeout=60,
        what="the full disk reported",
    )
    assert "out of disk space" in full["error"] and "paths.state" in full["error"]
    assert metric(service, "traind_error") == 1
    filler.unlink()
    (done,) = service.wait_done(1, timeout=120)
    assert done.attempts == 0 and done.state is FileState.DONE
    wait_for(
        lambda: (s := service.status()) and s["error"] is None and s,
        timeout=30,
        what="the error cleared",
    )
    assert not service.events("file_failed")
    assert service.terminate() == 0
