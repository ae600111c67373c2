"""Day-to-day operation through a real ``traind serve``: evaluations at step 0 and at
every file end, an evaluation on request, an export that follows gold (after a new gold
and after a rollback) and says where it came from, the quality gauges of ``/metrics``,
and an eval selection that does not depend on the training micro-batch."""

import json

from conftest import traind_cli as traind
from conftest import wait_for
from prometheus_client.parser import text_string_to_metric_families

GENERAL = [f"{a} + {b} = {a + b}" for a, b in [(7, 5), (31, 4), (60, 22), (9, 9), (14, 3)]]


def write_rows(path, rows):
    path.write_text("".join(json.dumps({"text": row}) + "\n" for row in rows))
    return path


def metric_values(text):
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_evaluations_gold_export_and_quality_gauges(tmp_path, service_factory):
    general = write_rows(tmp_path / "general.jsonl", GENERAL * 4)
    service = service_factory(
        TRAIND_TRAIN__MICRO_BATCH_SIZE="4",
        TRAIND_TRAIN__GRAD_ACCUM_STEPS="1",
        TRAIND_TRAIN__EPOCHS_PER_FILE="2",
        TRAIND_EVAL__INTERVAL="1000",
        TRAIND_EVAL__HOLDOUT_FRACTION="0",
        TRAIND_EVAL__SETS=json.dumps({"general": str(general)}),
        TRAIND_GOLD__OVERFIT_RATIO="100",
        TRAIND_EXPORT__FROM="gold",
    ).start()
    day1 = write_rows(tmp_path / "day1.jsonl", [f"{a} + {a} = {2 * a}" for a in range(40)])
    service.drop(day1)
    (done,) = service.wait_done(1, timeout=120)
    checkpoints = service.root / "checkpoints"

    evals = service.events("eval")
    assert [(e["step"], e["trigger"]) for e in evals] == [
        (0, "lineage_start"),
        (done.end_step, "file_end"),
    ]
    assert evals[1]["val_loss"] < evals[0]["val_loss"]
    (promoted,) = service.events("gold_checkpoint")
    assert promoted["step"] == done.end_step
    info = json.loads((checkpoints / "export" / "export.json").read_text())
    assert (info["from"], info["source_checkpoint"], info["step"]) == (
        "gold",
        "gold",
        done.end_step,
    )
    exported = service.events("export_saved")
    assert [e["reason"] for e in exported] == ["gold"]
    status = service.status()
    assert status["export"]["step"] == done.end_step and status["export"]["from"] == "gold"
    assert status["export"]["lineage_id"] == info["lineage_id"]

    asked = traind(service, "eval")
    assert asked.returncode == 0, asked.stderr
    wait_for(
        lambda: [e for e in service.events("eval") if e["trigger"] == "request"],
        timeout=30,
        what="the requested evaluation",
    )
    requested = next(e for e in service.events("eval") if e["trigger"] == "request")
    # Same weights, same selection: the same loss as the file-end evaluation.
    assert requested["step"] == done.end_step
    assert requested["eval_general"] == evals[1]["eval_general"]

    gauges = metric_values(service.get("/metrics").text)
    assert gauges[("traind_eval_loss", (("set", "general"),))] == requested["eval_general"]
    assert gauges[("traind_val_loss", ())] == requested["val_loss"]
    assert gauges[("traind_gold_val_loss", ())] == promoted["val_loss"]
    assert gauges[("traind_gold_step", ())] == promoted["step"]
    assert gauges[("traind_eval_step", ())] == done.end_step
    assert 0 <= gauges[("traind_eval_age_seconds", ())] < 60

    rolled = traind(service, "rollback")
    assert rolled.returncode == 0, rolled.stderr
    wait_for(
        lambda: [e for e in service.events("export_saved") if e["reason"] == "rollback"],
        timeout=30,
        what="the export after the rollback",
    )
    info = json.loads((checkpoints / "export" / "export.json").read_text())
    assert (info["source_checkpoint"], info["step"]) == ("gold", promoted["step"])
    assert service.terminate() == 0

    # The eval selection does not depend on the training micro-batch: a checkpoint scored
    # with another micro_batch_size gives the worker's loss to the last digit.
    for micro in ("4", "1"):
        service.env["TRAIND_TRAIN__MICRO_BATCH_SIZE"] = micro
        scored = traind(service, "eval", "--checkpoint", str(checkpoints / "gold"), "--json")
        assert scored.returncode == 0, scored.stderr
        event = json.loads(scored.stdout)
        assert event["trigger"] == "checkpoint" and event["step"] == promoted["step"]
        assert event["eval_general"] == evals[1]["eval_general"]
