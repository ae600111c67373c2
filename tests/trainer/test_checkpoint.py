"""Atomic, verified checkpoints (ARCHITECTURE.md rule 8) and rotation."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import (
    FILES,
    MANIFEST,
    CheckpointContent,
    CheckpointError,
    latest_checkpoint,
    load_model_weights,
    read_checkpoint,
    recover_root,
    rotate,
    verify,
    write_checkpoint,
)
from trainer.model import GPT
from trainer.presets import model_config_for
from trainer.records.checkpoints import WEIGHTS, WEIGHTS_INDEX, step_folder
from trainer.weights import iter_tensors


def make_content(step: int, seed: int = 0) -> CheckpointContent:
    torch.manual_seed(seed)
    config = model_config_for("test", vocab_size=260)
    model = GPT(config)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()
    return CheckpointContent(
        model=model,
        optimizer_state=opt.state_dict(),
        config=config.to_dict(),
        tokenizer_json='{"version": "1.0"}',
        training_state={"format_version": 1, "global_step": step},
    )


def test_layout_and_manifest(tmp_path):
    path = write_checkpoint(tmp_path, step_folder(1400), make_content(1400))
    assert path.name == "step-00001400"
    assert sorted(p.name for p in path.iterdir()) == sorted([*FILES, WEIGHTS, MANIFEST])
    manifest = json.loads((path / MANIFEST).read_text())
    assert set(manifest["files"]) == {*FILES, WEIGHTS}
    assert verify(path) is None
    loaded = read_checkpoint(path)
    assert loaded.step == 1400
    assert set(loaded.weights()) >= {"wte.weight"}
    assert loaded.optimizer_state()["state"]  # torch.load(weights_only=True) reads it back
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_weights_round_trip_exactly(tmp_path):
    content = make_content(5, seed=3)
    path = write_checkpoint(tmp_path, "step-00000005", content)
    model = GPT(content.model.config)
    load_model_weights(model, read_checkpoint(path).weights())
    for (name, a), b in zip(
        content.model.state_dict().items(), model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_big_weights_are_sharded_with_an_index_and_load_one_tensor_at_a_time(tmp_path, monkeypatch):
    content = make_content(5, seed=4)
    sharded = CheckpointContent(**{**content.__dict__, "shard_bytes": 20_000})
    path = write_checkpoint(tmp_path, "step-00000005", sharded)
    index = json.loads((path / WEIGHTS_INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (path / WEIGHTS).exists()
    assert set(json.loads((path / MANIFEST).read_text())["files"]) == {
        *FILES,
        WEIGHTS_INDEX,
        *shards,
    }
    assert verify(path) is None
    # Loading never holds two saved tensors at once: each is copied into the model and
    # dropped before the next is read (a 1B model never needs its weights twice).
    alive, most = set(), 0

    def counted(folder):
        nonlocal most
        for name, tensor in iter_tensors(folder):
            alive.add(name)
            most = max(most, len(alive))
            yield name, tensor
            alive.discard(name)

    monkeypatch.setattr("trainer.weights.iter_tensors", counted)
    model = GPT(content.model.config)
    read_checkpoint(path).load_into(model)
    assert most == 1
    for name, tensor in content.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    (path / shards[1]).unlink()
    assert "missing" in verify(path)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: (p / MANIFEST).unlink(), "no manifest"),
        (lambda p: (p / "optimizer.pt").unlink(), "missing"),
        (lambda p: (p / "model.safetensors").write_bytes(b"short"), "bytes"),
        (lambda p: _flip_byte(p / "model.safetensors"), "sha256"),
        (lambda p: (p / MANIFEST).write_text("{not json"), "unreadable"),
    ],
)
def test_broken_checkpoint_is_not_loaded_and_falls_back(tmp_path, caplog, damage, reason):
    write_checkpoint(tmp_path, "step-00000010", make_content(10))
    newest = write_checkpoint(tmp_path, "step-00000020", make_content(20))
    damage(newest)
    assert reason in verify(newest)
    with pytest.raises(CheckpointError):
        read_checkpoint(newest)
    skipped = []
    found = latest_checkpoint(tmp_path, on_skip=lambda p, why: skipped.append(p.name))
    assert found.step == 10
    assert skipped == ["step-00000020"]
    assert "falling back" in caplog.text


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_rotation_keeps_newest_k_and_never_gold(tmp_path):
    for step in (1, 2, 3, 4, 5):
        write_checkpoint(tmp_path, step_folder(step), make_content(step))
    write_checkpoint(tmp_path, "gold", make_content(1))
    (tmp_path / "export").mkdir()
    removed = rotate(tmp_path, keep=3)
    assert sorted(p.name for p in removed) == ["step-00000001", "step-00000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "export",
        "gold",
        "step-00000003",
        "step-00000004",
        "step-00000005",
    ]


def test_rotation_does_not_count_a_broken_newest(tmp_path):
    for step in (1, 2, 3):
        write_checkpoint(tmp_path, step_folder(step), make_content(step))
    (tmp_path / "step-00000003" / MANIFEST).unlink()
    rotate(tmp_path, keep=1)
    assert latest_checkpoint(tmp_path).step == 2


def test_rewriting_a_name_replaces_it(tmp_path):
    write_checkpoint(tmp_path, "gold", make_content(1))
    write_checkpoint(tmp_path, "gold", make_content(9))
    assert read_checkpoint(tmp_path / "gold").step == 9
    assert [p.name for p in tmp_path.iterdir()] == ["gold"]


def test_recover_root_restores_gold_from_trash_and_clears_staging(tmp_path):
    write_checkpoint(tmp_path, "gold", make_content(4))
    # What a crash between the two renames of a replace leaves behind:
    os.rename(tmp_path / "gold", tmp_path / ".trash-gold-1234abcd")
    (tmp_path / ".staging-step-00000009-deadbeef").mkdir()
    recover_root(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gold"]
    assert read_checkpoint(tmp_path / "gold").step == 4


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_checkpoint import make_content
    from trainer.checkpoint import write_checkpoint
    write_checkpoint(Path(sys.argv[1]), sys.argv[2], make_content(int(sys.argv[3])))
    """
)


@pytest.mark.parametrize(
    "point",
    [
        "checkpoint:after_weights",
        "checkpoint:before_manifest",
        "checkpoint:before_rename",
        "checkpoint:after_rename",
    ],
)
def test_kill_during_write_never_leaves_a_loadable_broken_checkpoint(tmp_path, point):
    write_checkpoint(tmp_path, "step-00000010", make_content(10))
    script = WRITER.format(tests=str(Path(__file__).parent))
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), "step-00000020", "20"],
        env={**os.environ, "TRAIND_FAULT": point},
        capture_output=True,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    found = latest_checkpoint(tmp_path)
    # Before the rename the new checkpoint does not exist; after it, it is complete.
    assert found.step == (20 if point == "checkpoint:after_rename" else 10)
    assert verify(found.path) is None
    recover_root(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    for _step, path in [(s, tmp_path / step_folder(s)) for s in (10, 20)]:
        if path.exists():
            assert verify(path) is None


def test_safetensors_and_weights_only_are_the_only_formats():
    """Rule 12: nothing in trainer/ unpickles without weights_only=True."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2] / "trainer"
    for source in root.glob("*.py"):
        for call in re.findall(r"torch\.load\([^)]*\)", source.read_text()):
            assert "weights_only=True" in call, f"{source.name}: {call}"
        assert "import pickle" not in source.read_text(), source.name
