"""The errors the ledger raises on purpose."""

from __future__ import annotations

from trainer.records.storage import DiskFullError


class LedgerError(RuntimeError):
    """A refused request (a missing file, a transition its state forbids).

    The message is for a person and says what to do, e.g. ``file #3 is training; cancel
    it through the worker`` or ``no file #99``.
    """


class LedgerFullError(DiskFullError):
    """The ledger's database cannot be written for want of disk space. Nothing is wrong
    with the request: free space and it succeeds (the worker waits and retries)."""
