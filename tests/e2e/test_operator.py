"""An operator drives a real ``traind serve`` with the ``traind`` command line: enqueue,
pause (visible in status within a second), cancel the paused file (what it learned is
kept), go on at the same step without reloading the model, and the SSE stream shows it
all in order."""

import json
import time

import httpx
from conftest import traind_cli as traind
from conftest import wait_for

from tests.corpus import make_drops


def test_operator_session(tmp_path, service_factory):
    drops = make_drops(tmp_path / "drops")
    big = tmp_path / "big.jsonl"
    big.write_text(drops[0].read_text() * 8)
    service = service_factory(TRAIND_TRAIN__EPOCHS_PER_FILE="4").start()
    token = (service.root / "state" / "api-token").read_text().strip()

    # Mutating routes need the token; the CLI finds it in the state folder by itself.
    refused = httpx.post(service.url + "/v1/pause", timeout=5)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    enqueued = traind(service, "enqueue", str(big), "--json")
    assert enqueued.returncode == 0, enqueued.stderr
    assert json.loads(enqueued.stdout.splitlines()[0])["name"].startswith("upload-")
    wait_for(lambda: (service.status() or {}).get("global_step", 0) >= 3, timeout=30, what="steps")

    paused = traind(service, "pause")
    asked = time.monotonic()
    assert paused.returncode == 0, paused.stderr
    wait_for(lambda: service.status()["state"] == "paused", timeout=1.0, what="paused in status")
    assert time.monotonic() - asked < 1.0
    status = wait_for(
        lambda: (s := service.status())["worker"]["state"] == "paused" and s,
        timeout=10,
        what="worker paused",
    )
    step = status["global_step"]
    time.sleep(0.5)
    assert json.loads(traind(service, "status", "--json").stdout)["global_step"] == step

    # Cancelled while paused: the worker is at a step boundary, so it acts at once.
    record = json.loads(traind(service, "queue", "--json").stdout)["items"][0]
    cancelled = traind(service, "cancel", str(record["id"]))
    assert cancelled.returncode == 0, cancelled.stderr
    final = wait_for(
        lambda: (
            (f := httpx.get(f"{service.url}/v1/files/{record['id']}", timeout=5).json())["state"]
            == "cancelled"
            and f
        ),
        timeout=20,
        what="the cancel",
    )
    assert final["end_step"] == step and "were trained and are kept" in final["error"]

    # Resume, and the next file starts at that very step on the resident model.
    assert traind(service, "resume").returncode == 0
    assert traind(service, "enqueue", str(drops[1])).returncode == 0
    (done,) = service.wait_done(1)
    assert done.start_step == step
    assert len(service.events("training_start")) == 1  # never reloaded

    # The event stream, read from the start, tells the same story in order.
    seen = []
    with httpx.stream(
        "GET", service.url + "/v1/events", headers={"Last-Event-ID": "0"}, timeout=10
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                seen.append(line.removeprefix("event: "))
            if "file_cancelled" in seen:
                break
    order = [e for e in seen if e in ("file_queued", "file_start", "paused", "file_cancelled")]
    assert order == ["file_queued", "file_start", "paused", "file_cancelled"]
    assert (
        httpx.post(
            service.url + "/v1/checkpoints", headers={"Authorization": f"Bearer {token}"}, timeout=5
        ).status_code
        == 202
    )
    assert service.terminate() == 0
