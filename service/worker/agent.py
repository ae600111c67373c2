"""torchrun's agent as traind runs, stops and kills it. ``python -m service.worker.agent
TORCHRUN-OPTIONS... -m MODULE ARG...`` is torch's own launcher (``torch.distributed.run``,
what the ``torchrun`` script runs; :mod:`service.worker.torchrun` builds the options),
with three things traind needs:

* **It dies with its parent.** The worker asks Linux to SIGTERM it when its parent dies
  (:func:`service.signals.die_with_parent`); so does this agent, before it starts
  torch's launcher. It then stops its processes as on any SIGTERM when the supervisor of
  ``traind serve`` (or ``traind train``, ``traind node``) dies; and each rank, whose
  parent is the agent, dies with the agent.
* **Its exit status is the first failed process's.** torch's launcher exits 1 whatever
  its processes did; this one exits with the status of the process that failed first
  (128 + N if signal N killed it), so a rank's 2 ("a person must act": the supervisor
  does not restart it) or ``traind train``'s 1 and 75 reach whoever started the group;
  and with 128 + N, without a traceback, when signal N stopped it.
* **Stopped once, killed whole.** torch's launcher stops its processes at the first
  SIGTERM or SIGINT and gives up waiting for them at the next one, so the agent runs in
  a session of its own, away from a terminal's Ctrl-C, and only traind signals it, once
  (:func:`run_in_foreground` for the commands a person runs). torch starts each rank in
  a session of its own, so a process-group kill misses them: :func:`kill_tree` kills the
  agent and every process below it.

Only :func:`main` imports torch: the main process and the command line use the rest.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from service.signals import die_with_parent

MODULE = "service.worker.agent"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""The signals :func:`run_in_foreground` passes on (the first of them only)."""


def agent_command(torchrun_args: Sequence[str]) -> list[str]:
    """The command line of an agent with these ``torchrun`` options and target."""
    return [sys.executable, "-m", MODULE, *torchrun_args]


def run_in_foreground(argv: Sequence[str], *, env: Mapping[str, str]) -> int:
    """Run an agent to its end and return its exit status: 128 + N when our signal N
    (passed on once: the agent asks its processes to checkpoint and stop) stopped it, or
    when signal N killed it."""
    proc = subprocess.Popen(list(argv), env={**os.environ, **env}, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if not received:
            received.append(signum)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    try:
        code = proc.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if code < 0:
        return 128 - code
    if received and code != 0:
        return 128 + received[0]
    return code


def descendants(pid: int, *, proc: Path = Path("/proc")) -> list[int]:
    """The processes below ``pid``, nearest first (none where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for entry in proc.glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it ended while we looked
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        below = children.get(todo.pop(0), [])
        found += below
        todo += below
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it, all found before the first one dies
    (a rank whose agent is gone is no longer below it)."""
    for each in [*descendants(pid), pid]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(each, signal.SIGKILL)


def exit_status(exitcode: int) -> int:
    """A process's status as a shell gives it: 128 + N for one killed by signal N."""
    return 128 - exitcode if exitcode < 0 else exitcode


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.stderr.write(f"usage: python -m {MODULE} TORCHRUN-OPTIONS... -m MODULE [ARG...]\n")
        return 2
    parent = os.getppid()
    die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        return 1
    # Imported here, after the tether: torch takes a while to import.
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        torchrun.main(args)
    except ChildFailedError as exc:
        _rank, failure = exc.get_first_failure()
        # torch's table, which its launcher prints when it exits: each failed rank,
        # its status and its error.
        sys.stderr.write(f"{exc}\n")
        return max(1, exit_status(failure.exitcode))
    except SignalException as exc:
        # Its processes were told to stop (and had worker.stop_grace_s to checkpoint).
        return 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
