"""What systemd hears from ``traind serve``: READY, STATUS, and a watchdog that means it.

One thread of the main process, started only when ``NOTIFY_SOCKET`` is set, reads the
worker's heartbeat from the ledger every tick and tells systemd (through
:mod:`service.daemon.notify`):

* ``READY=1`` once the API listens *and* the worker has loaded the model: a unit that
  others order ``After=`` must not count as started while it cannot train.
* ``STATUS=`` a one-line summary (state, global step, current file) for
  ``systemctl status``, refreshed every few seconds.
* ``WATCHDOG=1`` only while the heartbeat shows progress (see :class:`ProgressJudge`).
  A thread pinging on a timer would keep a unit "healthy" whose worker is deadlocked
  (a stuck collective, a hung driver call, a SIGSTOP), which is the very failure
  ``WatchdogSec=`` exists to catch. The worker writes its heartbeat only from its own
  main loop (the step hook, the idle and paused loops of :mod:`service.worker.process`; never
  from a helper thread), so a new heartbeat means that loop turned. The API's event loop
  must also be turning (uvicorn ticks every 0.1 s), or the unit is not healthy either.
* ``STOPPING=1`` and ``EXTEND_TIMEOUT_USEC`` on shutdown, covering the worker's stop
  grace: its final checkpoint must not be cut short by ``TimeoutStopSec=``.

``WatchdogSec=`` must exceed the longest stretch without a heartbeat: one optimizer step
plus whatever runs between two steps (an evaluation, a checkpoint write, an export), and
the tokenizing of a new drop (once per content). The worker does not beat during those,
on purpose: only its loop coming round again proves it is not stuck in them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.config.settings import Settings
from service.daemon.notify import Notifier
from service.daemon.status import read_status
from service.daemon.supervisor import Supervisor
from service.ledger import Ledger, WorkerState, WorkerStatus

log = logging.getLogger(__name__)

MODEL_LOAD_ALLOWANCE_S = 300.0
"""How long a started worker may take to load its model before the watchdog gives up."""
STATUS_EVERY_S = 2.0
"""How often the STATUS line is recomputed (it is sent only when it changed)."""
STOP_MARGIN_S = 15.0
"""Stop time beyond the worker's grace: killing it, joining threads, closing the ledger."""
MAX_TICK_S = 1.0
"""The thread looks at the heartbeat at least this often."""

# A worker in one of these states is not (yet, or any more) training: it is loading its
# model, or leaving. (An ERROR worker that still reports, e.g. one waiting for disk space,
# is judged like an idle one: alive while its heartbeats keep coming.)
_TRANSIENT = (WorkerState.STARTING, WorkerState.STOPPING)


@dataclass(frozen=True, kw_only=True)
class NotifyTiming:
    """The intervals of the notification thread, derived from the settings."""

    watchdog_s: float | None
    """systemd's ``WatchdogSec=`` (None: no watchdog)."""
    tick_s: float
    """Seconds between looks at the heartbeat."""
    fresh_s: float
    """An idle or paused worker's heartbeat older than this is stale."""
    start_window_s: float
    """How long a worker may be (re)starting and loading its model and still count as alive."""
    stop_extend_s: float
    """What ``EXTEND_TIMEOUT_USEC`` asks for on shutdown."""
    api_stale_s: float
    """The API's event loop must have ticked this recently for a watchdog ping."""

    @classmethod
    def from_settings(cls, settings: Settings, *, watchdog_s: float | None) -> NotifyTiming:
        """Timing for these settings under a watchdog of ``watchdog_s`` seconds."""
        worker = settings.worker
        # A quarter of the watchdog interval: a ping waits at most one tick after the
        # progress that justifies it, which leaves room for slow steps (see the judge).
        tick = min(MAX_TICK_S, watchdog_s / 4) if watchdog_s else MAX_TICK_S
        # An idle worker beats every heartbeat_s, a paused one every poll_s; three missed
        # beats (plus the tick that observes them) is silence, not jitter.
        cadence = max(worker.heartbeat_s, worker.poll_s)
        return cls(
            watchdog_s=watchdog_s,
            tick_s=tick,
            fresh_s=3 * cadence + tick,
            # A restart waits out the back-off, then the new worker may wait for the old
            # one's lineage lock (up to stop_grace_s) before it loads the model.
            start_window_s=worker.restart_backoff_max_s
            + worker.stop_grace_s
            + MODEL_LOAD_ALLOWANCE_S,
            stop_extend_s=worker.stop_grace_s + STOP_MARGIN_S,
            api_stale_s=max(1.0, watchdog_s / 2) if watchdog_s else 1.0,
        )


