"""Starting the worker process: ``python -m service.worker`` (``__main__``) lands here.

Run by the supervisor of ``traind serve`` with ``--settings F``, F the settings in force
its main process wrote (:mod:`service.config.in_force`); by hand, ``--config F`` reads
``traind.toml`` (and ``TRAIND_*`` variables) like every traind command. The worker dies
with its parent, and exits 2 on settings a person must fix.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
from pathlib import Path

from service.config.in_force import read_in_force
from service.config.settings import SettingsError, load_settings
from service.signals import EXIT_BAD_SETTINGS, StopFlag, Wakeup
from service.worker.opening import open_trainer
from service.worker.process import Worker
from service.worker.revisions import SettingsRevisions
from trainer.distributed import leave_group, rank_from_env
from trainer.follower import follow

log = logging.getLogger(__name__)


def die_with_parent() -> None:
    """Ask Linux to SIGTERM us if the supervisor dies, so no worker outlives its service."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the lineage lock still keeps a second worker out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.worker", description="The traind training worker."
    )
    parser.add_argument("--config", type=Path, default=None, help="traind.toml (or $TRAIND_CONFIG)")
    parser.add_argument(
        "--settings",
        type=Path,
        default=None,
        help="the settings in force traind serve wrote (instead of --config)",
    )
    parser.add_argument("--log-level", default=os.environ.get("TRAIND_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s worker: %(message)s",
        datefmt="%H:%M:%S",
    )
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        return 1
    stop = StopFlag()
    stop.install()
    wakeup = Wakeup()
    wakeup.install()  # before the first heartbeat: traind serve wakes only a worker that beat
    try:
        found = read_in_force(args.settings) if args.settings else None
        settings = found.settings if found else load_settings(args.config)
    except SettingsError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return EXIT_BAD_SETTINGS
    if rank_from_env() != 0:
        # A torchrun rank other than 0: rank 0 alone reads the ledger and decides.
        try:
            return follow(lambda: open_trainer(settings))
        finally:
            leave_group()
    revisions = None
    if found is not None:
        log.info("settings revision %d of %s", found.revision, args.settings)
        revisions = SettingsRevisions(args.settings, held=found.revision)
    try:
        return Worker(settings, stop=stop, revisions=revisions, wakeup=wakeup).run()
    finally:
        leave_group()
