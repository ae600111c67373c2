"""Optional TensorBoard scalars: ``train/loss``, ``val/<set>``, ``lr`` and ``tokens_per_sec``.

Behind the ``tensorboard`` extra (``pip install 'traind[tensorboard]'``) and the setting
``eval.tensorboard``. Every scalar is keyed by the global step, so the curves of one
lineage continue across files and restarts in ``<paths.state>/tensorboard``. A restart
purges what a crashed run logged past the checkpoint it resumes from, so a resumed
stretch is not drawn twice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Scalars:
    """A TensorBoard writer, or nothing when disabled or not installed."""

    def __init__(self, folder: Path | None, *, step: int) -> None:
        self._writer: Any = None
        if folder is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning(
                "eval.tensorboard is on but TensorBoard is not installed; "
                "pip install 'traind[tensorboard]' (no scalars are written)"
            )
            return
        folder.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(folder), purge_step=step)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def step(self, step: int, *, loss: float | None, lr: float, tokens_per_s: float) -> None:
        if self._writer is None:
            return
        if loss is not None:
            self._writer.add_scalar("train/loss", loss, step)
        self._writer.add_scalar("lr", lr, step)
        self._writer.add_scalar("tokens_per_sec", tokens_per_s, step)

    def evaluation(self, step: int, losses: dict[str, float]) -> None:
        if self._writer is None:
            return
        for name, loss in losses.items():
            self._writer.add_scalar(f"val/{name}", loss, step)
        # Evaluations are rare; make them visible at once.
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
