"""Named crash points for kill tests.

Tests set ``TRAIND_FAULT=<point>`` (optionally ``<point>@<n>`` to fire on the n-th
time the point is reached) on a child process; when the process reaches that point it
SIGKILLs itself, which is exactly what a power cut or the OOM killer does. With the
variable unset a fault point costs one dictionary look-up.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Die here, like a SIGKILL, if the environment asks for it."""
    spec = os.environ.get("TRAIND_FAULT")
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
