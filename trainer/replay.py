"""Experience replay: a share of each optimizer step from drops the lineage finished.

A model trained file after file on new data forgets the old; replaying a small share of
earlier data in every step is the simple, proven defence (``train.replay_fraction``).
The pool is the lineage's finished drops (``TrainingState.files_completed``), each read
from its tokenized cache entry, whose training part never holds a held-out example. The
draw of a step is a pure function of (lineage seed, global step, the pool), so a resumed
run replays exactly what an uninterrupted one does (ARCHITECTURE.md rule 9).

Each drop weighs its number of training sequences, so every earlier sequence is equally
likely, times ``(1 - replay_recent_weight) ** age`` (age 0 for the newest drop) when the
replay leans toward recent drops. A drop whose cache entry is gone is tokenized again
from its source (``source_of``); when no source is found it is left out, with a warning
and a ``replay_source_missing`` event. Entries are opened only when drawn, and at most
:data:`OPEN_ENTRIES` stay open.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from trainer.cache import META as CACHE_META
from trainer.cache import cache_key, load_cached, tokenize_file
from trainer.data import TokenizedFile
from trainer.records.events import EventLog
from trainer.records.formats import DataError
from trainer.records.state import CompletedFile
from trainer.records.storage import DiskFullError
from trainer.tokenizer import Tokenizer

log = logging.getLogger(__name__)

REPLAY_STREAM = 0x5E_71A7
"""Mixed into the seed of every draw, so the replay's stream is no other RNG's."""
OPEN_ENTRIES = 64
"""Cache entries kept open (memory-mapped) at once; older ones are closed."""

SourceFinder = Callable[[str], Path | None]
"""Finds a drop's source file by sha256 (``accepted/`` in the daemon), or None."""


@dataclass(frozen=True, kw_only=True)
class ReplayDrop:
    """A finished drop the replay draws from."""

    name: str
    sha256: str
    n_sequences: int
    """Training sequences of its cache entry (held-out ones excluded)."""
    holdout_fraction: float


def replay_share(step_in_file: int, *, per_step: int, fraction: float) -> int:
    """How many of step ``step_in_file``'s ``per_step`` sequences are replayed.

    The file's own share is ``(1 - fraction) * per_step`` on average, kept exact over the
    file: step k takes ``floor((k + 1) q) - floor(k q)`` own sequences, ``q`` that share,
    computed in exact fractions so no step count drifts with float rounding."""
    if fraction <= 0:
        return 0
    own = own_per_step(per_step, fraction)
    return per_step - (math.floor(own * (step_in_file + 1)) - math.floor(own * step_in_file))


def own_per_step(per_step: int, fraction: float) -> Fraction:
    """The file's own sequences per step, ``(1 - fraction) * per_step``, as an exact
    fraction of the decimal ``fraction`` is written as (0.05 is 1/20, not a float's
    nearest binary value), for the budget and the share of each step."""
    return Fraction(per_step) * (1 - Fraction(repr(fraction)))


