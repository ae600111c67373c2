"""``traind serve`` wakes its idle or paused worker when a file is queued or a request
comes, instead of leaving it to its next look at the ledger: with ``worker.poll_s`` at
30 s, a drop starts training, and a pause and a resume are served, within seconds."""

from __future__ import annotations

import time

from conftest import traind_cli, wait_for

from tests.corpus import make_drops

POLL_S = "30"
SOON_S = 12
"""Well under POLL_S, with room for a loaded machine."""


def test_an_idle_worker_is_woken_by_a_drop_and_a_paused_one_by_a_request(tmp_path, service_factory):
    drops = make_drops(tmp_path / "drops")
    service = service_factory(TRAIND_WORKER__POLL_S=POLL_S).start()
    # The worker has looked at the empty queue and waits its 30 s poll.
    wait_for(lambda: (service.status() or {}).get("state") == "idle", timeout=30, what="idle")

    dropped = time.monotonic()
    service.drop(drops[0])
    wait_for(lambda: service.events("file_start"), timeout=SOON_S, what="the file to start")
    assert time.monotonic() - dropped < SOON_S
    service.wait_done(1)
    wait_for(lambda: (service.status() or {}).get("state") == "idle", timeout=30, what="idle")

    asked = time.monotonic()
    assert traind_cli(service, "pause").returncode == 0
    wait_for(lambda: service.events("paused"), timeout=SOON_S, what="the pause served")
    assert traind_cli(service, "resume").returncode == 0
    wait_for(lambda: service.events("resumed"), timeout=SOON_S, what="the resume served")
    assert time.monotonic() - asked < 2 * SOON_S
    assert service.terminate() == 0
