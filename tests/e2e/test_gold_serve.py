"""Gold through a real ``traind serve``: overfitting a tiny repeated file blocks gold with
the overfit reason while the latest checkpoint moves on; ``traind rollback`` then takes
the lineage back to gold, and the next drop continues from gold's step. The file the
rollback undid is shown rolled back, and ``traind requeue --rolled-back`` trains it again.

The 2-layer test model needs hundreds of steps to push its val/train ratio to the
default limit of 5, so the limit is set to 1.25 here; the guard is the same code at any
limit (``tests/trainer/test_gold.py`` covers the numbers).
"""

import json
import random

from conftest import beside_the_module, wait_for
from conftest import traind_cli as traind

from trainer.records.checkpoints import read_json_object, step_folders

REPEATED = ["7 + 5 = 12", "31 + 4 = 35", "60 + 22 = 82", "9 + 9 = 18"]
GENERAL = [*REPEATED, "14 + 3 = 17", "50 + 41 = 91", "8 + 80 = 88", "23 + 23 = 46"]


def write_text_rows(path, rows):
    path.write_text("".join(json.dumps({"text": row}) + "\n" for row in rows))
    return path


def test_overfitting_blocks_gold_then_rollback_continues_from_gold(tmp_path, service_factory):
    general = write_text_rows(tmp_path / "general.jsonl", GENERAL)
    tiny = write_text_rows(tmp_path / "tiny.jsonl", [REPEATED[i % 4] for i in range(100)])
    service = service_factory(
        TRAIND_MODEL__DROPOUT="0",
        TRAIND_TRAIN__MICRO_BATCH_SIZE="4",
        TRAIND_TRAIN__GRAD_ACCUM_STEPS="1",
        TRAIND_TRAIN__EPOCHS_PER_FILE="30",
        TRAIND_TRAIN__CHECKPOINT_INTERVAL="20",
        TRAIND_TRAIN__KEEP_CHECKPOINTS="2",
        TRAIND_EVAL__INTERVAL="10",
        TRAIND_EVAL__SEQUENCES="16",
        TRAIND_EVAL__HOLDOUT_FRACTION="0",
        TRAIND_EVAL__SETS=json.dumps({"general": str(general)}),
        TRAIND_EVAL__PROMPTS=json.dumps(["9 + 9 ="]),
        TRAIND_GOLD__OVERFIT_RATIO="1.25",
    ).start()
    service.drop(tiny)
    (done,) = service.wait_done(1, timeout=180)
    checkpoints = service.root / "checkpoints"

    evals = service.events("eval")
    # The baseline at step 0, every 10 steps, and the file's end (once).
    assert [e["step"] for e in evals] == [0, *range(10, done.end_step, 10), done.end_step]
    assert [e["trigger"] for e in evals[:2]] == ["lineage_start", "interval"]
    assert evals[-1]["trigger"] == "file_end" and evals[0]["train_loss"] is None
    evals = evals[1:]
    for event in evals:
        assert event["val_set"] == "general" and event["val_loss"] == event["eval_general"]
        assert event["file"] == "tiny.jsonl" and 0 < event["progress_pct"] <= 100
        assert event["samples"][0]["prompt"] == "9 + 9 ="
        assert {"tokens_processed", "elapsed_s", "lr", "train_loss", "eval_duration_s"} <= set(
            event
        )
    blocked = service.events("gold_blocked")
    assert blocked, service.log_tail()
    assert all(b["guards"] == ["overfit"] for b in blocked)
    assert blocked[0]["reason"].startswith("overfit: val/train loss ratio")
    assert "above the limit 1.25" in blocked[0]["reason"]
    promoted = service.events("gold_checkpoint")
    gold_step = promoted[-1]["step"]
    # The blocked candidate was the best val loss yet, and gold stayed behind it.
    assert blocked[0]["val_loss"] < promoted[-1]["val_loss"] == blocked[0]["prev_best"]
    assert blocked[0]["step"] > gold_step
    # The latest checkpoint moved on past gold; rotation (keep 2) never touched gold.
    newest = step_folders(checkpoints)
    assert newest[0][0] == done.end_step > gold_step
    assert len(newest) == 2
    gold_state = json.loads((checkpoints / "gold" / "training_state.json").read_text())
    assert gold_state["global_step"] == gold_step
    assert gold_state["gold"]["step"] == gold_step
    assert (checkpoints / "gold" / "optimizer.pt").stat().st_size > 0
    answer = service.get("/v1/gold").json()
    assert answer["gold"] == {"step": gold_step, "val_loss": promoted[-1]["val_loss"]}
    assert {h["event"] for h in answer["history"]} == {"gold_checkpoint", "gold_blocked"}
    assert (checkpoints / "export" / "export.json").exists()

    rolled = traind(service, "rollback")
    assert rolled.returncode == 0, rolled.stderr
    wait_for(lambda: service.events("rolled_back_to_gold"), timeout=30, what="the rollback to gold")
    (event,) = service.events("rolled_back_to_gold")
    assert (event["gold_step"], event["from_step"]) == (gold_step, done.end_step)
    wait_for(
        lambda: (service.status() or {}).get("global_step") == gold_step,
        timeout=30,
        what="status at gold's step",
    )
    # The export (export.from = "latest") follows the rollback at once, not at the next file.
    wait_for(
        lambda: (
            (read_json_object(checkpoints / "export" / "export.json") or {}).get("step")
            == gold_step
        ),
        timeout=30,
        what="the export at gold's step",
    )
    kept = list((checkpoints / "rolled-back").glob("*/step-*"))
    assert sorted(p.name for p in kept) == sorted(event["moved"])
    assert all(step <= gold_step for step, _ in step_folders(checkpoints))

    # tiny.jsonl finished after gold, so the weights no longer hold it: rolled back, with
    # the steps it had, and shown so (never as trained) by the ledger, the API and the CLI.
    def tiny_record():
        return next(f for f in service.files() if f.name == "tiny.jsonl")

    wait_for(lambda: tiny_record().state.value == "rolled_back", timeout=30, what="rolled back")
    undone = tiny_record()
    assert (undone.start_step, undone.end_step) == (done.start_step, done.end_step)
    assert undone.error.startswith(f"rolled back to gold at step {gold_step}; it had been")
    (marked,) = service.events("file_rolled_back")
    assert (marked["id"], marked["gold_step"], marked["end_step"]) == (
        done.id,
        gold_step,
        done.end_step,
    )
    page = service.get("/v1/queue?state=rolled_back").json()
    assert [(f["id"], f["start_step"], f["end_step"]) for f in page["items"]] == [
        (done.id, done.start_step, done.end_step)
    ]
    assert service.status()["queue"]["rolled_back"] == 1
    shown = traind(service, "queue", "--state", "rolled_back")
    assert shown.returncode == 0, shown.stderr
    assert f"(rolled back) {done.start_step:,} → {done.end_step:,}" in shown.stdout

    # A rollback asked for while a file trains: the file stops at a step boundary and is
    # cancelled with a reason; retried, it trains again from the (new) gold's step, and
    # only what gold does not hold of it.
    more = write_text_rows(
        tmp_path / "more.jsonl", [f"{a} + {b} = {a + b}" for a, b in _pairs(250)]
    )
    service.drop(more)
    wait_for(
        lambda: (service.status() or {}).get("global_step", 0) > gold_step + 5,
        timeout=60,
        what="more.jsonl training past gold's step",
    )
    rolled = traind(service, "rollback")
    assert rolled.returncode == 0, rolled.stderr
    wait_for(
        lambda: len(service.events("rolled_back_to_gold")) == 2, timeout=60, what="2nd rollback"
    )
    second = service.events("rolled_back_to_gold")[1]

    def more_record():
        return next(f for f in service.files() if f.name == "more.jsonl")

    wait_for(lambda: more_record().state.value == "cancelled", timeout=30, what="cancelled")
    record = more_record()
    assert "rolled back to gold" in record.error and "Retry it" in record.error
    retried = traind(service, "retry", str(record.id))
    assert retried.returncode == 0, retried.stderr
    service.wait_done(1, timeout=180)  # tiny.jsonl is rolled back, not done
    starts = [e for e in service.events("file_start") if e["file"] == "more.jsonl"]
    resumed = [e for e in service.events("file_resumed") if e["file"] == "more.jsonl"]
    if second["gold_step"] > gold_step:
        # Gold moved while more.jsonl trained, so gold holds its first part: the retry
        # continues from gold's position in it (nothing of it trained twice) and ends where
        # it would have without the rollback.
        assert [e["start_step"] for e in starts] == [gold_step]
        assert [e["step"] for e in resumed] == [second["gold_step"]]
        assert more_record().end_step == starts[0]["target_step"]
    else:
        # Gold is older than more.jsonl: the retry trains it from its start, at gold's step.
        assert [e["start_step"] for e in starts] == [gold_step, second["gold_step"]]
        assert resumed == []

    # One command queues tiny.jsonl again: it trains again on the global steps after
    # more.jsonl's end, from gold's position in it (gold was taken while it trained).
    requeued = traind(service, "requeue", "--rolled-back")
    assert requeued.returncode == 0, requeued.stderr
    assert f"queued again: file {done.id} (tiny.jsonl)" in requeued.stdout
    assert [e["id"] for e in service.events("file_requeued")] == [done.id]
    wait_for(lambda: tiny_record().state.value == "done", timeout=120, what="tiny.jsonl again")
    (again,) = [e for e in service.events("file_resumed") if e["file"] == "tiny.jsonl"]
    assert again["step"] == more_record().end_step > second["gold_step"]
    assert tiny_record().end_step == again["target_step"] > again["step"]
    assert service.get("/v1/queue?state=rolled_back").json()["items"] == []
    assert service.terminate() == 0


def _pairs(n):
    rng = random.Random(7)
    return [(rng.randint(0, 99), rng.randint(0, 99)) for _ in range(n)]


BROKEN_EVAL_TEST = "test_a_broken_eval_set_stops_serve_with_status_2"


def start_with_a_broken_eval_set(tmp_path, service_factory):
    """The scenario of the test below, with its checks."""
    broken = tmp_path / "general.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": 3}\n')
    service = service_factory(TRAIND_EVAL__SETS=json.dumps({"general": str(broken)}))
    service.start(wait_ready=False)
    # Restarting cannot fix a settings problem: serve stops, with the status systemd's
    # RestartPreventExitStatus=2 and the docs call "fix the settings".
    assert service.proc.wait(timeout=60) == 2
    log = service.log_tail(200)
    assert "eval set 'general'" in log and "line 2" in log


# Nothing it checks depends on its pace: it runs beside the test above.
broken_eval_set = beside_the_module(BROKEN_EVAL_TEST, start_with_a_broken_eval_set)


def test_a_broken_eval_set_stops_serve_with_status_2(broken_eval_set):
    broken_eval_set.result()