@dataclass(frozen=True, kw_only=True)
class Verdict:
    """Whether the worker may be vouched for now, and why (for the log and STATUS)."""

    alive: bool
    reason: str


class ProgressJudge:
    """Decides, from successive heartbeats, whether the worker is getting anywhere.

    Progress is measured against the heartbeat the last ping vouched for:

    * training: the global step changed (or a new worker process took over). No age
      limit here: a slow step is still progress, and its heartbeat is at most one step
      old when the next ping falls due.
    * idle or paused (deliberately not training): a *new* heartbeat, seen within
      ``fresh_s``. Those loops beat every ``heartbeat_s``/``poll_s``, so silence means
      the loop is stuck (a frozen worker keeps its last heartbeat, which never changes).
    * (re)starting: no heartbeat from the live worker process yet, a worker that is
      loading its model, leaving, or failed. That is not progress, but it is the
      supervisor doing its job (restart back-off, model load), so pings go on for up to
      ``start_window_s``; a worker that takes longer is stuck, and systemd may step in.
    """

    def __init__(self, *, fresh_s: float, start_window_s: float) -> None:
        self.fresh_s = fresh_s
        self.start_window_s = start_window_s
        self._seen: tuple[str, object] | None = None
        self._seen_at = 0.0
        self._latest: WorkerStatus | None = None
        self._vouched: WorkerStatus | None = None
        self._waiting_since: float | None = None

    def assess(self, beat: WorkerStatus | None, *, worker_pid: int | None, now: float) -> Verdict:
        """Judge the latest heartbeat at monotonic time ``now``.

        ``worker_pid`` is the supervisor's live worker process (None between workers): a
        heartbeat from any other process is history, not a sign of life.
        """
        if beat is not None and (beat.worker_id, beat.heartbeat_at) != self._seen:
            # Ages are measured on this process's monotonic clock from when a heartbeat
            # was first seen, so a wall-clock step cannot make a stale one look fresh.
            self._seen = (beat.worker_id, beat.heartbeat_at)
            self._seen_at = now
        self._latest = beat
        if beat is None or worker_pid is None:
            return self._waiting("no worker is running; the supervisor is starting one", now)
        if beat.pid != worker_pid:
            return self._waiting(f"worker pid {worker_pid} has not reported yet", now)
        if beat.state in _TRANSIENT or not beat.model_loaded:
            return self._waiting(f"the worker is {beat.state}", now)
        self._waiting_since = None
        last = self._vouched
        if beat.state is WorkerState.TRAINING:
            if last is None or last.worker_id != beat.worker_id:
                return Verdict(alive=True, reason=f"training at step {beat.global_step}")
            # Changed, not grown: a rollback after bad steps (rule 6) moves the step back.
            if beat.global_step != last.global_step:
                return Verdict(alive=True, reason=f"training at step {beat.global_step}")
            return Verdict(
                alive=False,
                reason=f"training, but still at step {beat.global_step} since the last ping",
            )
        age = now - self._seen_at
        new = last is None or (last.worker_id, last.heartbeat_at) != self._seen
        if new and age <= self.fresh_s:
            return Verdict(alive=True, reason=f"{beat.state} at step {beat.global_step}")
        return Verdict(
            alive=False,
            reason=f"the {beat.state} worker has not reported for {age:.1f}s",
        )

    def vouched(self) -> None:
        """A ping went out on the strength of the heartbeat last assessed."""
        self._vouched = self._latest

    def _waiting(self, why: str, now: float) -> Verdict:
        if self._waiting_since is None:
            self._waiting_since = now
        waited = now - self._waiting_since
        if waited <= self.start_window_s:
            return Verdict(alive=True, reason=f"{why} ({waited:.0f}s)")
        return Verdict(
            alive=False, reason=f"{why}, for {waited:.0f}s (over {self.start_window_s:.0f}s)"
        )


