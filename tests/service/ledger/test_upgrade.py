"""A newer traind opens what the first release wrote: its ledger (Alembic migrations from
0001) and its checkpoints (``training_state.json`` format version 1), and goes on
training the same lineage. The fixture (tests/fixtures/v1, see its README) was written
by traind at commit 7cba3a1 and is never regenerated."""

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from service.ledger import FileState, Ledger
from trainer.checkpoint import latest_checkpoint, read_checkpoint
from trainer.records.state import FORMAT_VERSION, TrainingState, upgrade

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "v1"
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def old_lineage(tmp_path):
    root = tmp_path / "v1"
    shutil.copytree(FIXTURE, root)
    return root


def test_fixture_is_really_the_first_formats(old_lineage):
    with sqlite3.connect(old_lineage / "state" / "ledger.db") as db:
        assert db.execute("select version_num from alembic_version").fetchall() == [
            ("0001_initial",)
        ]
    state = json.loads(
        (old_lineage / "checkpoints" / "step-00000012" / "training_state.json").read_text()
    )
    assert state["format_version"] == 1
    assert "gold" not in state and "eval_history" not in state


def test_an_old_ledger_is_migrated_and_keeps_its_rows(old_lineage):
    ledger = Ledger.open(f"sqlite:///{old_lineage / 'state' / 'ledger.db'}")
    try:
        assert ledger.at_head()
        files = sorted(ledger.list_files(limit=100)[0], key=lambda f: f.id)
        assert [(f.name, f.state, f.start_step, f.end_step) for f in files] == [
            ("day1.jsonl", FileState.DONE, 0, 7),
            ("day2.jsonl", FileState.DONE, 7, 12),
        ]
        control = ledger.get_control()
        assert control.rollback_requested_at is None and control.export_requested_at is None
        ledger.request_export()  # columns added by later migrations work
    finally:
        ledger.close()


def test_an_old_training_state_is_upgraded_on_read(old_lineage):
    found = read_checkpoint(old_lineage / "checkpoints" / "step-00000012")
    state = TrainingState.from_dict(found.training_state)
    assert state.global_step == 12
    assert state.format_version == FORMAT_VERSION
    assert state.gold is None and state.eval_history == [] and state.gold_history == []
    assert [
        (f.name, f.start_step, f.end_step, f.holdout_fraction) for f in state.files_completed
    ] == [
        ("day1.jsonl", 0, 7, 0.0),
        ("day2.jsonl", 7, 12, 0.0),
    ]


def test_upgrade_refuses_unknown_versions():
    with pytest.raises(ValueError, match="upgrade traind"):
        upgrade({"format_version": FORMAT_VERSION + 1})
    with pytest.raises(ValueError, match="invalid format_version"):
        upgrade({"format_version": 0})


def test_traind_train_continues_an_old_lineage(old_lineage, tmp_path):
    third = tmp_path / "day3.jsonl"
    third.write_text(
        "".join(json.dumps({"text": f"{a} + {a} = {2 * a}"}) + "\n" for a in range(40))
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "TRAIND_TRAIN__DEVICE": "cpu",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "api.cli.main",
            "train",
            str(old_lineage / "data_inbox" / "accepted" / "000002-day2.jsonl"),
            str(third),
            "--config",
            str(old_lineage / "traind.toml"),
        ],
        env=env,
        cwd=old_lineage,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping" in result.stderr and "already trained" in result.stderr
    newest = latest_checkpoint(old_lineage / "checkpoints")
    state = newest.training_state
    assert state["format_version"] == FORMAT_VERSION
    names = [(f["name"], f["start_step"]) for f in state["files_completed"]]
    assert names[:2] == [("day1.jsonl", 0), ("day2.jsonl", 7)]
    assert names[2] == ("day3.jsonl", 12)
    assert newest.step == state["files_completed"][2]["end_step"] > 12
    # Optimizer moments came along: the old lineage was resumed, not restarted.
    log = (old_lineage / "state" / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in log]
    start = [e for e in events if e["event"] == "training_start"][-1]
    assert start["global_step"] == 12 and start["resumed_from"].endswith("step-00000012")
    assert not [e for e in events if e["event"] == "optimizer_reset"]
