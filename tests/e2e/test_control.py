"""What the control plane asks of a running worker, through the ledger it reads:
cancel the file in training, save a checkpoint now, report counters for /metrics."""

from conftest import wait_for

from service.ledger import FileState
from tests.corpus import make_drops


def test_cancel_of_the_training_file_stops_at_a_step_and_keeps_what_it_learned(
    tmp_path, service_factory
):
    drops = make_drops(tmp_path / "drops")
    big = tmp_path / "big.jsonl"
    big.write_text(drops[0].read_text() * 8)
    service = service_factory(TRAIND_TRAIN__EPOCHS_PER_FILE="4").start()
    service.drop(big)
    wait_for(lambda: (service.status() or {}).get("global_step", 0) >= 3, timeout=30, what="steps")
    service.drop(drops[1])  # waits behind the big file
    ledger = service.ledger()
    target = next(f for f in service.files() if f.name == "big.jsonl")
    requested = ledger.request_cancel(target.id)
    assert requested.state is FileState.TRAINING and requested.cancel_requested_at is not None
    cancelled = wait_for(
        lambda: (f := ledger.get_file(target.id)).state is FileState.CANCELLED and f,
        timeout=20,
        what="the cancel to take effect",
    )
    assert cancelled.end_step < cancelled.target_step
    assert f"steps 0-{cancelled.end_step} were trained and are kept" in cancelled.error
    # The lineage goes on from where the cancelled file stopped.
    (done,) = service.wait_done(1)
    assert done.name == "b.jsonl" and done.start_step == cancelled.end_step
    assert [e["step"] for e in service.events("file_parked")] == [cancelled.end_step]
    assert [e["id"] for e in service.events("file_cancelled")] == [target.id]
    ledger.close()
    assert service.terminate() == 0


def test_a_requested_checkpoint_is_saved_at_the_next_step(tmp_path, service_factory):
    drops = make_drops(tmp_path / "drops")
    big = tmp_path / "big.jsonl"
    big.write_text(drops[0].read_text() * 8)
    service = service_factory(
        TRAIND_TRAIN__EPOCHS_PER_FILE="4", TRAIND_TRAIN__CHECKPOINT_INTERVAL="100000"
    ).start()
    service.drop(big)
    wait_for(lambda: (service.status() or {}).get("global_step", 0) >= 2, timeout=30, what="steps")
    ledger = service.ledger()
    ledger.request_checkpoint()
    saved = wait_for(
        lambda: [e for e in service.events("checkpoint_saved") if e["reason"] == "requested"],
        timeout=10,
        what="the requested checkpoint",
    )
    assert (
        len(saved) == 1 and (service.root / "checkpoints" / f"step-{saved[0]['step']:08d}").is_dir()
    )
    # The heartbeat carries what /metrics exposes.
    extra = ledger.worker_status().extra
    assert extra["tokens_processed"] > 0 and extra["step_seconds_count"] >= 2
    assert extra["step_seconds_buckets"]["counts"][-1] == extra["step_seconds_count"]
    ledger.close()
    assert service.terminate() == 0
