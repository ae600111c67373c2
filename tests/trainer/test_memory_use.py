"""``trainer.memory_use``: what a real training run holds in memory, and the start-up
plan checked against it once, after the first steps."""

from __future__ import annotations

import json
import logging
import mmap

import torch
from conftest import text_rows, write_jsonl

from trainer.memory_use import (
    CHECK_AFTER_STEPS,
    MemoryMeter,
    compare,
    host_rss_bytes,
    release_free_memory,
)


def test_a_training_run_measures_its_memory_and_checks_the_plan_once(
    tmp_path, open_trainer, run_paths, caplog
):
    trainer = open_trainer()
    start = [
        json.loads(line)
        for line in run_paths.events.read_text().splitlines()
        if '"training_start"' in line
    ][-1]
    before = trainer.memory.measure()
    assert before.estimate_bytes == start["memory_estimate_bytes"] > 0
    assert before.host_rss_bytes is not None and before.host_rss_bytes > 50 * 2**20
    assert trainer.memory.baseline_rss is not None
    assert trainer.memory.baseline_rss <= before.host_rss_bytes
    # On CPU there is no device memory to report.
    assert before.device_allocated_bytes is None and before.device_peak_bytes is None

    data = trainer.prepare(write_jsonl(tmp_path / "a.jsonl", text_rows(80)))
    with caplog.at_level(logging.INFO, logger="trainer.memory_use"):
        trainer.train_file(data, name="a.jsonl")
    checks = [r.getMessage() for r in caplog.records if r.name == "trainer.memory_use"]
    assert trainer.state.global_step > CHECK_AFTER_STEPS
    assert len(checks) == 1, checks  # once per session, not per step or file
    assert checks[0].startswith(f"memory after {CHECK_AFTER_STEPS} steps: host RSS growth ")
    assert "the start-up estimate" in checks[0]
    trainer.close()


def test_the_comparison_says_how_far_off_the_plan_is():
    line = compare(estimate=3 * 2**30, measured=2 * 2**30, what="peak allocated on the device")
    assert line == (
        f"memory after {CHECK_AFTER_STEPS} steps: peak allocated on the device 2.000 GiB; "
        "the start-up estimate 3.000 GiB is 50% over it"
    )
    assert compare(estimate=2**30, measured=2 * 2**30, what="x").endswith("is 50% under it")


def test_host_rss_grows_with_what_the_process_holds():
    # Fresh anonymous pages: memory the allocator freed earlier in a long test run would
    # be reused by a tensor without growing the resident set.
    size = 64 * 2**20
    before = host_rss_bytes()
    with mmap.mmap(-1, size) as block:
        for offset in range(0, size, mmap.PAGESIZE):
            block[offset] = 1  # touched: resident
        after = host_rss_bytes()
    assert before is not None and after is not None
    assert after - before > 48 * 2**20


def test_without_a_plan_nothing_is_checked():
    meter = MemoryMeter(torch.device("cpu"), baseline_rss=host_rss_bytes())
    assert all(meter.after_step() is None for _ in range(2 * CHECK_AFTER_STEPS))


def test_freed_heap_memory_goes_back_to_the_system():
    """What the C heap keeps after a free (below the top of the heap, so glibc does not
    give it back by itself) leaves the resident set once released."""
    blocks = [bytes(64 * 1024) for _ in range(2000)]  # 125 MiB in heap-sized blocks
    pin = bytes(64 * 1024)  # above them: the freed blocks are not the heap's top
    del blocks
    kept = host_rss_bytes()
    seconds = release_free_memory()
    after = host_rss_bytes()
    assert kept is not None and after is not None and pin
    assert kept - after > 48 * 2**20
    assert 0 <= seconds < 5
