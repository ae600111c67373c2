"""The export follows its source (``export.from``): after each file or each new gold, after
a rollback, and at start when a crash or a changed setting left it off its source."""

import json
import logging
import shutil

import torch
from conftest import qa_rows, write_jsonl

from trainer.config import EvalConfig, ExportConfig, GoldConfig
from trainer.export import load_export, load_for_generation

EVAL = EvalConfig(interval=1000, sequences=8, batch_size=4, holdout_fraction=0.25)
LENIENT = GoldConfig(overfit_ratio=100.0)
LATEST = ExportConfig(dtype="bf16")
GOLD = ExportConfig(dtype="bf16", source="gold")


def events(run_paths, kind):
    rows = [json.loads(line) for line in run_paths.events.read_text().splitlines()]
    return [e for e in rows if e["event"] == kind]


def export_info(run_paths):
    return json.loads((run_paths.checkpoints / "export" / "export.json").read_text())


def train(trainer, tmp_path, name, *, offset):
    path = write_jsonl(tmp_path / name, qa_rows(32, offset=offset))
    trainer.train_file(trainer.prepare(path), name=name)
    return trainer.state.global_step


def gold_behind_latest(tmp_path, open_trainer, *, export):
    """Two files; gold at the end of the first (its file-end evaluation), then no more."""
    trainer = open_trainer(evaluation=EVAL, gold=LENIENT, export=export)
    gold_step = train(trainer, tmp_path, "a.jsonl", offset=0)
    assert trainer.state.gold["step"] == gold_step
    trainer.checkup.gold_config = GoldConfig(overfit_ratio=1e-9)  # no later candidate passes
    end = train(trainer, tmp_path, "b.jsonl", offset=500)
    assert trainer.state.gold["step"] == gold_step < end
    return trainer, gold_step, end


def test_latest_follows_each_file_and_a_rollback(tmp_path, open_trainer, run_paths):
    trainer, gold_step, end = gold_behind_latest(tmp_path, open_trainer, export=LATEST)
    info = export_info(run_paths)
    assert (info["from"], info["step"], info["source_checkpoint"]) == (
        "latest",
        end,
        f"step-{end:08d}",
    )
    assert info["lineage_id"] == trainer.state.lineage_id
    trainer.close()

    back = open_trainer(evaluation=EVAL, gold=LENIENT, export=LATEST, from_gold=True)
    # Right after the rollback, not at the end of the next file.
    info = export_info(run_paths)
    assert info["step"] == gold_step and info["reason"] == "rollback"
    assert events(run_paths, "export_saved")[-1]["reason"] == "rollback"
    back.close()
    # A start finds the export on its source: nothing is written again.
    again = open_trainer(evaluation=EVAL, gold=LENIENT, export=LATEST)
    assert events(run_paths, "export_saved")[-1]["reason"] == "rollback"
    again.close()


def test_gold_follows_gold_and_is_restored_from_the_gold_folder(
    tmp_path, open_trainer, run_paths, caplog
):
    trainer, gold_step, end = gold_behind_latest(tmp_path, open_trainer, export=GOLD)
    written = events(run_paths, "export_saved")
    # Written at the new gold only: the end of b moved "latest", not gold.
    assert [(e["reason"], e["step"]) for e in written] == [("gold", gold_step)]
    info = export_info(run_paths)
    assert (info["from"], info["source_checkpoint"], info["step"]) == ("gold", "gold", gold_step)
    trainer.close()

    # A crash between gold and its export (or a person) left another export behind.
    shutil.rmtree(run_paths.checkpoints / "export")
    with caplog.at_level(logging.WARNING, logger="trainer.exporter"):
        again = open_trainer(evaluation=EVAL, gold=LENIENT, export=GOLD)
    assert "writing it again" in caplog.text
    assert again.state.global_step == end  # the model in memory is not gold: the folder is
    info = export_info(run_paths)
    assert (info["source_checkpoint"], info["step"], info["reason"]) == (
        "gold",
        gold_step,
        "restore",
    )
    exported = load_export(run_paths.checkpoints / "export").model.state_dict()
    gold = load_for_generation(run_paths.checkpoints / "gold").model.state_dict()
    assert exported.keys() == gold.keys()
    for name, tensor in gold.items():
        assert torch.equal(exported[name], tensor.to(torch.bfloat16).float()), name


def test_gold_writes_nothing_before_the_first_gold(tmp_path, open_trainer, run_paths):
    trainer = open_trainer(evaluation=EVAL, gold=GoldConfig(overfit_ratio=1e-9), export=GOLD)
    train(trainer, tmp_path, "a.jsonl", offset=0)
    assert trainer.state.gold is None
    assert not (run_paths.checkpoints / "export").exists()
    assert trainer.export(reason="requested") is None
    assert not events(run_paths, "export_saved")


def test_an_unreadable_gold_leaves_the_export_and_training_alone(
    tmp_path, open_trainer, run_paths, caplog
):
    trainer, _, end = gold_behind_latest(tmp_path, open_trainer, export=GOLD)
    trainer.close()
    shutil.rmtree(run_paths.checkpoints / "export")
    (run_paths.checkpoints / "gold" / "manifest.json").write_text("{}")
    with caplog.at_level(logging.ERROR, logger="trainer.exporter"):
        again = open_trainer(evaluation=EVAL, gold=LENIENT, export=GOLD)
    assert "cannot export gold" in caplog.text
    assert again.state.global_step == end and not (run_paths.checkpoints / "export").exists()
