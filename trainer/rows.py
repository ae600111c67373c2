"""The sequences of one optimizer step, from the file in progress and, with replay, from
earlier drops (``trainer.replay``).

A step's rows are parts, each a tokenized file and the row indices taken from it: the
file's own rows first, in cursor order, then the replayed rows in the order they were
drawn. Micro-batches cut this list in order, so how a step is split never changes which
sequences it trains (ARCHITECTURE.md rule 4); a micro-batch that spans two parts is
padded to its widest row (padding is never a target). With one part, a micro-batch is
exactly ``TokenizedFile.batch`` of its rows, as before replay existed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from trainer.data import TokenizedFile


@dataclass(frozen=True)
class StepRows:
    """The rows of one optimizer step: ``parts[0]`` is the file in progress."""

    parts: tuple[tuple[TokenizedFile, np.ndarray], ...]
    """(tokenized file, int64 row indices) in training order; the first is the file's own."""

    @classmethod
    def of(cls, data: TokenizedFile, indices: np.ndarray) -> StepRows:
        """The file's own rows alone (no replay)."""
        return cls(((data, np.asarray(indices, dtype=np.int64)),))

    @property
    def own(self) -> tuple[TokenizedFile, np.ndarray]:
        """The file in progress and its rows."""
        return self.parts[0]

    @property
    def replayed(self) -> tuple[tuple[TokenizedFile, np.ndarray], ...]:
        """The parts replayed from earlier drops."""
        return self.parts[1:]

    def __len__(self) -> int:
        return sum(len(rows) for _, rows in self.parts)

    @property
    def n_targets(self) -> int:
        """Prediction targets of every row: the step's loss normaliser."""
        return sum(data.targets_of(rows) for data, rows in self.parts if len(rows))

    @staticmethod
    def tokens_of(data: TokenizedFile, rows: np.ndarray) -> int:
        """Input tokens of these rows (each row of n tokens gives n - 1 inputs)."""
        return int(data.lengths[rows].sum()) - len(rows) if len(rows) else 0

    @property
    def own_tokens(self) -> int:
        return self.tokens_of(*self.own)

    @property
    def replayed_tokens(self) -> int:
        return sum(self.tokens_of(data, rows) for data, rows in self.replayed)

    @property
    def replayed_sequences(self) -> int:
        return sum(len(rows) for _, rows in self.replayed)

    def shard(self, rank: int, world: int) -> StepRows:
        """Rank ``rank``'s share of the step in a group of ``world``: a contiguous run of
        ``ceil(len / world)`` rows (the last ranks' shorter, or empty), so the ranks
        together train every row of the step once."""
        if world == 1:
            return self
        per = -(-len(self) // world)
        start, end = min(rank * per, len(self)), min((rank + 1) * per, len(self))
        parts, offset = [], 0
        for data, rows in self.parts:
            lo, hi = max(start - offset, 0), min(end - offset, len(rows))
            if hi > lo:
                parts.append((data, rows[lo:hi]))
            offset += len(rows)
        return StepRows(tuple(parts) or ((self.parts[0][0], self.parts[0][1][:0]),))

    def micro_batches(self, micro: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Inputs ``x`` and targets ``y`` of each micro-batch of ``micro`` rows, in order."""
        if len(self.parts) == 1:
            data, rows = self.parts[0]
            for start in range(0, len(rows), micro):
                yield data.batch(rows[start : start + micro])
            return
        flat = [(data, int(row)) for data, rows in self.parts for row in rows]
        for start in range(0, len(flat), micro):
            yield _joined(flat[start : start + micro])


def _joined(rows: list[tuple[TokenizedFile, int]]) -> tuple[np.ndarray, np.ndarray]:
    """One micro-batch of rows from several files: each file's run of rows batched by it,
    then padded to the widest (``x`` with the pad id, ``y`` with -1) and stacked."""
    pieces: list[tuple[np.ndarray, np.ndarray]] = []
    start = 0
    while start < len(rows):
        data = rows[start][0]
        end = start
        while end < len(rows) and rows[end][0] is data:
            end += 1
        pieces.append(data.batch([row for _, row in rows[start:end]]))
        start = end
    width = max(x.shape[1] for x, _ in pieces)
    pad_id = rows[0][0].pad_id
    xs, ys = [], []
    for x, y in pieces:
        extra = width - x.shape[1]
        xs.append(np.pad(x, ((0, 0), (0, extra)), constant_values=pad_id) if extra else x)
        ys.append(np.pad(y, ((0, 0), (0, extra)), constant_values=-1) if extra else y)
    return np.concatenate(xs), np.concatenate(ys)


__all__ = ["StepRows"]
