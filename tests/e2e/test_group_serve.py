"""The worker as a torchrun group under a real ``traind serve`` (CPU, gloo): one rank
killed mid-file takes the group down, the supervisor starts the whole group again from
the last committed checkpoint and every file ends done once; and two machines,
simulated on loopback (node 0 runs ``traind serve``, node 1 ``traind node``), train a
file through the service."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import free_port, wait_for

from tests.corpus import make_drops
from trainer.checkpoint import latest_checkpoint
from trainer.records.checkpoints import SHARDED_METADATA


def rank_pids(state: Path, rank: int) -> list[int]:
    """The processes of this service's group with global rank ``rank``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            f"RANK={rank}".encode() in environ
            and f"TRAIND_PATHS__STATE={state}".encode() in environ
        ):
            found.append(int(entry.name))
    return found


def test_a_killed_rank_restarts_the_group_and_every_file_is_done_once(tmp_path, service_factory):
    drops = make_drops(tmp_path / "drops")[:2]
    for drop in drops:
        drop.write_text(drop.read_text() * 4)  # long enough to be killed mid-file
    service = service_factory(
        TRAIND_WORKER__NPROC_PER_NODE="2",
        TRAIND_MODEL__DROPOUT="0",
        TRAIND_TRAIN__CHECKPOINT_INTERVAL="2",
        TRAIND_EVAL__INTERVAL="1000",
        TRAIND_WORKER__MAX_ATTEMPTS="5",
    ).start()
    for drop in drops:
        service.drop(drop)
    # Mid-file: an interval checkpoint of the first file is committed.
    wait_for(
        lambda: any(e["reason"] == "interval" for e in service.events("checkpoint_saved")),
        timeout=120,
        what="an interval checkpoint",
        every=0.02,
    )
    victims = rank_pids(service.state, 1)
    assert len(victims) == 1, victims
    os.kill(victims[0], signal.SIGKILL)
    wait_for(
        lambda: rank_pids(service.state, 1) not in ([], victims),
        timeout=120,
        what="the group to start again",
    )
    done = service.wait_done(2, timeout=240)
    assert sorted(f.name for f in done) == sorted(p.name for p in drops)
    completes = [e["file"] for e in service.events("file_complete")]
    assert sorted(completes) == sorted(p.name for p in drops), "each file_complete once"
    starts = service.events("file_start")
    assert len(starts) == 2, "the file in progress resumed, it did not start over"
    newest = latest_checkpoint(service.root / "checkpoints")
    assert (newest.path / SHARDED_METADATA).is_file()
    spans = [(f["start_step"], f["end_step"]) for f in newest.training_state["files_completed"]]
    assert spans == [(e["start_step"], e["target_step"]) for e in starts]
    assert newest.step == spans[-1][1]
    assert service.terminate() == 0, service.log_tail()


def test_two_machines_on_loopback_train_a_file_through_serve(tmp_path, service_factory):
    group = {
        "TRAIND_WORKER__NNODES": "2",
        "TRAIND_WORKER__NPROC_PER_NODE": "1",
        "TRAIND_WORKER__RDZV_ENDPOINT": f"127.0.0.1:{free_port()}",
        "TRAIND_MODEL__DROPOUT": "0",
    }
    service = service_factory(**group).start(wait_ready=False)
    with (tmp_path / "node1.log").open("w") as log:  # the child keeps its own copy
        node = subprocess.Popen(
            [sys.executable, "-m", "api.cli.main", "node", "--node-rank", "1"],
            env=service.env,
            cwd=service.root,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    try:
        wait_for(service.ready, timeout=120, what="the two-machine group to load the model")
        drop = make_drops(tmp_path / "drops")[0]
        service.drop(drop)
        done = service.wait_done(1, timeout=180)
        assert [f.name for f in done] == [drop.name]
        assert [e["file"] for e in service.events("file_complete")] == [drop.name]
        newest = latest_checkpoint(service.root / "checkpoints")
        assert len(list((newest.path / "sharded").glob("*.distcp"))) == 2, "one per machine"
        assert service.terminate() == 0, service.log_tail()
        # Rank 0 said exit: node 1's process ends with the group.
        assert node.wait(timeout=60) == 0, (tmp_path / "node1.log").read_text()[-3000:]
    finally:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()
