"""Checkpoints written in the background (``train.async_checkpoints``).

At an optimizer-step boundary :func:`host_copy` turns a checkpoint's content into one that
shares nothing with the live model or optimizer: every tensor copied to host memory, the
training state (with its RNG) already a copy. That copy is what the checkpoint holds, so
what training does next cannot leak into it and resume stays exact (ARCHITECTURE.md
rule 9). :class:`OneInFlight` then writes it on a thread of its own, one write at a time,
with the same staged write as a synchronous save (rule 8): a crash mid-write leaves a
staging folder that the next start clears, and the previous checkpoint stands.

The thread only writes. How the write ended is taken back by the thread that started it
(the training loop's), which alone touches the ledger, the callbacks and the event log.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from trainer.checkpoint import CheckpointContent, saved_tensors

log = logging.getLogger(__name__)


def host_copy(content: CheckpointContent) -> CheckpointContent:
    """``content`` with its tensors (model and optimizer state) copied to host memory and
    detached, and nothing left that points at the live model: safe to write on another
    thread while training goes on."""
    return dataclasses.replace(
        content,
        model=None,
        names=None,
        tensors={name: _host(tensor) for name, tensor in saved_tensors(content).items()},
        optimizer_state=_copied(content.optimizer_state, memo={}),
        # The training state is a dict of plain values; a deep copy in case a caller
        # handed in one it keeps changing.
        training_state=copy.deepcopy(content.training_state),
    )


def _host(tensor: torch.Tensor) -> torch.Tensor:
    # copy=True: on the CPU ``to`` would otherwise return the very tensor the next
    # optimizer step changes in place.
    return tensor.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)


def _copied(value: Any, *, memo: dict[int, Any]) -> Any:
    """A deep copy of an optimizer state dict, every tensor in it copied to host memory.
    What the original shares (the param groups' ``betas`` tuple) stays shared, so the
    copy pickles to the very bytes the original does."""
    key = id(value)
    if key in memo:
        return memo[key]
    if isinstance(value, torch.Tensor):
        copied = _host(value)
    elif isinstance(value, dict):
        copied = {name: _copied(item, memo=memo) for name, item in value.items()}
    elif isinstance(value, list | tuple):
        copied = type(value)(_copied(item, memo=memo) for item in value)
    else:
        copied = copy.deepcopy(value)
    memo[key] = copied
    return copied


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How a background write ended."""

    value: Any
    """What the write returned (None if it failed)."""
    error: BaseException | None
    """What it raised, or None."""
    seconds: float
    """How long it ran on its thread."""


class OneInFlight:
    """Runs one write at a time on a thread of its own; the caller collects its outcome."""

    def __init__(self, *, name: str) -> None:
        self.name = name
        """The thread's name (in stack dumps and logs)."""
        self._thread: threading.Thread | None = None
        self._outcome: Outcome | None = None

    @property
    def busy(self) -> bool:
        """Whether a write was started and its outcome not yet collected."""
        return self._thread is not None

    def start(self, write: Callable[[], Any]) -> None:
        """Run ``write()`` on a new thread; the previous one must have been collected."""
        if self._thread is not None:
            raise RuntimeError("a background write is still in flight; collect it first")

        def run() -> None:
            started = time.monotonic()
            try:
                value, error = write(), None
            except BaseException as exc:  # handed to the collector, raised there
                value, error = None, exc
            self._outcome = Outcome(value=value, error=error, seconds=time.monotonic() - started)

        # Not a daemon: a process that ends normally finishes the write first (a kill
        # cannot, which the staged write is for).
        self._thread = threading.Thread(target=run, name=self.name)
        self._thread.start()

    def collect(self, *, wait: bool) -> Outcome | None:
        """The outcome of the write in flight once it has ended (``wait``: waiting for
        it), or None (nothing in flight, or still running). Each outcome is given once."""
        thread = self._thread
        if thread is None or (not wait and thread.is_alive()):
            return None
        thread.join()
        self._thread = None
        outcome, self._outcome = self._outcome, None
        return outcome