class ReplayPool:
    """The finished drops of one lineage, and the deterministic draw of each step."""

    def __init__(
        self,
        *,
        tokenizer: Tokenizer,
        block_size: int,
        cache_dir: Path,
        seed: int,
        recent_weight: float,
        events: EventLog,
        source_of: SourceFinder | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.cache_dir = Path(cache_dir)
        self.seed = seed
        self.recent_weight = recent_weight
        self.events = events
        self.source_of = source_of
        self.drops: list[ReplayDrop] = []
        self.left_out: set[str] = set()
        self._open: OrderedDict[str, TokenizedFile] = OrderedDict()
        self._cumulative: tuple[tuple[int, str], np.ndarray] | None = None
        self._version = 0
        """Counts changes of ``drops``: the cached weights belong to one version."""

    # ------------------------------------------------------------- membership
    def restore(self, files: list[CompletedFile]) -> None:
        """Fill the pool on opening from the lineage's finished drops, in order; a drop
        whose cache entry is gone is rebuilt now (or left out), so every later draw sees
        the same pool as the run that wrote the checkpoint did."""
        for done in files:
            self.add(done, check=True)

    def add(self, done: CompletedFile, *, check: bool = False) -> None:
        """A drop the lineage finished joins the pool (its entry was just used, so it is
        only checked on ``restore``)."""
        if done.n_sequences <= 0 or any(d.sha256 == done.sha256 for d in self.drops):
            return
        if done.sha256 in self.left_out:  # rank 0 of a group left it out: so do the others
            return
        drop = ReplayDrop(
            name=done.name,
            sha256=done.sha256,
            n_sequences=done.n_sequences,
            holdout_fraction=done.holdout_fraction,
        )
        if check and not self._entry_present(drop) and self._rebuild(drop) is None:
            return
        self.drops.append(drop)
        self._version += 1

    def _entry_present(self, drop: ReplayDrop) -> bool:
        key = cache_key(
            drop.sha256,
            tokenizer=self.tokenizer,
            block_size=self.block_size,
            holdout_fraction=drop.holdout_fraction,
        )
        return (self.cache_dir / key / CACHE_META).is_file()

    def _rebuild(self, drop: ReplayDrop) -> TokenizedFile | None:
        """Tokenize a drop again from its source; None (and the drop left out, said
        loudly) when there is no source or it no longer gives the same sequences."""
        source = self.source_of(drop.sha256) if self.source_of else None
        if source is None:
            return self._leave_out(drop, "its tokenized cache is gone and no source file was found")
        try:
            data = tokenize_file(
                source,
                sha256=drop.sha256,
                tokenizer=self.tokenizer,
                block_size=self.block_size,
                cache_dir=self.cache_dir,
                holdout_fraction=drop.holdout_fraction,
                allow_invalid=True,
            )
        except DiskFullError:
            raise
        except (DataError, OSError) as exc:
            return self._leave_out(drop, f"rebuilding its cache from {source} failed: {exc}")
        if data.n_sequences != drop.n_sequences:
            return self._leave_out(
                drop,
                f"{source} now gives {data.n_sequences} sequences, not the "
                f"{drop.n_sequences} it was trained with",
            )
        log.info("replay: rebuilt the tokenized cache of %s from %s", drop.name, source)
        return data

    def _leave_out(self, drop: ReplayDrop, reason: str) -> None:
        self.left_out.add(drop.sha256)
        log.warning("replay leaves out %s: %s", drop.name, reason)
        self.events.emit("replay_source_missing", file=drop.name, sha256=drop.sha256, reason=reason)
        return None

    # ------------------------------------------------------------- drawing
    def has_drops(self, *, besides: str) -> bool:
        """Whether any drop other than the content ``besides`` can be replayed."""
        return any(d.sha256 != besides for d in self.drops)

    def draw(
        self, *, step: int, count: int, besides: str
    ) -> list[tuple[TokenizedFile, np.ndarray]]:
        """``count`` sequences for global step ``step``, never of the content ``besides``
        (the file in progress): parts (entry, rows) in the order first drawn."""
        drops = [d for d in self.drops if d.sha256 != besides]
        if count <= 0 or not drops:
            return []
        cumulative = self._weights(drops, besides=besides)
        entropy = np.random.SeedSequence([self.seed, REPLAY_STREAM, step])
        rng = np.random.Generator(np.random.PCG64(entropy))
        which = np.searchsorted(cumulative, rng.random(count) * cumulative[-1], side="right")
        which = np.minimum(which, len(drops) - 1)
        sizes = np.array([drops[i].n_sequences for i in which], dtype=np.int64)
        rows = np.minimum((rng.random(count) * sizes).astype(np.int64), sizes - 1)
        parts: dict[int, list[int]] = {}
        for index, row in zip(which.tolist(), rows.tolist(), strict=True):
            parts.setdefault(index, []).append(row)
        drawn = []
        for index, picked in parts.items():
            entry = self._entry(drops[index])
            if entry is None:
                # Gone mid-run and not rebuildable: left out from now on; this step takes
                # the rest from the other drops (a resume sees the same pool from here).
                return self.draw(step=step, count=count, besides=besides)
            drawn.append((entry, np.asarray(picked, dtype=np.int64)))
        return drawn

    def _weights(self, drops: list[ReplayDrop], *, besides: str) -> np.ndarray:
        """Cumulative weights of ``drops`` (sequences x recency), cached per pool."""
        key = (self._version, besides)
        if self._cumulative is not None and self._cumulative[0] == key:
            return self._cumulative[1]
        sizes = np.array([d.n_sequences for d in drops], dtype=np.float64)
        if self.recent_weight > 0:
            age = np.arange(len(drops) - 1, -1, -1, dtype=np.float64)
            sizes = sizes * (1.0 - self.recent_weight) ** age
            if sizes.sum() == 0:  # every drop underflowed but the newest
                sizes[-1] = 1.0
        cumulative = np.cumsum(sizes)
        self._cumulative = (key, cumulative)
        return cumulative

    def _entry(self, drop: ReplayDrop) -> TokenizedFile | None:
        """The drop's cache entry, opened once and kept among the recently used."""
        entry = self._open.get(drop.sha256)
        if entry is not None:
            self._open.move_to_end(drop.sha256)
            return entry
        entry = load_cached(
            drop.sha256,
            name=drop.name,
            tokenizer=self.tokenizer,
            block_size=self.block_size,
            cache_dir=self.cache_dir,
            holdout_fraction=drop.holdout_fraction,
        )
        if entry is None:
            entry = self._rebuild(drop)
        if entry is None:
            self.drops = [d for d in self.drops if d.sha256 != drop.sha256]
            self._version += 1
            return None
        self._open[drop.sha256] = entry
        while len(self._open) > OPEN_ENTRIES:
            self._open.popitem(last=False)
        return entry


__all__ = ["ReplayDrop", "ReplayPool", "SourceFinder", "own_per_step", "replay_share"]
