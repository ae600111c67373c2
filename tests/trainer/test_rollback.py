"""A rollback to gold is atomic as seen from outside: after a crash at any point of it the
lineage is where it was or at gold, never in between, and an interrupted rollback is
finished at the next start."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import TEST_TRAIN, qa_rows, write_jsonl

from trainer.checkpoint import latest_checkpoint
from trainer.records.checkpoints import step_folders
from trainer.rollback import PLAN

ROLL_BACK = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from trainer.config import LineageSpec, RunPaths, TrainConfig
    from trainer.loop import Trainer
    root = Path(sys.argv[1])
    Trainer.open(
        spec=LineageSpec(preset="test"),
        train=TrainConfig(**{train}),
        paths=RunPaths(checkpoints=root / "ck", state=root / "st"),
        from_gold=True,
        rollback_request="2026-11-29T10:00:00+00:00",
        in_progress={{"name": "b.jsonl", "sha256": "bb"}},
    ).close()
    """
)


def events(root, kind):
    rows = [json.loads(line) for line in (root / "st" / "events.jsonl").read_text().splitlines()]
    return [r for r in rows if r["event"] == kind]


@pytest.fixture
def lineage(tmp_path, open_trainer):
    """Gold at the end of a.jsonl, then b.jsonl trained on with three newer checkpoints."""
    from trainer.config import RunPaths

    paths = RunPaths(checkpoints=tmp_path / "ck", state=tmp_path / "st")
    trainer = open_trainer(paths=paths, checkpoint_interval=2, keep_checkpoints=3)
    trainer.train_file(
        trainer.prepare(write_jsonl(tmp_path / "a.jsonl", qa_rows(16))), name="a.jsonl"
    )
    trainer.checkpointer.save_gold()
    gold_step = trainer.state.global_step
    b = trainer.prepare(write_jsonl(tmp_path / "b.jsonl", qa_rows(56, offset=40)))
    calls = iter(range(1000))
    trainer.train_file(b, name="b.jsonl", should_stop=lambda: next(calls) >= 6)
    newest = trainer.state.global_step
    trainer.close()
    newer = [s for s, _ in step_folders(paths.checkpoints) if s > gold_step]
    assert len(newer) >= 2
    return tmp_path, gold_step, newest


def crash_rolling_back(root: Path, point: str) -> None:
    script = ROLL_BACK.format(train=repr(TEST_TRAIN))
    result = subprocess.run(
        [sys.executable, "-c", script, str(root)],
        env={**os.environ, "TRAIND_FAULT": point},
        cwd=Path(__file__).parents[2],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]


@pytest.mark.parametrize(
    "point",
    ["rollback:after_install", "rollback:after_move@1", "rollback:before_finish"],
)
def test_a_crash_during_a_rollback_is_finished_at_the_next_start(lineage, open_trainer, point):
    root, gold_step, newest = lineage
    crash_rolling_back(root, point)
    # Seen from outside before the next start, the plan is there; the next start ends it.
    assert (root / "ck" / PLAN).exists()
    from trainer.config import RunPaths

    trainer = open_trainer(paths=RunPaths(checkpoints=root / "ck", state=root / "st"))
    assert trainer.state.global_step == gold_step
    assert latest_checkpoint(root / "ck").step == gold_step
    assert all(step <= gold_step for step, _ in step_folders(root / "ck"))
    kept = sorted(p.name for p in (root / "ck" / "rolled-back").glob("*/step-*"))
    assert kept and all(int(name.split("-")[1]) > gold_step for name in kept)
    assert max(int(name.split("-")[1]) for name in kept) == newest
    assert not (root / "ck" / PLAN).exists()
    # The request is recorded as served, so it is never carried out twice.
    assert trainer.state.rollback_served == "2026-11-29T10:00:00+00:00"
    assert trainer.rollback is not None and trainer.rollback.resumed
    assert trainer.rollback.in_progress == {"name": "b.jsonl", "sha256": "bb"}
    finished = events(root, "rolled_back_to_gold")[-1]
    assert finished["resumed"] and finished["gold_step"] == gold_step
    # Gold was taken between files: nothing of b.jsonl is in it, nothing to park.
    assert trainer.state.current_file is None and trainer.state.parked == []


def test_a_crash_before_the_plan_leaves_the_lineage_where_it_was(lineage, open_trainer):
    root, _gold_step, newest = lineage
    before = sorted(p.name for _, p in step_folders(root / "ck"))
    crash_rolling_back(root, "rollback:before_plan")
    from trainer.config import RunPaths

    trainer = open_trainer(paths=RunPaths(checkpoints=root / "ck", state=root / "st"))
    assert trainer.state.global_step == newest and not (root / "ck" / PLAN).exists()
    assert sorted(p.name for _, p in step_folders(root / "ck")) == before
    # Not served: the worker carries the request out when it sees it again.
    assert trainer.state.rollback_served is None
