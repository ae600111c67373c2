"""A cumulative histogram of optimizer-step durations, for ``traind_step_duration_seconds``.

The worker feeds it and ships it in its heartbeat; the API only reads the heartbeat, so
the histogram survives API restarts and needs no shared memory between processes.
"""

from __future__ import annotations

import bisect
from typing import Any

BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Upper bounds in seconds: from a tiny CPU model to a large model's long step."""


class StepTimes:
    """Counts per bucket (non-cumulative inside, cumulative when exported)."""

    def __init__(self) -> None:
        self._counts = [0] * (len(BOUNDS) + 1)  # the last bucket is +Inf
        self._sum = 0.0
        self._last_step: int | None = None

    def observe(self, step: int, seconds: float) -> None:
        """Count one step's duration, once per step however often it is reported."""
        if step == self._last_step:
            return
        self._last_step = step
        self._counts[bisect.bisect_left(BOUNDS, seconds)] += 1
        self._sum += seconds

    def export(self) -> dict[str, Any]:
        cumulative, running = [], 0
        for count in self._counts:
            running += count
            cumulative.append(running)
        return {
            "step_seconds_buckets": {"le": [*BOUNDS, "+Inf"], "counts": cumulative},
            "step_seconds_sum": round(self._sum, 6),
            "step_seconds_count": running,
        }
