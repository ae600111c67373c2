"""Tokenized drop files as the training loop draws from them.

A :class:`TokenizedFile` is a file's sequences as rows of memory-mapped arrays (built
and kept by ``trainer.cache``): rows ``tokens[start : start + length]``, with ``mask``
marking the positions that are prediction targets. Text files are one packed stream cut
into overlapping windows of ``block_size + 1`` tokens; prompt/completion and chat files
give one sequence per example.

The loop's data position is a single cursor over the file's epochs laid end to end;
each epoch's order is a pure function of (lineage seed, file hash, epoch)
(:func:`sequence_order`). So the cursor alone says exactly which micro-batch comes next,
whatever happened before (ARCHITECTURE.md rule 4), and nothing about it depends on a
batch index that a resume could get wrong (:class:`FileSampler`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.records.formats import Format


@dataclass(frozen=True, eq=False)
class TokenizedFile:
    """A tokenized drop file: counts plus memory-mapped arrays, one row per sequence."""

    path: Path
    """The source file (it may be gone once the entry exists)."""
    sha256: str
    """sha256 hex of the source file's bytes."""
    format: Format
    """Format of the source file."""
    key: str
    """Cache key: names the folder under ``cache_dir``."""
    block_size: int
    """Longest model input; sequences hold at most ``block_size + 1`` tokens."""
    pad_id: int
    """Id used to right-pad ``x`` in ``batch`` (never a target)."""
    n_examples: int
    """Valid examples tokenized."""
    n_invalid: int
    """Invalid lines skipped (non-zero only with ``allow_invalid=True``)."""
    n_sequences: int
    """Rows in ``starts``/``lengths``."""
    n_tokens: int
    """Tokens stored."""
    n_targets: int
    """Prediction targets over all sequences (sum of ``target_counts``)."""
    n_truncated: int
    """Examples cut to fit ``block_size + 1`` tokens."""
    n_no_target: int
    """Examples giving no target: kept as zero-loss rows, or dropped if under 2 tokens."""
    tokens: np.ndarray
    """All token ids (uint16, or uint32 for vocabularies of 65536 and more)."""
    mask: np.ndarray
    """uint8 per token: 1 where the token is a prediction target."""
    starts: np.ndarray
    """int64 per sequence: offset of its first token in ``tokens``."""
    lengths: np.ndarray
    """int32 per sequence: tokens in it (2 to ``block_size + 1``)."""
    target_counts: np.ndarray
    """int32 per sequence: targets among positions 1..length-1 (the ``y`` side)."""
    lines: np.ndarray
    """int32 [n_sequences, 2]: first and last source line of each sequence."""
    holdout_fraction: float = 0.0
    """Share of the examples held out (0 when the file was too small to split)."""
    holdout: TokenizedFile | None = None
    """The held-out examples' sequences, never trained on (None without a holdout)."""

    def batch(self, indices: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Inputs ``x`` and targets ``y`` (int64 [B, T], -1 = no target) for these rows."""
        idx = np.asarray(indices, dtype=np.int64)
        starts = self.starts[idx]
        lengths = self.lengths[idx].astype(np.int64)
        width = int(lengths.max())
        offsets = starts[:, None] + np.arange(width, dtype=np.int64)
        if (lengths == width).all():
            tokens = self.tokens[offsets].astype(np.int64)
            targets = self.mask[offsets[:, 1:]].astype(bool)
            x = np.ascontiguousarray(tokens[:, :-1])
        else:
            # Column j of x and y is real while j + 1 < length.
            real = np.arange(1, width) < lengths[:, None]
            # Clamp so padding positions gather a real (ignored) token, not out of bounds.
            np.minimum(offsets, self.n_tokens - 1, out=offsets)
            tokens = self.tokens[offsets].astype(np.int64)
            targets = self.mask[offsets[:, 1:]].astype(bool) & real
            x = np.where(real, tokens[:, :-1], self.pad_id)
        y = np.where(targets, tokens[:, 1:], -1)
        return x, y

    def lines_of(self, indices: np.ndarray | Sequence[int]) -> list[tuple[int, int]]:
        """Source line range (first, last) of each of these rows, for error messages."""
        rows = self.lines[np.asarray(indices, dtype=np.int64)]
        return [(int(first), int(last)) for first, last in rows]

    def targets_of(self, indices: np.ndarray | Sequence[int]) -> int:
        """Prediction targets in these rows (the loss normaliser)."""
        return int(self.target_counts[np.asarray(indices, dtype=np.int64)].sum())


def sequence_order(n: int, *, seed: int, sha256: str, epoch: int) -> np.ndarray:
    """Permutation of ``range(n)`` fixed by (seed, file, epoch), equal in every process."""
    if seed < 0 or epoch < 0:
        raise ValueError("seed and epoch must be non-negative")
    entropy = np.random.SeedSequence([seed, int(sha256, 16), epoch])
    return np.random.Generator(np.random.PCG64(entropy)).permutation(n)


class FileSampler:
    """Maps cursor positions of one file to sequence indices."""

    def __init__(self, data: TokenizedFile, *, seed: int) -> None:
        self.data = data
        self.seed = seed
        self._orders: dict[int, np.ndarray] = {}

    def order(self, epoch: int) -> np.ndarray:
        order = self._orders.get(epoch)
        if order is None:
            order = sequence_order(
                self.data.n_sequences, seed=self.seed, sha256=self.data.sha256, epoch=epoch
            )
            # A step straddles at most two epochs; keep no more than that in memory.
            for old in sorted(self._orders)[:-1]:
                del self._orders[old]
            self._orders[epoch] = order
        return order

    def indices(self, cursor: int, count: int) -> np.ndarray:
        """Sequence indices at positions ``cursor .. cursor + count - 1``."""
        positions = np.arange(cursor, cursor + count)
        epochs = positions // self.data.n_sequences
        within = positions % self.data.n_sequences
        if epochs[0] == epochs[-1]:
            return self.order(int(epochs[0]))[within]
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            out[mask] = self.order(int(epoch))[within[mask]]
        return out


__all__ = ["FileSampler", "TokenizedFile", "sequence_order"]
