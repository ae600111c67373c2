"""The one error the ledger raises on purpose."""

from __future__ import annotations


class LedgerError(RuntimeError):
    """A refused request (a missing file, a transition its state forbids).

    The message is for a person and says what to do, e.g. ``file #3 is training; cancel
    it through the worker`` or ``no file #99``.
    """
