"""A systemd notification client (the ``sd_notify(3)`` protocol), written by hand.

Under ``Type=notify`` systemd passes the address of its notification socket in
``NOTIFY_SOCKET``: a filesystem path, or ``@name`` for Linux's abstract namespace. A
message is one datagram of ``KEY=VALUE`` lines. Without ``NOTIFY_SOCKET`` (a terminal,
docker, the tests) every call is a no-op, so callers never have to ask first.

Sending must never hurt the daemon: a failure is logged, never raised (a service
manager that went away is no reason to stop training). The libsystemd binding is not
used on purpose: the protocol is a dozen lines and the dependency would be native code.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 1.0
"""A datagram send blocks only while the receiver's queue is full: never wait longer."""


def watchdog_interval(
    environ: Mapping[str, str] | None = None, *, pid: int | None = None
) -> float | None:
    """Seconds within which systemd expects ``WATCHDOG=1`` (``WatchdogSec=``), or None.

    ``WATCHDOG_PID``, when set, names the process the watchdog is meant for; any other
    process (a child that inherited the environment) must not ping.
    """
    env = os.environ if environ is None else environ
    target = env.get("WATCHDOG_PID")
    if target and target.strip() != str(os.getpid() if pid is None else pid):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


def socket_address(value: str | None) -> bytes | None:
    """The ``sendto`` address for a ``NOTIFY_SOCKET`` value (None: unset or unusable)."""
    if not value:
        return None
    if value.startswith("@"):
        # The abstract namespace: systemd writes its leading NUL byte as "@".
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    log.warning("NOTIFY_SOCKET=%r is not a unix socket path; not notifying systemd", value)
    return None


class Notifier:
    """Sends notifications to systemd; does nothing when not run by it."""

    def __init__(self, address: str | None, *, watchdog_s: float | None = None) -> None:
        self.address = socket_address(address)
        self.watchdog_s = watchdog_s if self.address is not None else None
        """Seconds within which systemd expects a watchdog ping (None: no watchdog)."""
        self._failing = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` of this process."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"), watchdog_s=watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self.address is not None

    def notify(self, **fields: object) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; whether it was sent."""
        if self.address is None or not fields:
            return False
        # A value is one line by protocol: a newline would start a bogus assignment.
        text = "\n".join(f"{k}={' '.join(str(v).splitlines())}" for k, v in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(SEND_TIMEOUT_S)
                sock.sendto(text.encode(), self.address)
        except OSError as exc:
            # Once per run of failures: a vanished socket must not flood the log every tick.
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "could not notify systemd (%s): %s", ", ".join(fields), exc)
            self._failing = True
            return False
        if self._failing:
            log.info("notifying systemd works again")
            self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete (``READY=1``), optionally with a status line."""
        return self.notify(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        """A one-line, human-readable state for ``systemctl status``."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """Keep-alive ping (``WATCHDOG=1``); only meaningful with ``WatchdogSec=``."""
        return self.notify(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun (``STOPPING=1``), optionally with a status line."""
        return self.notify(STOPPING=1, **({"STATUS": status} if status else {}))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before systemd's current start/stop timeout fires."""
        return self.notify(EXTEND_TIMEOUT_USEC=max(0, round(seconds * 1e6)))
