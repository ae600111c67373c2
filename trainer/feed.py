"""Where each optimizer step's sequences come from: the file's cursor, and the replay.

The file in progress gives its next sequences in its fixed order (``FileSampler``,
ARCHITECTURE.md rules 4 and 14); with ``replay_fraction`` above 0 the rest of the step is
drawn from the lineage's finished drops (``trainer.replay``). The share is the one the file
started with, so a setting changed mid-file changes nothing of it.
"""

from __future__ import annotations

from trainer.data import FileSampler, TokenizedFile
from trainer.records.state import CompletedFile, FileProgress, TrainingState
from trainer.replay import ReplayPool, replay_share
from trainer.rows import StepRows


class StepFeed:
    """The rows of each optimizer step of one trainer."""

    def __init__(self, pool: ReplayPool, *, state: TrainingState) -> None:
        self.pool = pool
        """The finished drops a step replays; filled from the state when first needed, so
        a lineage that never replays never looks at old cache entries."""
        self.state = state
        self._filled = False
        self._sampler: FileSampler | None = None

    def start(self, data: TokenizedFile, *, configured: float) -> float:
        """Take ``data`` up; returns the replay share a file that begins now gets: the
        ``configured`` one, or 0 when there is no earlier drop to replay."""
        self._sampler = FileSampler(data, seed=self.state.seed)
        if configured > 0 and not self.drops().has_drops(besides=data.sha256):
            return 0.0
        return configured

    def drops(self) -> ReplayPool:
        if not self._filled:
            self.pool.restore(self.state.files_completed)
            self._filled = True
        return self.pool

    def finished(self, done: CompletedFile) -> None:
        """A file ended: it may be replayed from now on."""
        if self._filled:
            self.pool.add(done)

    def rows(self, data: TokenizedFile, current: FileProgress) -> StepRows:
        """The next step's rows: the file's own share at its cursor, then the replayed."""
        count = current.sequences_per_step
        done = current.steps_for_file - (current.target_step - self.state.global_step)
        replayed = replay_share(done, per_step=count, fraction=current.replay_fraction)
        rows = StepRows.of(data, self._sampler.indices(current.cursor, count - replayed))
        if not replayed:
            return rows
        drawn = self.drops().draw(step=self.state.global_step, count=replayed, besides=data.sha256)
        return StepRows((rows.own, *drawn))


__all__ = ["StepFeed"]
