"""What training holds in memory, measured: for the heartbeat (``/v1/status``, ``/metrics``)
and to check the start-up plan (``trainer.memory``) against what the first steps use.

Measured: the process's resident set (host RSS, from ``/proc/self/statm``: no library,
no system call beyond one read) and, on CUDA, the caching allocator's allocated and
reserved bytes and the peak allocated since the file in training started. The check runs
once per session, after :data:`CHECK_AFTER_STEPS` optimizer steps: on CUDA the plan is
compared with the peak allocated; on CPU with what the process's RSS grew by since the
trainer started opening (the interpreter and torch's own libraries are not in the plan).
After each file the C heap's free pages are given back (:func:`release_free_memory`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CHECK_AFTER_STEPS = 3
"""Optimizer steps of a session after which the plan is checked (the first steps allocate
what later ones reuse: moments on the first, the allocator's pools)."""
GIB = 2**30
STATM = Path("/proc/self/statm")


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None (another C library, or not Linux)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> float:
    """Give the C heap's free pages back to the system; the seconds it took.

    glibc keeps memory that large freed blocks (batches, evaluation activations of
    varying shapes) leave in its heaps, raising its mmap threshold as it goes, so a
    long-running worker's resident set crept up file after file (bench/soak.py: +9.5%
    from file 10 to 100, all of it with evaluation). Trimming after each file keeps it
    flat and about 100 MiB lower there (+1.3% to file 150) for a few milliseconds.
    """
    trim = _malloc_trim()
    if trim is None:
        return 0.0
    started = time.monotonic()
    trim(0)
    return time.monotonic() - started


def host_rss_bytes() -> int | None:
    """This process's resident set size, or None where ``/proc`` does not say."""
    try:
        resident_pages = int(STATM.read_bytes().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, kw_only=True)
class MemoryUse:
    """One measurement (None: not measured on this device)."""

    host_rss_bytes: int | None
    """The process's resident set."""
    device_allocated_bytes: int | None
    """CUDA: bytes in live tensors."""
    device_reserved_bytes: int | None
    """CUDA: bytes the caching allocator holds (allocated, and cached for reuse)."""
    device_peak_bytes: int | None
    """CUDA: the most bytes allocated at once since the file in training started."""
    estimate_bytes: int | None
    """The start-up plan's total (weights, gradients, AdamW moments, activations)."""

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)


class MemoryMeter:
    """Measures one trainer's memory; checks the plan once per session."""

    def __init__(self, device: torch.device, *, baseline_rss: int | None) -> None:
        self.device = device
        self.baseline_rss = baseline_rss
        """Host RSS before the lineage was opened (what the plan does not count)."""
        self.estimate_bytes: int | None = None
        self._steps = 0
        self._checked = False

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def file_started(self) -> None:
        """The peak counts from here."""
        if self.on_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def measure(self) -> MemoryUse:
        cuda = self.on_cuda
        return MemoryUse(
            host_rss_bytes=host_rss_bytes(),
            device_allocated_bytes=torch.cuda.memory_allocated(self.device) if cuda else None,
            device_reserved_bytes=torch.cuda.memory_reserved(self.device) if cuda else None,
            device_peak_bytes=torch.cuda.max_memory_allocated(self.device) if cuda else None,
            estimate_bytes=self.estimate_bytes,
        )

    def after_step(self) -> str | None:
        """Count a step; after :data:`CHECK_AFTER_STEPS` of them, once, log the plan against
        what was measured and return that line (else None)."""
        self._steps += 1
        if self._checked or self._steps < CHECK_AFTER_STEPS or self.estimate_bytes is None:
            return None
        self._checked = True
        use = self.measure()
        if self.on_cuda:
            measured, what = use.device_peak_bytes, "peak allocated on the device"
        elif use.host_rss_bytes is not None and self.baseline_rss is not None:
            measured, what = use.host_rss_bytes - self.baseline_rss, "host RSS growth"
        else:
            return None
        line = compare(estimate=self.estimate_bytes, measured=measured, what=what)
        log.info("%s", line)
        return line


def compare(*, estimate: int, measured: int, what: str) -> str:
    """The plan against a measurement, as one line."""
    off = (estimate - measured) / measured * 100 if measured > 0 else float("inf")
    side = "over" if off >= 0 else "under"
    return (
        f"memory after {CHECK_AFTER_STEPS} steps: {what} {measured / GIB:.3f} GiB; the start-up "
        f"estimate {estimate / GIB:.3f} GiB is {abs(off):.0f}% {side} it"
    )
