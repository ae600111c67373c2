"""A real ``traind serve``: drops trained in order on exact cumulative steps, duplicates,
pause/resume with a resident model, SIGTERM, and a worker that dies."""

import json
import math
import os
import signal
import time
from pathlib import Path

from conftest import beside_the_module, traind_cli, wait_for

from service.ledger import DesiredState, FileState
from tests.corpus import make_drops
from trainer.checkpoint import latest_checkpoint


def budget(n_sequences: int) -> int:
    # The e2e settings: micro 4 x accum 2, epochs 1.5, one process.
    return math.ceil(1.5 * n_sequences / 8)


def test_drops_train_in_order_on_exact_cumulative_steps(tmp_path, service_factory):
    drops = make_drops(tmp_path / "drops")
    service = service_factory().start()
    # Renamed in, the recommended way, one after the other.
    service.drop(drops[0])
    wait_for(lambda: len(service.files()) == 1, timeout=20, what="the first drop recorded")
    service.drop(drops[1])
    # Written in place by a writer that cannot rename: taken once closed and settled.
    with (service.inbox / "c.jsonl").open("w") as out:
        content = drops[2].read_text()
        out.write(content[: len(content) // 2])
        out.flush()
        time.sleep(1.0)  # longer than the settle time, but still open: not taken
        assert all(f.name != "c.jsonl" for f in service.files())
        out.write(content[len(content) // 2 :])
    done = service.wait_done(3)
    by_id = sorted(done, key=lambda f: f.id)
    assert [f.name for f in by_id] == ["a.jsonl", "b.jsonl", "c.jsonl"]
    starts = {e["file"]: e for e in service.events("file_start")}
    step = 0
    for record in by_id:
        start = starts[record.name]
        assert record.start_step == step == start["start_step"]
        assert record.end_step == record.target_step == start["target_step"]
        assert record.end_step - record.start_step == budget(start["n_sequences"])
        step = record.end_step
    assert latest_checkpoint(service.root / "checkpoints").step == step
    completes = service.events("file_complete")
    assert [e["file"] for e in completes] == ["a.jsonl", "b.jsonl", "c.jsonl"]
    # Accepted files left the inbox's top level; nothing was deleted.
    assert sorted(p.name for p in (service.inbox / "accepted").iterdir()) == sorted(
        f"{f.id:06d}-{f.name}" for f in by_id
    )
    assert not [p for p in service.inbox.iterdir() if p.is_file()]
    status = service.status()
    assert status["global_step"] == step and status["queue"]["done"] == 3
    ledger = service.ledger()
    recorded = sorted(c["name"] for c in ledger.list_checkpoints(kind="step"))
    ledger.close()
    on_disk = sorted(p.name for p in (service.root / "checkpoints").glob("step-*"))
    assert recorded == on_disk and len(on_disk) == 3  # rotation is mirrored in the ledger
    # The main process (API, watcher, supervisor) never loads torch; the worker does.
    main_maps = Path(f"/proc/{service.proc.pid}/maps").read_text()
    worker_maps = Path(f"/proc/{status['worker']['pid']}/maps").read_text()
    assert "libtorch" not in main_maps and "libtorch" in worker_maps
    assert service.terminate() == 0


def test_a_busy_port_is_a_real_failure(tmp_path, service_factory):
    first = service_factory("first").start()
    second = service_factory("second")
    second.port, second.url = first.port, first.url
    second.env["TRAIND_SERVER__PORT"] = str(first.port)
    second.start(wait_ready=False)
    assert second.proc.wait(timeout=60) != 0
    assert first.terminate() == 0


def test_same_content_twice_is_one_duplicate(tmp_path, service_factory):
    drops = make_drops(tmp_path / "drops")
    service = service_factory().start()
    service.drop(drops[0])
    service.wait_done(1)
    service.drop(drops[0], name="renamed-copy.jsonl")
    dup = wait_for(
        lambda: [f for f in service.files() if f.state is FileState.DUPLICATE],
        timeout=20,
        what="the duplicate",
    )
    assert len(dup) == 1 and dup[0].name == "renamed-copy.jsonl"
    assert "same content as file #1" in dup[0].error
    time.sleep(1.0)
    assert len(service.events("file_complete")) == 1  # never trained twice
    assert (service.inbox / "duplicates").exists()
    assert service.terminate() == 0


def test_pause_and_resume_keep_the_model_resident(tmp_path, service_factory):
    drops = make_drops(tmp_path / "drops")
    big = tmp_path / "big.jsonl"
    big.write_text(drops[0].read_text() * 8)
    service = service_factory(TRAIND_TRAIN__EPOCHS_PER_FILE="4").start()
    worker_pid = service.status()["worker"]["pid"]
    service.drop(big)
    wait_for(
        lambda: (service.status() or {}).get("state") == "training",
        timeout=30,
        what="training",
    )
    ledger = service.ledger()
    ledger.set_desired_state(DesiredState.PAUSED)
    paused_at = time.monotonic()
    status = wait_for(
        lambda: (
            (s := service.status())
            and s["state"] == "paused"
            and s["worker"]["state"] == "paused"
            and s
        ),
        timeout=10,
        what="paused",
    )
    assert time.monotonic() - paused_at < 3.0
    step = status["global_step"]
    time.sleep(1.0)
    assert service.status()["global_step"] == step  # nothing moves while paused
    pause_events = service.events("paused")
    assert pause_events and pause_events[-1]["step"] == step
    saved = [e for e in service.events("checkpoint_saved") if e["reason"] == "pause"]
    assert saved and saved[-1]["step"] == step  # checkpointed at the step boundary
    ledger.set_desired_state(DesiredState.RUNNING)
    wait_for(lambda: service.status()["global_step"] > step, timeout=20, what="training again")
    assert service.events("resumed")[-1]["step"] == step
    done = service.wait_done(1)
    assert service.status()["worker"]["pid"] == worker_pid
    assert len(service.events("training_start")) == 1  # the model was never reloaded
    assert done[0].end_step - done[0].start_step == math.ceil(
        4 * service.events("file_start")[0]["n_sequences"] / 8
    )
    ledger.close()
    assert service.terminate() == 0


def test_sigterm_checkpoints_releases_and_resumes(tmp_path, service_factory):
    drops = make_drops(tmp_path / "drops")
    big = tmp_path / "big.jsonl"
    big.write_text(drops[0].read_text() * 8)
    service = service_factory(
        TRAIND_TRAIN__EPOCHS_PER_FILE="4", TRAIND_TRAIN__CHECKPOINT_INTERVAL="1000"
    )
    service.start()
    service.drop(big)
    wait_for(
        lambda: (service.status() or {}).get("global_step", 0) >= 3,
        timeout=30,
        what="a few steps",
    )
    assert service.terminate(timeout=60) == 0
    stop_saves = [e for e in service.events("checkpoint_saved") if e["reason"] == "stop"]
    assert len(stop_saves) == 1
    record = service.files()[0]
    assert record.state is FileState.QUEUED and record.lease_owner is None  # claim released
    assert record.start_step == 0 and record.target_step is not None  # budget kept
    interrupted = latest_checkpoint(service.root / "checkpoints")
    assert interrupted.step == stop_saves[0]["step"]
    service.start()
    done = service.wait_done(1)
    assert done[0].target_step == record.target_step == done[0].end_step
    assert service.terminate() == 0


def test_a_dead_worker_is_restarted_and_training_goes_on(tmp_path, service_factory):
    drops = make_drops(tmp_path / "drops")
    service = service_factory().start()
    first_pid = service.status()["worker"]["pid"]
    for drop in drops:
        service.drop(drop)
    wait_for(
        lambda: (service.status() or {}).get("state") == "training",
        timeout=30,
        what="training",
    )
    os.kill(first_pid, signal.SIGKILL)
    wait_for(
        lambda: (
            (s := service.status())
            and s["worker"]["pid"] not in (None, first_pid)
            and s["worker"]["model_loaded"]
        ),
        timeout=60,
        what="a new worker",
    )
    done = service.wait_done(3)
    assert sum(f.end_step - f.start_step for f in done) == max(f.end_step for f in done)
    assert len(service.events("file_complete")) == 3
    assert service.proc.poll() is None  # the service itself never went down
    assert service.terminate() == 0


CRASHING_TEST = "test_a_file_that_keeps_crashing_the_worker_is_failed_not_retried_forever"


def crash_on_every_start_then_retry_fixed(tmp_path, service_factory):
    """The scenario of the test below, with its checks."""
    drops = make_drops(tmp_path / "drops")
    # Every worker process dies (SIGKILL) at its first optimizer step.
    service = service_factory(TRAIND_FAULT="loop:mid_step@1", TRAIND_WORKER__MAX_ATTEMPTS="2")
    service.start()
    service.drop(drops[0])
    failed = wait_for(
        lambda: [f for f in service.files() if f.state is FileState.FAILED],
        timeout=120,
        what="the file to be failed",
        every=0.3,
    )
    assert "crashed the worker 2 times" in failed[0].error
    assert failed[0].attempts == 2
    assert [e["reason"] for e in service.events("file_failed")] == [failed[0].error]
    status = wait_for(
        lambda: (s := service.status()) and s["state"] == "idle" and s,
        timeout=30,
        what="idle",
    )
    assert status["queue"]["failed"] == 1 and service.proc.poll() is None
    assert service.terminate() == 0
    # Fixed (no fault any more) and retried: the count starts afresh; the file never got
    # into a checkpoint, so it starts cleanly from its beginning.
    del service.env["TRAIND_FAULT"]
    service.start()
    retried = traind_cli(service, "retry", str(failed[0].id))
    assert retried.returncode == 0, retried.stderr
    (done,) = service.wait_done(1)
    assert done.attempts == 0 and done.start_step == 0
    assert not service.events("file_resumed")
    assert service.terminate() == 0


# Crashes and restarts take their time whatever the pace, and nothing checked depends on
# it: the scenario runs beside the module's first tests.
crashed_until_failed = beside_the_module(CRASHING_TEST, crash_on_every_start_then_retry_fixed)


def test_a_file_that_keeps_crashing_the_worker_is_failed_not_retried_forever(
    crashed_until_failed,
):
    crashed_until_failed.result()


def test_a_file_with_nothing_left_to_learn_is_rejected_by_the_worker(tmp_path, service_factory):
    """Every assistant reply lies beyond the model's context (64 tokens here, and a chat is
    cut from the right): intake cannot know that without the tokenizer, but the worker
    does; before, it "trained" the file on no target at all."""
    service = service_factory().start()
    long = tmp_path / "long-prompts.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"question {i} " + "." * 100},
                {"role": "assistant", "content": f"answer {i}"},
            ]
        }
        for i in range(6)
    ]
    long.write_text("".join(json.dumps(r) + "\n" for r in rows))
    service.drop(long)
    # The ledger says rejected before the file moves (a crash between loses nothing);
    # the event comes once it has moved.
    wait_for(lambda: service.events("file_rejected"), timeout=60, what="the file rejected")
    (rejected,) = [f for f in service.files() if f.state is FileState.REJECTED]
    assert "no token to learn from" in rejected.error and "block_size" in rejected.error
    kept = Path(rejected.path)
    assert kept.parent.name == "rejected" and kept.exists()
    assert kept.with_name(kept.name + ".reason.txt").exists()
    assert [e["file"] for e in service.events("file_rejected")] == ["long-prompts.jsonl"]
    assert not service.events("file_start")
    assert service.terminate() == 0


def test_sigterm_with_an_event_stream_open_still_stops_cleanly(tmp_path, service_factory):
    import threading

    import httpx

    service = service_factory().start()
    lines: list[str] = []

    def follow():
        try:
            with httpx.stream("GET", service.url + "/v1/events", timeout=60) as stream:
                for line in stream.iter_lines():
                    lines.append(line)
        except httpx.HTTPError:
            pass

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    wait_for(
        lambda: any(x.startswith("event: training_start") for x in lines),
        timeout=10,
        what="a streamed event",
    )
    started = time.monotonic()
    assert service.terminate(timeout=30) == 0
    assert time.monotonic() - started < 15
    reader.join(timeout=10)
    assert not reader.is_alive()
