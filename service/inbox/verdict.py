"""What checking one inbox file found (:class:`Verdict`), before anything is written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service.ledger.records import LineProblem


@dataclass(frozen=True)
class Verdict:
    """What checking one file found, before anything is written anywhere."""

    path: Path
    """The file checked, at the top level of the inbox."""
    accepted: bool
    """Trainable as is (it may still turn out to be a duplicate)."""
    reason: str | None
    """Why it is rejected: file, line and what to do; ``None`` when accepted."""
    sha256: str | None = None
    """Content hash, when the file could be read."""
    size: int = 0
    """Bytes on disk."""
    format: str | None = None
    """Drop format, when one was recognised."""
    n_examples: int = 0
    """Valid examples."""
    n_invalid: int = 0
    """Invalid lines."""
    invalid_lines: tuple[LineProblem, ...] = ()
    """The first invalid lines with their reasons."""
