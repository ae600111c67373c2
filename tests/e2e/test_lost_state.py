"""Lost or broken state between two runs of a real ``traind serve``: the checkpoint is the
truth (a done file its checkpoints no longer hold is trained again), a lost ledger is
rebuilt from the inbox folders, and lost checkpoints never start a silent new lineage."""

import json
import shutil
import subprocess
import sys

import torch
from conftest import Reference, beside_the_module, wait_for

from service.ledger import FileState
from tests.corpus import make_drops
from trainer.checkpoint import latest_checkpoint
from trainer.records.checkpoints import step_folders


def reference(tmp_path, drops, **extra) -> Reference:
    """The uninterrupted run, started now and trained while the test drives its service;
    ``.result()`` waits for it."""
    return Reference(tmp_path / "reference", drops, **extra)


def assert_same_weights(root, ref):
    final = latest_checkpoint(root / "checkpoints")
    assert final.step == ref.step
    weights = ref.weights()
    for key, value in final.weights().items():
        assert torch.equal(value, weights[key]), f"{key} differs from the uninterrupted run"


def test_done_files_whose_checkpoints_were_lost_are_trained_again(tmp_path, service_factory):
    """Before, the file the lineage was back in the middle of was abandoned ("the ledger
    has no queued file with this content") and the later one stayed done, untrained."""
    drops = make_drops(tmp_path / "drops")[:2]
    keep = {"TRAIND_TRAIN__KEEP_CHECKPOINTS": "50"}
    ref = reference(tmp_path, drops, **keep)
    service = service_factory(**keep).start()
    for drop in drops:
        service.drop(drop)
    a, b = sorted(service.wait_done(2), key=lambda f: f.id)
    assert service.terminate() == 0
    # The newest checkpoints are lost: the newest left is in the middle of a.jsonl.
    middle = max(
        step for step, _ in step_folders(service.root / "checkpoints") if step < a.end_step
    )
    for step, path in step_folders(service.root / "checkpoints"):
        if step > middle:
            shutil.rmtree(path)
    service.start()
    again = {f.name: f for f in service.wait_done(2)}
    reopened = {e["file"]: e for e in service.events("file_reopened")}
    assert set(reopened) == {"a.jsonl", "b.jsonl"}
    assert "resumes at step" in reopened["a.jsonl"]["reason"]
    assert "does not hold its training" in reopened["b.jsonl"]["reason"]
    assert (again["a.jsonl"].start_step, again["a.jsonl"].end_step) == (0, a.end_step)
    assert (again["b.jsonl"].start_step, again["b.jsonl"].end_step) == (b.start_step, b.end_step)
    assert not service.events("file_parked")
    assert service.terminate() == 0
    assert_same_weights(service.root, ref.result())


def test_a_lost_ledger_is_rebuilt_from_the_inbox_folders(tmp_path, service_factory):
    """Before, accepted/ files were orphaned, ids restarted at 1 and the next drop became
    000001-c.jsonl.1, a name the worker rejected."""
    a, b, c = make_drops(tmp_path / "drops")
    service = service_factory().start()
    service.drop(a)
    service.wait_done(1)
    paused = subprocess.run(
        [sys.executable, "-m", "api.cli.main", "pause", "--url", service.url],
        env=service.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert paused.returncode == 0, paused.stderr
    service.drop(b)
    wait_for(
        lambda: any(f.name == "b.jsonl" and f.state is FileState.QUEUED for f in service.files()),
        timeout=30,
        what="b.jsonl queued",
    )
    assert service.terminate() == 0
    for leftover in (service.root / "state").glob("ledger.db*"):
        leftover.unlink()
    service.drop(c)  # arrives while the service is down
    service.start()
    files = {f.name: f for f in service.wait_done(3)}
    assert {name: f.id for name, f in files.items()} == {"a.jsonl": 1, "b.jsonl": 2, "c.jsonl": 3}
    accepted = sorted(p.name for p in (service.inbox / "accepted").iterdir())
    assert accepted == ["000001-a.jsonl", "000002-b.jsonl", "000003-c.jsonl"]
    (rebuilt,) = service.events("ledger_rebuilt")
    assert rebuilt["restored"] == {"done": ["#1 a.jsonl"], "queued": ["#2 b.jsonl"]}
    completes = [e["file"] for e in service.events("file_complete")]
    assert sorted(completes) == ["a.jsonl", "b.jsonl", "c.jsonl"], "a.jsonl trained once"
    assert service.terminate() == 0


BROKEN_TEST = "test_broken_checkpoints_refuse_a_new_lineage_until_told"


def break_the_checkpoints_then_continue_from_gold(tmp_path, service_factory):
    """The scenario of the test below, with its checks."""
    drops = make_drops(tmp_path / "drops")
    service = service_factory().start()
    service.drop(drops[0])
    service.wait_done(1)
    assert service.terminate() == 0
    root = service.root / "checkpoints"
    gold = json.loads((root / "gold" / "training_state.json").read_text())
    export_before = (root / "export" / "model.safetensors").read_bytes()
    for _step, path in step_folders(root):
        (path / "model.safetensors").write_bytes(b"damaged")
    service.start(wait_ready=False)
    assert service.proc.wait(timeout=60) == 2
    log = service.log.read_text()
    assert "no usable step-* checkpoint" in log and "traind train --from gold" in log
    assert (root / "export" / "model.safetensors").read_bytes() == export_before
    assert json.loads((root / "gold" / "training_state.json").read_text()) == gold
    # Told what to do, the operator does it; the service then continues from gold.
    recovered = subprocess.run(
        [sys.executable, "-m", "api.cli.main", "train", "--from", "gold"],
        env=service.env,
        cwd=service.root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert recovered.returncode == 0, recovered.stderr[-2000:]
    service.start()
    status = service.status()
    assert status["global_step"] == gold["global_step"] and status["error"] is None
    assert latest_checkpoint(root).training_state["lineage_id"] == gold["lineage_id"]
    assert service.terminate() == 0


# Nothing it checks depends on its pace: it runs beside the module's other tests.
broken_then_gold = beside_the_module(BROKEN_TEST, break_the_checkpoints_then_continue_from_gold)


def test_broken_checkpoints_refuse_a_new_lineage_until_told(broken_then_gold):
    """Before, a fresh random model started at step 0 and overwrote gold and the export."""
    broken_then_gold.result()
