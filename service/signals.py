"""Signal handling that only sets a flag: the work happens at the next safe point."""

from __future__ import annotations

import signal
from types import FrameType


class StopFlag:
    """Set by SIGINT/SIGTERM; the training loop checks it at the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def install(self) -> None:
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)
