"""From a file's data position to the sequences of the next optimizer step.

The position is a single cursor over the file's epochs laid end to end; each epoch's
order is a pure function of (lineage seed, file hash, epoch). So the cursor alone says
exactly which micro-batch comes next, whatever happened before (design rule 4), and
nothing about it depends on a batch index that a resume could get wrong.
"""

from __future__ import annotations

import numpy as np

from trainer.data import TokenizedFile, sequence_order


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
