"""How traind's processes signal one another, outside the ledger.

A stop is a signal that only sets a flag (the work happens at the next safe point). The
supervisor tells a worker the id it reports under through the environment, and a worker
tells the supervisor through its exit status whether restarting it can help.
"""

from __future__ import annotations

import ctypes
import os
import select
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


WAKE_SIGNAL = signal.SIGUSR1
"""What ``traind serve`` sends an idle or paused worker when there is something to do (a
file queued, a request through the API): it cuts the worker's wait between two looks at
the ledger short. The worker still looks every ``worker.poll_s``, so a wake that is lost,
or never sent (a torchrun group), costs at most that."""


class Wakeup:
    """A wait that a signal cuts short: the worker's idle and paused loops wait here.

    The signal's handler only notes it; what ends the wait is CPython's wakeup fd, to
    which the interpreter writes a byte for every signal with a Python handler (so a stop
    signal ends the wait too), whichever thread the kernel delivered it to. Install in the
    main thread, before anything may send the signal: its default action kills.
    """

    def __init__(self) -> None:
        self.woken = False
        self._read = -1

    def handle(self, _signum: int, _frame: FrameType | None) -> None:
        self.woken = True

    def install(self) -> None:
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        signal.signal(WAKE_SIGNAL, self.handle)
        self._read = read

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s, less if a signal comes (or came since the last wait);
        whether it was a wake."""
        watched = [self._read] if self._read >= 0 else []  # not installed: a plain sleep
        if not self.woken:
            select.select(watched, [], [], timeout)
        if watched:
            try:
                while os.read(self._read, 512):
                    pass
            except BlockingIOError:
                pass  # drained
        woken, self.woken = self.woken, False
        return woken


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask Linux to send us ``signum`` when the thread that started us ends
    (``PR_SET_PDEATHSIG``), so nothing traind starts outlives it: the worker, and
    torchrun's agent (:mod:`service.worker.agent`), whose ranks it then stops."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signum)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the lineage lock still keeps a second worker out
