"""The REST routes through a real uvicorn server: happy paths, 404/409/422, OpenAPI."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from service.ledger import DesiredState, FileState, WorkerState
from tests.api.conftest import INVALID, VALID, LiveApi, wait_for


def emit(api: LiveApi, **event: object) -> None:
    """Append one event the way trainer.events does (the API only reads the log)."""
    path = api.settings.run_paths().events
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"timestamp": "2026-01-01T00:00:00.000Z", **event}) + "\n")


def two_files(api: LiveApi) -> tuple[int, int]:
    """A queued file and a rejected one; their ids."""
    api.drop("good.jsonl", VALID)
    api.wait_recorded(1)
    api.drop("bad.jsonl", INVALID)
    good, bad = api.wait_recorded(2)
    assert (good.state, bad.state) == (FileState.QUEUED, FileState.REJECTED)
    return good.id, bad.id


# Probes ----------------------------------------------------------------------------


def test_livez(api: LiveApi) -> None:
    response = api.get("/livez")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_is_503_without_a_worker_and_200_with_a_fresh_loaded_one(api: LiveApi) -> None:
    response = api.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not ready"
    assert body["checks"]["worker"] == {"ok": False, "detail": "no worker has reported yet"}
    assert all(body["checks"][name]["ok"] for name in ("ledger", "schema", "inbox_watcher"))

    api.heartbeat(model_loaded=False, state=WorkerState.STARTING)
    response = api.get("/readyz")
    assert response.status_code == 503
    assert "has not loaded the model" in response.json()["checks"]["worker"]["detail"]

    api.heartbeat(model_loaded=True)
    response = api.get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "ready"


def test_readyz_is_503_when_the_heartbeat_is_stale(api_factory) -> None:
    api = api_factory(worker={"heartbeat_s": 0.02})  # stale after 10 beats: 0.2 s
    api.heartbeat()
    time.sleep(0.3)
    response = api.get("/readyz")
    assert response.status_code == 503
    assert "last heartbeat was" in response.json()["checks"]["worker"]["detail"]


def test_readyz_never_shows_the_sql_of_a_failing_ledger(
    api: LiveApi, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    statement = "SELECT files.state, count(*) AS n FROM files GROUP BY files.state"

    def database_down(*args: object) -> None:
        raise OperationalError(statement, {"token": "s3cret"}, sqlite3.OperationalError("locked"))

    def watcher_broken() -> None:
        raise RuntimeError("/srv/traind/inbox: internal detail")

    monkeypatch.setattr(api.ledger, "counts_by_state", database_down)
    monkeypatch.setattr(api.ledger, "worker_status", database_down)
    monkeypatch.setattr(api.daemon.watcher, "health", watcher_broken)
    with caplog.at_level(logging.WARNING, logger="api.web.routes"):
        response = api.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["ledger"] == {
        "ok": False,
        "detail": "the ledger database did not answer (OperationalError); see the service log",
    }
    assert checks["worker"] == checks["ledger"]
    assert checks["inbox_watcher"] == {
        "ok": False,
        "detail": "the check failed (RuntimeError); see the service log",
    }
    for secret in ("SELECT", "GROUP BY", "s3cret", "locked", "/srv/traind", "internal detail"):
        assert secret not in response.text
    # The operator still gets the whole error, in the log.
    assert statement in caplog.text and "internal detail" in caplog.text


# Status ----------------------------------------------------------------------------


def test_status_of_an_idle_service(api: LiveApi) -> None:
    body = api.get("/v1/status").json()
    assert body["state"] == "idle"
    assert body["desired_state"] == "running"
    assert body["queue"] == dict.fromkeys([s.value for s in FileState], 0)
    assert body["eta_queue_s"] == 0.0
    assert body["last_eval"] is None
    assert body["gold"] is None and body["export"] is None
    assert body["worker"]["model_loaded"] is False


def test_status_estimates_the_queue_eta_from_the_rate_and_sizes(api: LiveApi) -> None:
    good, _ = two_files(api)
    size = api.ledger.get_file(good).size
    assert api.get("/v1/status").json()["eta_queue_s"] is None  # no rate known yet

    api.heartbeat(tokens_per_s=100.0)
    body = api.get("/v1/status").json()
    assert body["eta_queue_s"] == pytest.approx(size / 100.0, abs=0.1)
    assert body["queue"]["queued"] == 1
    assert body["queue"]["rejected"] == 1


def test_status_shows_the_training_file_and_its_eta(api: LiveApi) -> None:
    good, _ = two_files(api)
    api.train(good)
    api.heartbeat(
        state=WorkerState.TRAINING,
        file_id=good,
        global_step=15,
        start_step=10,
        target_step=20,
        tokens_per_s=50.0,
        eta_s=12.0,
    )
    body = api.get("/v1/status").json()
    assert body["state"] == "training"
    assert body["current_file"] == {
        "id": good,
        "name": "good.jsonl",
        "start_step": 10,
        "target_step": 20,
        "progress": 0.5,
    }
    assert body["eta_queue_s"] == 12.0  # nothing else is queued

    # Paused, the last rate and ETA would promise progress that is not being made.
    api.post("/v1/pause")
    api.heartbeat(
        state=WorkerState.PAUSED, file_id=good, global_step=15, tokens_per_s=50.0, eta_s=12.0
    )
    body = api.get("/v1/status").json()
    assert body["state"] == "paused"
    assert (body["tokens_per_s"], body["eta_s"], body["eta_queue_s"]) == (None, None, None)


def test_status_shows_the_memory_the_worker_measured(api: LiveApi) -> None:
    assert api.get("/v1/status").json()["memory"] is None  # no worker yet
    measured = {
        "host_rss_bytes": 512_000_000,
        "device_allocated_bytes": None,  # a CPU worker
        "device_reserved_bytes": None,
        "device_peak_bytes": None,
        "estimate_bytes": 64_000_000,
    }
    api.heartbeat(global_step=3, extra={"memory": {**measured, "unknown": 1}})
    assert api.get("/v1/status").json()["memory"] == measured
    api.heartbeat(global_step=4, extra={"memory": "not an object"})  # an older worker's
    assert api.get("/v1/status").json()["memory"] is None


def test_status_and_gold_read_the_event_log_and_the_gold_folder(api: LiveApi) -> None:
    emit(api, event="eval", step=8, val_loss=2.5, sets={"arith": 2.25})
    emit(api, event="gold_checkpoint", step=8, val_loss=2.5)
    emit(api, event="checkpoint_saved", step=8)
    emit(api, event="gold_blocked", step=12, val_loss=2.7, reason="validation loss rose")
    samples = [{"prompt": "Q: 2+2?", "completion": " 4"}, {"prompt": "bad"}]  # one malformed
    emit(api, event="eval", step=12, val_loss=2.7, samples=samples)
    gold = api.settings.paths.checkpoints / "gold"
    gold.mkdir(parents=True)
    (gold / "training_state.json").write_text(json.dumps({"global_step": 8}))

    emit(api, event="eval", step=20, val_loss=9.9, trigger="checkpoint")  # not the lineage's
    body = api.get("/v1/status").json()
    assert body["last_eval"] == {
        "step": 12,
        "val_loss": 2.7,
        "timestamp": "2026-01-01T00:00:00.000Z",
        "sets": {},
        "samples": [{"prompt": "Q: 2+2?", "completion": " 4"}],
    }
    assert body["gold"] == {"step": 8, "val_loss": 2.5}

    response = api.get("/v1/gold")
    assert response.status_code == 200
    body = response.json()
    assert body["gold"] == {"step": 8, "val_loss": 2.5}
    assert [(d["id"], d["event"], d["step"]) for d in body["history"]] == [
        (2, "gold_checkpoint", 8),
        (4, "gold_blocked", 12),
    ]
    assert body["history"][1]["reason"] == "validation loss rose"

    emit(api, event="gold_checkpoint", step=16, val_loss=2.0, extra="kept")
    history = api.get("/v1/gold").json()["history"]
    assert history[-1]["details"] == {"extra": "kept"}  # the log is read incrementally


def test_gold_is_empty_before_any_decision(api: LiveApi) -> None:
    assert api.get("/v1/gold").json() == {"gold": None, "history": []}


# Queue and files -------------------------------------------------------------------


def test_queue_lists_files_by_arrival_with_filters_and_paging(api: LiveApi) -> None:
    good, bad = two_files(api)
    body = api.get("/v1/queue").json()
    assert (body["total"], body["limit"], body["offset"]) == (2, 100, 0)
    assert [item["id"] for item in body["items"]] == [good, bad]
    item = body["items"][1]
    for key in ("id", "name", "state", "error", "start_step", "target_step", "end_step"):
        assert key in item
    assert item["state"] == "rejected" and "invalid line" in item["error"]

    queued = api.get("/v1/queue", params={"state": "queued"}).json()
    assert [i["id"] for i in queued["items"]] == [good] and queued["total"] == 1
    both = api.get("/v1/queue", params=[("state", "queued"), ("state", "rejected")]).json()
    assert both["total"] == 2
    page = api.get("/v1/queue", params={"limit": 1, "offset": 1}).json()
    assert [i["id"] for i in page["items"]] == [bad]
    assert (page["total"], page["limit"], page["offset"]) == (2, 1, 1)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"state": "bogus"}, "state"),
        ({"state": ""}, "state"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": 10**30}, "offset"),
    ],
)
def test_queue_refuses_bad_parameters_with_422(api: LiveApi, params: dict, named: str) -> None:
    response = api.get("/v1/queue", params=params)
    assert response.status_code == 422
    assert list(response.json()) == ["detail"]
    assert f"query parameter {named!r}" in response.json()["detail"]


def test_a_file_with_its_rejection_reasons_and_bad_lines(api: LiveApi) -> None:
    _, bad = two_files(api)
    body = api.get(f"/v1/files/{bad}").json()
    assert body["state"] == "rejected"
    assert body["name"] == "bad.jsonl"
    assert body["n_invalid"] == 1
    assert body["invalid_lines"][0]["line"] == 2
    assert body["invalid_lines"][0]["reason"]
    assert body["cancel_requested_at"] is None


@pytest.mark.parametrize(("file_id", "code"), [(999, 404), (0, 422), ("abc", 422), (2**64, 422)])
def test_a_missing_or_malformed_file_id(api: LiveApi, file_id: object, code: int) -> None:
    response = api.get(f"/v1/files/{file_id}")
    assert response.status_code == code
    if code == 404:
        assert response.json() == {"detail": "no file #999; GET /v1/queue lists the files"}


# Cancel and retry ------------------------------------------------------------------


def test_cancel_a_queued_file_then_retry_it(api: LiveApi) -> None:
    good, _ = two_files(api)
    response = api.post(f"/v1/files/{good}/cancel")
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    again = api.post(f"/v1/files/{good}/cancel")
    assert again.status_code == 409
    assert again.json() == {"detail": f"file #{good} is already cancelled"}

    response = api.post(f"/v1/files/{good}/retry")
    assert response.status_code == 200
    assert response.json()["state"] == "queued"
    assert response.json()["requeued_as"] is None
    again = api.post(f"/v1/files/{good}/retry")
    assert again.status_code == 409
    assert "already queued" in again.json()["detail"]


def test_cancel_of_the_training_file_is_accepted_for_the_worker(api: LiveApi) -> None:
    good, _ = two_files(api)
    api.train(good)
    response = api.post(f"/v1/files/{good}/cancel")
    assert response.status_code == 202
    body = response.json()
    assert body["state"] == "training"
    assert body["cancel_requested_at"] is not None
    assert api.ledger.get_file(good).cancel_requested_at is not None
    assert api.post(f"/v1/files/{good}/cancel").status_code == 202  # asking twice is fine


def test_cancel_and_retry_refuse_what_the_state_forbids(api: LiveApi) -> None:
    good, bad = two_files(api)
    response = api.post(f"/v1/files/{bad}/cancel")
    assert response.status_code == 409
    assert "only queued files can be cancelled" in response.json()["detail"]
    api.train(good)
    response = api.post(f"/v1/files/{good}/retry")
    assert response.status_code == 409
    assert response.json() == {"detail": f"file #{good} is already training"}


@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_cancel_and_retry_of_a_missing_file_is_404(api: LiveApi, action: str) -> None:
    response = api.post(f"/v1/files/42/{action}")
    assert response.status_code == 404
    assert response.json()["detail"].startswith("no file #42")


def test_retry_of_a_rejected_file_puts_it_back_for_the_watcher(api: LiveApi) -> None:
    _, bad = two_files(api)
    rejected_path = Path(api.ledger.get_file(bad).path)
    response = api.post(f"/v1/files/{bad}/retry")
    assert response.status_code == 202
    body = response.json()
    assert body["id"] == bad and body["state"] == "rejected"
    assert body["requeued_as"] == "bad.jsonl"  # its own name was free
    assert not rejected_path.exists()

    records = api.wait_recorded(3)  # checked again: a new record, rejected again
    again = records[-1]
    assert (again.name, again.state) == ("bad.jsonl", FileState.REJECTED)
    assert again.error == api.ledger.get_file(bad).error
    assert Path(again.path).parent == api.inbox / "rejected"

    response = api.post(f"/v1/files/{bad}/retry")  # the old record's file is gone now
    assert response.status_code == 409
    assert "no longer at" in response.json()["detail"]


def test_retry_of_a_rejected_file_whose_name_is_taken_gets_a_fresh_name(api: LiveApi) -> None:
    _, bad = two_files(api)
    (api.inbox / "bad.jsonl").mkdir()  # the watcher leaves folders alone
    response = api.post(f"/v1/files/{bad}/retry")
    assert response.status_code == 202
    name = response.json()["requeued_as"]
    assert name.startswith("upload-") and name.endswith("--bad.jsonl")
    again = api.wait_recorded(3)[-1]
    assert (again.name, again.state) == (name, FileState.REJECTED)


# Control and checkpoints -----------------------------------------------------------


def test_eval_request_is_a_time_in_the_control_row(api: LiveApi) -> None:
    response = api.post("/v1/eval")
    assert response.status_code == 202
    asked = api.ledger.get_control().eval_requested_at
    assert asked is not None and response.json()["eval_requested_at"] is not None


def test_pause_and_resume_change_the_control_row(api: LiveApi) -> None:
    response = api.post("/v1/pause")
    assert response.status_code == 202
    assert response.json()["desired_state"] == "paused"
    assert api.ledger.get_control().desired_state is DesiredState.PAUSED
    assert api.get("/v1/status").json()["state"] == "paused"

    response = api.post("/v1/resume")
    assert response.status_code == 202
    assert response.json()["desired_state"] == "running"
    assert api.ledger.get_control().desired_state is DesiredState.RUNNING
    assert api.get("/v1/status").json()["state"] == "idle"


def test_a_checkpoint_request_is_recorded_for_the_worker(api: LiveApi) -> None:
    assert api.ledger.get_control().checkpoint_requested_at is None
    response = api.post("/v1/checkpoints")
    assert response.status_code == 202
    assert response.json()["checkpoint_requested_at"] is not None
    assert api.ledger.get_control().checkpoint_requested_at is not None
    assert api.post("/v1/pause").json()["checkpoint_requested_at"] is not None


def test_checkpoints_lists_the_folders_on_disk_with_the_ledger(api: LiveApi) -> None:
    root = api.settings.paths.checkpoints
    for name in ("step-00000004", "step-00000008", "gold", "export", ".staging-x", "notes"):
        (root / name).mkdir(parents=True)
    manifest = {"created_at": "2026-01-02T03:04:05.000Z", "files": {}}
    (root / "step-00000008" / "manifest.json").write_text(json.dumps(manifest))
    (root / "gold" / "manifest.json").write_text(json.dumps(manifest))
    (root / "gold" / "training_state.json").write_text(json.dumps({"global_step": 4}))
    (root / "step-00000012").write_text("a file, not a checkpoint")
    api.ledger.record_checkpoint(
        name="step-00000008", kind="step", step=8, path=str(root / "step-00000008")
    )
    api.ledger.record_checkpoint(name="export", kind="export", step=8, path=str(root / "export"))

    items = api.get("/v1/checkpoints").json()["items"]
    assert [(c["name"], c["kind"], c["step"]) for c in items] == [
        ("step-00000004", "step", 4),
        ("step-00000008", "step", 8),
        ("gold", "gold", 4),
        ("export", "export", 8),
    ]
    by_name = {c["name"]: c for c in items}
    assert by_name["step-00000008"]["complete"] and by_name["step-00000008"]["recorded"]
    assert by_name["step-00000008"]["created_at"] == "2026-01-02T03:04:05Z"
    assert not by_name["step-00000004"]["complete"]
    assert not by_name["step-00000004"]["recorded"]
    assert by_name["step-00000004"]["created_at"] is not None  # the folder's mtime
    assert by_name["export"]["recorded"] and not by_name["gold"]["recorded"]


def test_checkpoints_is_empty_without_a_folder(api: LiveApi) -> None:
    assert api.get("/v1/checkpoints").json() == {"items": []}


# Errors and documentation ----------------------------------------------------------


def test_unknown_routes_and_methods_answer_with_a_detail(api: LiveApi) -> None:
    response = api.get("/v1/nothing")
    assert response.status_code == 404
    assert response.json() == {
        "detail": "there is no route /v1/nothing; the routes are listed at /docs"
    }
    response = api.get("/v1/pause")
    assert response.status_code == 405
    assert response.json() == {"detail": "GET is not allowed on /v1/pause; see /docs"}


@pytest.mark.parametrize(
    "path",
    [
        "/v1/files/%00",
        "/v1/files/1.5",
        "/v1/files/-1",
        "/v1/queue?state=queued&state=%FF",
        "/v1/queue?limit=1e3",
        "/v1/queue?offset=%00",
        "/v1/status?unexpected=1",
    ],
)
def test_odd_requests_never_cause_a_500(api: LiveApi, path: str) -> None:
    response = api.get(path)
    assert response.status_code < 500
    if response.status_code >= 400:
        assert isinstance(response.json()["detail"], str)


def test_every_route_is_documented_with_a_summary_and_its_errors(api: LiveApi) -> None:
    spec = api.get("/openapi.json").json()
    routes = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    expected = {
        ("GET", "/livez"),
        ("GET", "/readyz"),
        ("GET", "/v1/status"),
        ("GET", "/v1/queue"),
        ("GET", "/v1/files/{file_id}"),
        ("POST", "/v1/files"),
        ("POST", "/v1/files/{file_id}/retry"),
        ("POST", "/v1/files/{file_id}/cancel"),
        ("POST", "/v1/pause"),
        ("POST", "/v1/resume"),
        ("POST", "/v1/checkpoints"),
        ("GET", "/v1/checkpoints"),
        ("GET", "/v1/gold"),
    }
    assert expected <= routes
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary"), f"{method} {path} has no summary"
            if method == "post":
                assert "401" in operation["responses"], f"{method} {path}"
    assert {"404", "409"} <= set(spec["paths"]["/v1/files/{file_id}/retry"]["post"]["responses"])
    assert "413" in spec["paths"]["/v1/files"]["post"]["responses"]
    assert "multipart/form-data" in spec["paths"]["/v1/files"]["post"]["requestBody"]["content"]
    assert api.get("/docs").status_code == 200


def test_the_watcher_is_real(api: LiveApi) -> None:
    api.drop("live.jsonl", VALID)
    wait_for(lambda: api.get("/v1/status").json()["queue"]["queued"] == 1, what="a queued file")
