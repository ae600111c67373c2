"""Never a silent new lineage (rule 15): where one exists, traind refuses to start over it
unless told, and one lineage never overwrites another's gold or export."""

import json
import shutil

import pytest
from conftest import qa_rows, write_jsonl

from trainer.checkpoint import CheckpointError, latest_checkpoint
from trainer.config import ExportConfig, RunPaths
from trainer.lineage import LineageError
from trainer.records.checkpoints import step_folders


def events(paths, kind):
    rows = [json.loads(line) for line in paths.events.read_text().splitlines()]
    return [r for r in rows if r["event"] == kind]


@pytest.fixture
def lineage(tmp_path, open_trainer, run_paths):
    """Two files trained, a gold taken after the first, an export after each."""
    trainer = open_trainer(checkpoint_interval=3, keep_checkpoints=2)
    first = write_jsonl(tmp_path / "a.jsonl", qa_rows(24))
    trainer.train_file(trainer.prepare(first), name="a.jsonl")
    trainer.checkpointer.save_gold()
    second = write_jsonl(tmp_path / "b.jsonl", qa_rows(24, offset=100))
    trainer.train_file(trainer.prepare(second), name="b.jsonl")
    trainer.close()
    return trainer.state


def break_every_step_checkpoint(root):
    for _step, path in step_folders(root):
        (path / "model.safetensors").write_bytes(b"not the weights any more")


def test_all_step_checkpoints_broken_refuses_to_start_over_gold_and_export(
    lineage, open_trainer, run_paths
):
    root = run_paths.checkpoints
    gold_before = (root / "gold" / "training_state.json").read_bytes()
    export_before = (root / "export" / "export.json").read_bytes()
    break_every_step_checkpoint(root)
    with pytest.raises(LineageError) as refused:
        open_trainer()
    message = str(refused.value)
    assert "gold/ (step" in message and "export/ (step" in message and "not usable" in message
    assert "traind train --from gold" in message and "--new-lineage" in message
    # Nothing was started, nothing overwritten.
    assert (root / "gold" / "training_state.json").read_bytes() == gold_before
    assert (root / "export" / "export.json").read_bytes() == export_before
    assert latest_checkpoint(root) is None


def test_all_step_checkpoints_deleted_refuses_too(lineage, open_trainer, run_paths):
    for _step, path in step_folders(run_paths.checkpoints):
        shutil.rmtree(path)
    with pytest.raises(LineageError, match="no usable step-\\* checkpoint"):
        open_trainer()


def test_a_ledger_that_records_trained_files_is_proof_of_a_lineage(tmp_path, open_trainer):
    empty = RunPaths(checkpoints=tmp_path / "empty" / "ck", state=tmp_path / "empty" / "st")
    with pytest.raises(LineageError, match="the ledger records 3 file"):
        open_trainer(paths=empty, expected_lineage="the ledger records 3 file(s) as trained")
    assert not empty.checkpoints.exists() or latest_checkpoint(empty.checkpoints) is None


def test_lost_checkpoints_continue_from_gold_when_configured(lineage, open_trainer, run_paths):
    root = run_paths.checkpoints
    gold_step = json.loads((root / "gold" / "training_state.json").read_text())["global_step"]
    break_every_step_checkpoint(root)
    trainer = open_trainer(on_lost_checkpoints="gold")
    assert trainer.state.global_step == gold_step
    assert trainer.state.lineage_id == lineage.lineage_id
    (event,) = events(run_paths, "rolled_back_to_gold")
    assert event["gold_step"] == gold_step
    assert not (root / ".rollback.json").exists()


def test_a_new_lineage_on_purpose_keeps_the_old_one_aside(lineage, open_trainer, run_paths):
    root = run_paths.checkpoints
    break_every_step_checkpoint(root)
    trainer = open_trainer(new_lineage=True)
    assert trainer.state.global_step == 0
    assert trainer.state.lineage_id != lineage.lineage_id
    (retired,) = (root / "retired").iterdir()
    kept = sorted(p.name for p in retired.iterdir())
    assert "gold" in kept and "export" in kept and any(n.startswith("step-") for n in kept)
    assert lineage.lineage_id[:8] in retired.name
    assert not (root / "gold").exists() and not (root / "export").exists()
    (event,) = events(run_paths, "lineage_retired")
    assert event["kept_in"] == str(retired)


def test_one_lineage_never_overwrites_another_lineages_gold_or_export(
    tmp_path, lineage, open_trainer, run_paths
):
    other = RunPaths(checkpoints=tmp_path / "other" / "ck", state=tmp_path / "other" / "st")
    trainer = open_trainer(paths=other, export=ExportConfig(enabled=True))
    trainer.train_file(
        trainer.prepare(write_jsonl(tmp_path / "c.jsonl", qa_rows(8))), name="c.jsonl"
    )
    # Someone copies the first lineage's gold and export in by hand.
    shutil.copytree(run_paths.checkpoints / "gold", other.checkpoints / "gold")
    shutil.rmtree(other.checkpoints / "export")
    shutil.copytree(run_paths.checkpoints / "export", other.checkpoints / "export")
    with pytest.raises(CheckpointError, match=r"belongs to lineage .* never overwrites"):
        trainer.checkpointer.save_gold()
    with pytest.raises(CheckpointError, match="belongs to lineage"):
        trainer.export()
    state = json.loads((other.checkpoints / "gold" / "training_state.json").read_text())
    assert state["lineage_id"] == lineage.lineage_id


def test_a_missing_export_is_written_again_at_start(lineage, open_trainer, run_paths):
    """A crash can leave no export (the first one, killed before its rename): the next
    start writes it rather than wait for the next file to end."""
    export = run_paths.checkpoints / "export"
    shutil.rmtree(export)
    trainer = open_trainer()
    info = json.loads((export / "export.json").read_text())
    assert info["step"] == trainer.state.global_step and info["reason"] == "restore"
    assert info["lineage_id"] == lineage.lineage_id
