"""Named crash points for kill tests.

Tests set ``TRAIND_FAULT=<point>`` (optionally ``<point>@<n>`` to fire on the n-th
time the point is reached) on a child process; when the process reaches that point it
SIGKILLs itself, which is exactly what a power cut or the OOM killer does; in a
torchrun group ``TRAIND_FAULT_RANK=<rank>`` kills that rank alone.
``TRAIND_FAULT_ACTION=hang`` makes the process hang there instead of dying. With the
variable unset a fault point costs one dictionary look-up.
"""

from __future__ import annotations

import os
import signal
import time

_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Die here, like a SIGKILL, if the environment asks for it."""
    spec = os.environ.get("TRAIND_FAULT")
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    rank = os.environ.get("TRAIND_FAULT_RANK")  # a torchrun group: only this rank dies
    if rank is not None and rank != os.environ.get("RANK", "0"):
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= int(nth or 1):
        if os.environ.get("TRAIND_FAULT_ACTION") == "hang":
            while True:  # a hung process (a stuck GPU, a dead NFS mount): never returns
                time.sleep(3600)
        os.kill(os.getpid(), signal.SIGKILL)
