"""How traind's processes signal one another, outside the ledger.

A stop is a signal that only sets a flag (the work happens at the next safe point). The
supervisor tells a worker the id it reports under through the environment, and a worker
tells the supervisor through its exit status whether restarting it can help.
"""

from __future__ import annotations

import ctypes
import signal
from types import FrameType

EXIT_BAD_SETTINGS = 2
"""A worker (or ``traind serve``) that exits 2 needs a person: bad settings, or a lineage
it must not touch. The supervisor does not restart it."""
WORKER_ID_ENV = "TRAIND_WORKER_ID"
"""The id the supervisor gives a worker, so it can tell which claims were that worker's."""


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


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask Linux to send us ``signum`` when the thread that started us ends
    (``PR_SET_PDEATHSIG``), so nothing traind starts outlives it: the worker, and
    torchrun's agent (:mod:`service.worker.agent`), whose ranks it then stops."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signum)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the lineage lock still keeps a second worker out
