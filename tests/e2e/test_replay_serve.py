"""Replay and the forgetting report through a real ``traind serve``: three drops, the
first trained on its own sequences, the next ones with a quarter of each step replayed
from the earlier drops; every evaluation reports each finished drop's held-out loss
against its best, and ``/v1/status``, ``/metrics`` and ``traind status`` show the worst."""

from conftest import traind_cli as traind
from test_daily_ops import metric_values

from tests.corpus import make_drops


def test_replay_and_the_forgetting_report_through_the_service(tmp_path, service_factory):
    drops = make_drops(tmp_path / "drops")
    service = service_factory(
        TRAIND_TRAIN__MICRO_BATCH_SIZE="4",
        TRAIND_TRAIN__GRAD_ACCUM_STEPS="1",
        TRAIND_TRAIN__REPLAY_FRACTION="0.25",
        TRAIND_EVAL__INTERVAL="1000",
        TRAIND_EVAL__HOLDOUT_FRACTION="0.2",
        TRAIND_GOLD__FORGETTING_THRESHOLD="0.5",
    ).start()
    for path in drops:
        service.drop(path)
    done = sorted(service.wait_done(3, timeout=120), key=lambda f: f.start_step)

    completes = {e["sha256"]: e for e in service.events("file_complete")}
    finished = [completes[f.sha256] for f in done]
    assert [e["replay_fraction"] for e in finished] == [0.0, 0.25, 0.25]
    assert finished[0]["replayed_sequences"] == 0
    assert all(e["replayed_sequences"] > 0 and e["replayed_tokens"] > 0 for e in finished[1:])
    for record, event in zip(done, finished, strict=True):
        # The ledger's steps are the budget's: the file's own sequences only (rule 1).
        assert (record.start_step, record.end_step) == (event["start_step"], event["end_step"])

    last = service.events("eval")[-1]
    report = last["forgetting"]
    assert report["measured"] == report["drops_total"] == 3
    assert [d["sha256"] for d in report["drops"]] == [e["sha256"] for e in finished]
    assert report["threshold"] == 0.5

    status = service.status()["forgetting"]
    assert status["step"] == last["step"] == done[-1].end_step
    assert status["worst"] == report["worst"] and status["measured"] == 3
    gauges = metric_values(service.get("/metrics").text)
    assert gauges[("traind_forgetting_worst_increase", ())] == report["worst"]["increase"]
    assert gauges[("traind_forgetting_drops_measured", ())] == 3
    service.env["COLUMNS"] = "200"  # the panel's line whole, not wrapped
    shown = traind(service, "status")
    assert shown.returncode == 0, shown.stderr
    assert f"worst {report['worst']['file']}" in shown.stdout
    assert "3 of 3 drops measured" in shown.stdout
    assert service.terminate() == 0
