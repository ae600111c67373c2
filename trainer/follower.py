"""A rank other than 0 of a torchrun group: do what rank 0 decides, when it decides.

Rank 0 runs the worker (or ``traind train``) as a single process would; every
:class:`trainer.loop.Trainer` method that the other ranks must join (a file to train, a
checkpoint, an export, an evaluation, a stop at a step boundary, a close) first sends
its decision through ``trainer.distributed.Channel``. This loop receives them in order
and calls the same methods on the same lineage, so every rank takes the same optimizer
steps and joins the same collectives. It never reads the ledger, the settings file or
the signals: a SIGTERM reaches rank 0, which checkpoints (with every rank) and says
``exit``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.loop import Trainer
from trainer.opening import FollowerExit

log = logging.getLogger(__name__)

ENDS = ("close", "exit")


def follow(open_trainer: Callable[[], Trainer]) -> int:
    """Open the lineage each time rank 0 does and carry out its decisions until it says
    ``exit``; the exit status (0)."""
    # Rank 0 logs the progress; the others would say the same again, line for line.
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))
    while True:
        try:
            trainer = open_trainer()
        except FollowerExit as exc:
            if str(exc) == "exit":
                return 0
            log.warning("rank 0 sent %r while this rank waited to open the lineage", str(exc))
            continue
        try:
            ended = serve(trainer)
        finally:
            trainer.close()
        if ended == "exit":
            return 0


def serve(trainer: Trainer) -> str:
    """Carry out rank 0's decisions on ``trainer`` until it closes; ``close`` or ``exit``."""
    while True:
        op, args = trainer.group.channel.receive()
        if op in ENDS:
            return op
        if op == "decision":
            raise RuntimeError("a step decision arrived outside a file: the ranks disagree")
        carry_out(trainer, op, args)


def decision(trainer: Trainer) -> bool:
    """At a step boundary: carry out what rank 0 does there, then whether it stops."""
    while True:
        op, args = trainer.group.channel.receive()
        if op == "decision":
            return bool(args["stop"])
        if op in ENDS:
            raise RuntimeError(f"rank 0 sent {op!r} in the middle of a file")
        carry_out(trainer, op, args)


def carry_out(trainer: Trainer, op: str, args: dict[str, Any]) -> None:
    """One of rank 0's decisions, on this rank."""
    if op == "train_file":
        trainer.feed.pool.left_out.update(args["left_out"])
        data = trainer.prepare(Path(args["path"]), sha256=args["sha256"], allow_invalid=True)
        trainer.train_file(data, name=args["name"], should_stop=lambda: decision(trainer))
    elif op == "save_checkpoint":
        trainer.save_checkpoint(reason=args["reason"])
    elif op == "export":
        trainer.export(reason=args["reason"])
    elif op == "evaluate":
        trainer.evaluate(trigger=args["trigger"])
    elif op == "park_current":
        trainer.park_current(reason=args["reason"])
    else:
        raise RuntimeError(f"unknown decision from rank 0: {op!r}")
