"""``service.signals.Wakeup``: the wait of an idle or paused worker, which ``traind serve``'s
wake signal cuts short (tests/e2e/test_wake.py shows it between real processes)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from service.signals import WAKE_SIGNAL, Wakeup


@pytest.fixture
def wakeup():
    """An installed Wakeup; the signal's handler and the wakeup fd put back after."""
    handler = signal.getsignal(WAKE_SIGNAL)
    previous_fd = signal.set_wakeup_fd(-1)
    wake = Wakeup()
    wake.install()
    yield wake
    os.close(signal.set_wakeup_fd(previous_fd))
    os.close(wake._read)
    signal.signal(WAKE_SIGNAL, handler)


def send_later(seconds: float, signum: int = WAKE_SIGNAL) -> threading.Timer:
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signum))
    timer.start()
    return timer


def test_a_wake_cuts_the_wait_short(wakeup):
    started = time.monotonic()
    send_later(0.2)
    assert wakeup.wait(30) is True
    assert 0.15 < time.monotonic() - started < 10


def test_without_a_wake_the_wait_lasts_its_timeout(wakeup):
    started = time.monotonic()
    assert wakeup.wait(0.3) is False
    assert time.monotonic() - started >= 0.29


def test_a_wake_before_the_wait_is_not_lost(wakeup):
    os.kill(os.getpid(), WAKE_SIGNAL)
    started = time.monotonic()
    assert wakeup.wait(30) is True
    assert time.monotonic() - started < 5
    # Taken once: the next wait lasts its time again.
    assert wakeup.wait(0.1) is False


def test_another_signal_with_a_handler_ends_the_wait_too(wakeup):
    """A stop (SIGTERM) need not wait for the poll either; it is not a wake."""
    noted = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: noted.append(signum))
    try:
        started = time.monotonic()
        send_later(0.2, signal.SIGUSR2)
        assert wakeup.wait(30) is False
        assert time.monotonic() - started < 10 and noted == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_not_installed_it_is_a_plain_sleep():
    started = time.monotonic()
    assert Wakeup().wait(0.1) is False
    assert time.monotonic() - started >= 0.09
