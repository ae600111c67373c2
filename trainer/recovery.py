"""Pure helpers for the loop's recovery paths (OOM, non-finite steps)."""

from __future__ import annotations


def halve_micro_batch(micro: int, accum: int) -> tuple[int, int]:
    """The next smaller split with the same effective batch (``micro * accum`` unchanged).

    Halves the micro-batch when it is even; otherwise takes its largest divisor below
    half, so an odd micro-batch such as 6 -> 3 -> 1 still keeps the product exact.
    """
    if micro <= 1:
        raise ValueError("micro-batch is already 1")
    smaller = next(d for d in range(micro // 2, 0, -1) if micro % d == 0)
    return smaller, accum * (micro // smaller)


def merge_line_ranges(ranges: list[tuple[int, int]]) -> str:
    """``[(3, 5), (6, 9), (12, 12)]`` -> ``"3-9, 12"``: source lines for error messages."""
    merged: list[list[int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in merged)
