"""``service.checkpoints.catalog``: a lineage read from disk without torch, against the trainer's
own record of it, and the checked-in format-1 fixture."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.checkpoints.catalog import InspectionError, check_manifest, inspect_path
from tests.corpus import make_drops
from trainer.records.storage import file_sha256

REPO = Path(__file__).resolve().parents[3]
FIXTURE = REPO / "tests" / "fixtures" / "v1" / "checkpoints"


@dataclass(frozen=True)
class Lineage:
    """A lineage trained once per module, and what the trainer said about it."""

    root: Path
    files: list[tuple[str, int, int]]
    global_step: int
    parameters: int


@pytest.fixture(scope="module")
def lineage(tmp_path_factory: pytest.TempPathFactory) -> Lineage:
    """Three tiny files trained in one process by the real trainer."""
    from trainer.config import LineageSpec, RunPaths, TrainConfig
    from trainer.loop import FileOutcome, Trainer

    base = tmp_path_factory.mktemp("lineage")
    paths = RunPaths(checkpoints=base / "checkpoints", state=base / "state")
    trainer = Trainer.open(
        spec=LineageSpec(preset="test"),
        train=TrainConfig(
            micro_batch_size=4,
            grad_accum_steps=2,
            warmup_steps=2,
            checkpoint_interval=5,
            keep_checkpoints=3,
            log_interval=50,
            device="cpu",
        ),
        paths=paths,
    )
    try:
        for drop in make_drops(base / "drops"):
            outcome = trainer.train_file(trainer.prepare(drop), name=drop.name)
            assert outcome is FileOutcome.COMPLETED
        done = [(f.name, f.start_step, f.end_step) for f in trainer.state.files_completed]
        found = Lineage(
            root=paths.checkpoints,
            files=done,
            global_step=trainer.state.global_step,
            parameters=trainer.model.num_params(),
        )
    finally:
        trainer.finish()
    return found


def copy_root(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / "checkpoints"))


def seal(folder: Path) -> None:
    """Write a manifest for every file in ``folder``, as the trainer does last."""
    files = {
        p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(folder.iterdir())
        if p.name != "manifest.json"
    }
    (folder / "manifest.json").write_text(json.dumps({"format_version": 2, "files": files}))


def rewrite_state(folder: Path, **changes: object) -> None:
    """Change ``training_state.json`` and re-seal the manifest."""
    state_path = folder / "training_state.json"
    state = json.loads(state_path.read_text())
    state.update(changes)
    state_path.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    seal(folder)


def test_root_shows_the_newest_checkpoint_with_the_whole_lineage(lineage: Lineage) -> None:
    found = inspect_path(lineage.root)
    assert found.kind == "root" and found.warnings == ()
    view = found.checkpoint
    assert view is not None and view.problem is None
    assert view.name == f"step-{lineage.global_step:08d}" and view.step == lineage.global_step
    training = view.training
    assert training is not None and training.current_file is None
    files = [(f.name, f.start_step, f.end_step) for f in training.lineage]
    assert files == lineage.files
    assert [f[0] for f in files] == ["a.jsonl", "b.jsonl", "c.jsonl"]
    # The ranges chain: each file starts where the previous ended, from 0 to the step.
    assert files[0][1] == 0
    assert all(files[k + 1][1] == files[k][2] for k in range(len(files) - 1))
    assert files[-1][2] == training.global_step == lineage.global_step
    assert all(f.steps == f.end_step - f.start_step > 0 for f in training.lineage)
    assert view.parameters == lineage.parameters
    assert view.architecture["n_layer"] == 2 and view.notes == ()
    steps = [e.step for e in found.checkpoints]
    assert steps == sorted(steps, reverse=True) and steps[0] == lineage.global_step
    assert len(steps) == 3  # keep_checkpoints
    assert all(e.problem is None and e.size_bytes > 0 for e in found.checkpoints)
    # Whether the trainer wrote gold/ and export/ depends on its eval and export settings;
    # whatever it wrote must pass the manifest check.
    for entry in (found.gold, found.export):
        assert entry is None or entry.problem is None


def test_to_dict_is_plain_json_without_rng(lineage: Lineage) -> None:
    data = json.loads(json.dumps(inspect_path(lineage.root).to_dict(), allow_nan=False))
    training = data["checkpoint"]["training"]
    ranges = [[f["name"], f["start_step"], f["end_step"]] for f in training["lineage"]]
    assert ranges == [list(f) for f in lineage.files]
    assert "rng" not in training and "rng" not in json.dumps(data)
    assert data["checkpoints"][0]["name"] == data["checkpoint"]["name"]


def test_a_single_step_folder(lineage: Lineage) -> None:
    entries = inspect_path(lineage.root).checkpoints
    newest = inspect_path(lineage.root / entries[0].name)
    assert newest.kind == "step" and newest.checkpoints == ()
    assert newest.checkpoint is not None and newest.checkpoint.training is not None
    assert [f.name for f in newest.checkpoint.training.lineage] == ["a.jsonl", "b.jsonl", "c.jsonl"]
    older = inspect_path(lineage.root / entries[-1].name).checkpoint
    assert older is not None and older.training is not None
    assert older.step == older.training.global_step == entries[-1].step
    done = [(f.name, f.start_step, f.end_step) for f in older.training.lineage]
    assert done == lineage.files[: len(done)]
    current = older.training.current_file
    if current is not None:  # taken mid-file: the file's progress is told in steps
        assert current.start_step == (done[-1][2] if done else 0)
        expected = (older.step - current.start_step) / (current.target_step - current.start_step)
        assert current.progress == pytest.approx(expected)


def test_broken_newest_checkpoints_are_skipped_and_reported(lineage: Lineage, tmp_path) -> None:
    root = copy_root(lineage.root, tmp_path)
    newest, second, third = inspect_path(root).checkpoints
    (root / newest.name / "manifest.json").unlink()
    with (root / second.name / "optimizer.pt").open("ab") as handle:
        handle.write(b"x")  # a torn write: the size no longer matches
    found = inspect_path(root)
    assert found.checkpoint is not None and found.checkpoint.name == third.name
    first, middle, last = found.checkpoints
    assert first.problem is not None and "no manifest.json" in first.problem
    assert middle.problem is not None and "optimizer.pt has" in middle.problem
    assert last.problem is None
    assert len(found.warnings) == 2
    assert newest.name in found.warnings[0] and second.name in found.warnings[1]
    # Given directly, a broken folder is still shown, with what is wrong with it.
    direct = inspect_path(root / newest.name).checkpoint
    assert direct is not None and direct.problem is not None and direct.training is not None


def test_deep_check_finds_a_same_size_corruption(lineage: Lineage, tmp_path) -> None:
    root = copy_root(lineage.root, tmp_path)
    newest = inspect_path(root).checkpoints[0]
    optimizer = root / newest.name / "optimizer.pt"
    data = bytearray(optimizer.read_bytes())
    data[-1] ^= 0xFF
    optimizer.write_bytes(bytes(data))
    assert check_manifest(root / newest.name) is None
    assert "sha256" in (check_manifest(root / newest.name, deep=True) or "")
    deep = inspect_path(root, deep=True)
    assert deep.checkpoint is not None and deep.checkpoint.name != newest.name
    assert deep.checkpoints[0].problem is not None


def test_inspecting_loads_no_torch(lineage: Lineage) -> None:
    code = (
        "import sys\n"
        "import service.checkpoints.catalog\n"
        "assert 'torch' not in sys.modules\n"
        "from pathlib import Path\n"
        f"found = service.checkpoints.catalog.inspect_path(Path({str(lineage.root)!r}), deep=True)\n"
        "assert found.checkpoint.parameters > 0\n"
        "loaded = sorted(m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_file_names_agree_with_the_trainer() -> None:
    import service.checkpoints.catalog as inspection
    import trainer.checkpoint
    import trainer.export
    import trainer.records.checkpoints

    assert inspection.CHECKPOINT_FILES == trainer.checkpoint.FILES
    assert inspection.EXPORT_FILES == trainer.export.EXPORT_FILES
    assert inspection.MANIFEST == trainer.checkpoint.MANIFEST
    # The trainer and the catalog find step folders by the one reader in the records.
    assert trainer.checkpoint.step_folders is trainer.records.checkpoints.step_folders
    assert inspection.EXPORT_INFO == trainer.export.INFO


def test_format_1_fixture(tmp_path) -> None:
    root = copy_root(FIXTURE, tmp_path)
    found = inspect_path(root)
    view = found.checkpoint
    assert view is not None and view.name == "step-00000012" and view.problem is None
    training = view.training
    assert training is not None and training.format_version == 1
    assert [(f.name, f.start_step, f.end_step, f.steps) for f in training.lineage] == [
        ("day1.jsonl", 0, 7, 7),
        ("day2.jsonl", 7, 12, 5),
    ]
    assert training.global_step == 12 and training.current_file is None
    assert training.gold is None and training.gold_history == () and training.eval_history == ()
    assert all(f.n_holdout is None and f.holdout_fraction is None for f in training.lineage)
    assert view.notes == ()
    from trainer.config import ModelConfig
    from trainer.model import GPT

    assert view.parameters == GPT(ModelConfig.from_dict(view.architecture)).num_params()


def test_format_2_gold_eval_and_holdout_fields(lineage: Lineage, tmp_path) -> None:
    root = copy_root(lineage.root, tmp_path)
    newest = root / inspect_path(root).checkpoints[0].name
    state = json.loads((newest / "training_state.json").read_text())
    first = {"step": 5, "val_loss": 5.5, "train_loss": 5.4, "sets": {"recent": 5.6}}
    gold = {**first, "step": 10, "val_loss": 5.1, "prev_best": 5.5, "promoted_at": "2026-01-02"}
    files = [{**f, "holdout_fraction": 0.1, "n_holdout": 4} for f in state["files_completed"]]
    rewrite_state(
        newest,
        format_version=2,
        eval_history=[first, {"step": 10, "val_loss": 5.1, "train_loss": 5.0, "sets": {}}],
        gold=gold,
        gold_history=[{**first, "prev_best": None, "promoted_at": "2026-01-01"}, gold],
        files_completed=files,
    )
    for name in ("gold", "export"):  # the trainer may have written its own
        shutil.rmtree(root / name, ignore_errors=True)
    shutil.copytree(newest, root / "gold")
    (root / "export").mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        shutil.copy(newest / name, root / "export" / name)
    (root / "export" / "export.json").write_text(json.dumps({"step": 10, "dtype": "bfloat16"}))
    seal(root / "export")

    found = inspect_path(root)
    training = found.checkpoint.training  # type: ignore[union-attr]
    assert training is not None and training.format_version == 2
    assert [r.step for r in training.eval_history] == [5, 10]
    assert training.gold is not None and training.gold.prev_best == 5.5
    assert training.gold.sets == {"recent": 5.6}
    assert [(r.step, r.val_loss) for r in training.gold_history] == [(5, 5.5), (10, 5.1)]
    assert all(f.n_holdout == 4 for f in training.lineage)
    assert found.gold is not None and found.gold.problem is None and found.gold.val_loss == 5.1
    assert found.export is not None and found.export.export_info == {
        "step": 10,
        "dtype": "bfloat16",
    }
    assert found.export.step == 10 and found.export.problem is None

    gold = inspect_path(root / "gold")
    assert gold.kind == "gold" and gold.checkpoint is not None and gold.checkpoint.problem is None
    export = inspect_path(root / "export")
    assert export.kind == "export" and export.checkpoint is not None
    assert export.checkpoint.export_info == {"step": 10, "dtype": "bfloat16"}
    assert export.checkpoint.parameters == lineage.parameters
    assert export.checkpoint.training is None and export.checkpoint.problem is None
    (root / "export" / "manifest.json").unlink()
    unsealed = inspect_path(root / "export").checkpoint
    assert unsealed is not None and "no manifest.json" in (unsealed.problem or "")


def test_gaps_in_the_lineage_are_noted(lineage: Lineage, tmp_path) -> None:
    """Steps of a file cancelled part-way belong to no finished file: say so."""
    root = copy_root(lineage.root, tmp_path)
    newest = root / inspect_path(root).checkpoints[0].name
    state = json.loads((newest / "training_state.json").read_text())
    rewrite_state(newest, files_completed=state["files_completed"][1:])
    view = inspect_path(newest).checkpoint
    assert view is not None and view.problem is None
    start = lineage.files[1][1]
    assert view.notes == (f"steps 0 → {start} belong to no finished file",)


@pytest.mark.parametrize("make", ["missing", "file", "empty", "unrelated"])
def test_what_is_not_a_checkpoint_is_refused(tmp_path, make: str) -> None:
    path = tmp_path / "thing"
    if make == "file":
        path.write_text("hello")
    elif make == "empty":
        path.mkdir()
    elif make == "unrelated":
        path.mkdir()
        (path / "notes.txt").write_text("hi")
        (path / "step-12").mkdir()  # not eight digits: not a step checkpoint
    with pytest.raises(InspectionError, match=str(path)):
        inspect_path(path)


def test_an_unreadable_weights_header_is_a_note_not_a_crash(lineage: Lineage, tmp_path) -> None:
    folder = Path(
        shutil.copytree(
            lineage.root / inspect_path(lineage.root).checkpoints[0].name,
            tmp_path / "step-00000001",
        )
    )
    (folder / "model.safetensors").write_bytes(b"\xff" * 16)
    view = inspect_path(folder).checkpoint
    assert view is not None and view.parameters is None
    assert view.problem is not None and "model.safetensors" in view.problem
    assert any("weights header unreadable" in n for n in view.notes)