def status_line(status: Mapping[str, Any], *, note: str | None = None) -> str:
    """One line for ``systemctl status`` from a ``read_status`` dictionary."""
    state = status.get("state")
    step = status.get("global_step")
    at = f"step {step}" if step is not None else "no step yet"
    current = status.get("current_file") or {}
    name = current.get("name") or (f"file #{current['id']}" if current.get("id") else None)
    progress = current.get("progress")
    share = f" ({progress:.0%})" if progress is not None else ""
    where = f" of {name}{share}" if name else ""
    if state == "training":
        text = f"training at {at}{where}"
    elif state == "paused":
        text = f"paused at {at}{where}"
    elif state == "stopping":
        text = f"stopping at {at}: the worker writes its final checkpoint"
    elif state == "error":
        text = f"error at {at}: {status.get('error') or 'the worker failed; it is being restarted'}"
    else:
        text = f"idle at {at}"
    text += f"; {(status.get('queue') or {}).get('queued', 0)} queued"
    return f"{text}; {note}" if note else text


class Readiness:
    """The thread that keeps systemd informed; a no-op without ``NOTIFY_SOCKET``."""

    def __init__(
        self,
        settings: Settings,
        *,
        ledger: Ledger,
        supervisor: Supervisor | None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.supervisor = supervisor
        self.notifier = notifier or Notifier.from_environ()
        self.timing = NotifyTiming.from_settings(settings, watchdog_s=self.notifier.watchdog_s)
        self.judge = ProgressJudge(
            fresh_s=self.timing.fresh_s, start_window_s=self.timing.start_window_s
        )
        self.ready = False
        self._listening = False
        self._stopping = False
        self._api_tick = 0.0
        self._before: str | None = None
        self._last_ping = 0.0
        self._warned = False
        self._next_status = 0.0
        self._status_sent: str | None = None
        self._failing = False
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching; call before the supervisor starts the worker."""
        if not self.notifier.enabled:
            return
        # The newest heartbeat now is a previous run's worker: never take it for this
        # run's (pids repeat across container restarts).
        try:
            beat = self._read_beat()
        except Exception:
            log.warning("could not read the last worker heartbeat", exc_info=True)
            beat = None
        self._before = beat.worker_id if beat else None
        if self.timing.watchdog_s is not None:
            log.info(
                "systemd watchdog: %.1fs; pinged while the worker makes progress",
                self.timing.watchdog_s,
            )
            if self.timing.watchdog_s < 2 * self.settings.worker.heartbeat_s:
                log.warning(
                    "WatchdogSec (%.1fs) is under twice worker.heartbeat_s (%.1fs): "
                    "systemd may kill a healthy service",
                    self.timing.watchdog_s,
                    self.settings.worker.heartbeat_s,
                )
        self._thread = threading.Thread(target=self._run, name="traind-notify", daemon=True)
        self._thread.start()

    def listening(self) -> None:
        """The API accepts connections (uvicorn's startup finished)."""
        self._api_tick = time.monotonic()
        self._listening = True

    def api_tick(self) -> None:
        """The API's event loop turned (called from uvicorn's ``on_tick``)."""
        self._api_tick = time.monotonic()

    def stopping(self) -> None:
        """Shutdown began: STOPPING=1 (once), and time for the worker's final checkpoint.

        Called again when the worker is asked to stop, so that the extension counts from
        then (the API may have spent a while closing connections first).
        """
        if not self.notifier.enabled:
            return
        if not self._stopping:
            self._stopping = True
            grace = self.settings.worker.stop_grace_s
            self.notifier.stopping(f"stopping: the worker checkpoints (up to {grace:.0f}s)")
        self.notifier.extend_timeout(self.timing.stop_extend_s)

    def close(self) -> None:
        """Stop the thread (before the ledger closes)."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._closed.wait(self.timing.tick_s):
            try:
                self.tick(time.monotonic())
            except Exception:  # the notifier must never take the daemon down
                # No ping this tick (nothing vouched for); log a run of failures once.
                log.log(
                    logging.DEBUG if self._failing else logging.WARNING,
                    "reading the worker's heartbeat for systemd failed; will retry",
                    exc_info=True,
                )
                self._failing = True
            else:
                self._failing = False

    def tick(self, now: float) -> None:
        """One look at the heartbeat: READY, WATCHDOG and STATUS as due."""
        beat = self._read_beat()
        if beat is not None and beat.worker_id == self._before:
            beat = None
        pid = self._worker_pid()
        verdict = self.judge.assess(beat, worker_pid=pid, now=now)
        space = self.supervisor.status().space if self.supervisor else ()
        if space and not verdict.alive:
            # A full disk stops the heartbeat too (the ledger cannot be written): waiting for
            # space is what the service should do, and a restart would not help.
            verdict = Verdict(alive=True, reason=f"waiting for disk space ({space[0]})")
        if not self.ready and self._listening and not self._stopping and self._loaded(beat, pid):
            self.ready = True
            self._last_ping = now  # systemd arms the watchdog at READY
            self._next_status = now  # show the real state at once
            self.notifier.ready()
            log.info("told systemd the service is ready")
        self._watchdog(verdict, now)
        if now >= self._next_status:
            self._next_status = now + STATUS_EVERY_S
            self._send_status(verdict)

    def _watchdog(self, verdict: Verdict, now: float) -> None:
        watchdog_s = self.timing.watchdog_s
        if watchdog_s is None or not self.ready or self._stopping or self.supervisor is None:
            # Before READY systemd has not armed it; while stopping it has disarmed it;
            # without a worker there is no progress to vouch for.
            return
        if now - self._last_ping < watchdog_s / 2:
            return
        api_ok = now - self._api_tick <= self.timing.api_stale_s
        if verdict.alive and api_ok:
            self.notifier.watchdog()
            self.judge.vouched()
            self._last_ping = now
            self._warned = False
        elif not self._warned and now - self._last_ping >= 0.75 * watchdog_s:
            # Say why before systemd acts, so the journal explains the restart.
            self._warned = True
            why = verdict.reason if not verdict.alive else "the API's event loop is stuck"
            log.warning("withholding the systemd watchdog ping: %s", why)

    def _send_status(self, verdict: Verdict) -> None:
        if self._stopping:
            return  # stopping() said it; the worker no longer reports progress worth showing
        if not self.ready:
            text = (
                "starting: the worker loads the model"
                if self._listening
                else "starting: the API is not listening yet"
            )
        else:
            status = read_status(
                self.ledger,
                heartbeat_s=self.settings.worker.heartbeat_s,
                supervisor=self.supervisor.status() if self.supervisor else None,
                hang_timeout_s=self.settings.worker.hang_timeout_s,
            )
            watched = self.timing.watchdog_s is not None
            note = f"watchdog: {verdict.reason}" if watched and not verdict.alive else None
            text = status_line(status, note=note)
        if text != self._status_sent:
            self._status_sent = text
            self.notifier.status(text)

    def _read_beat(self) -> WorkerStatus | None:
        return self.ledger.worker_status()

    def _worker_pid(self) -> int | None:
        return self.supervisor.status().pid if self.supervisor else None

    def _loaded(self, beat: WorkerStatus | None, pid: int | None) -> bool:
        if self.supervisor is None:
            return True  # an API-only daemon (tests): nothing to wait for
        return beat is not None and beat.pid == pid and beat.model_loaded
