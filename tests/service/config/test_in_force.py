"""The settings-in-force file (service.config.in_force): the worker reads back exactly
the settings the main process holds, whatever the environment says meanwhile; mode 0600;
and a write killed at any point leaves one whole file, the old or the new."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from service.config.in_force import (
    InForce,
    next_revision,
    read_in_force,
    read_revision,
    write_in_force,
)
from service.config.settings import SettingsError, load_settings

REPO = Path(__file__).resolve().parents[3]


def test_the_settings_read_back_exactly(clean_env, monkeypatch):
    (clean_env / "sets").mkdir()
    (clean_env / "sets" / "qa.jsonl").write_text('{"text": "1 + 1 = 2"}\n', encoding="utf-8")
    config = clean_env / "traind.toml"
    config.write_text(
        '[paths]\nstate = "var/state"\n\n[eval]\nsets = { qa = "sets/qa.jsonl" }\n\n'
        '[model]\npreset = "test"\ntokenizer = "bytes"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("TRAIND_TRAIN__SEED", "9")
    monkeypatch.setenv("TRAIND_MODEL__OVERRIDES__N_LAYER", "3")
    held = load_settings(config)
    path = clean_env / "var" / "state" / "settings-in-force.json"
    write_in_force(path, InForce(settings=held, revision=4, loaded_at="2026-01-02T03:04:05.000Z"))
    assert path.stat().st_mode & 0o777 == 0o600
    # The worker's environment does not count: the values were folded in when loaded.
    monkeypatch.setenv("TRAIND_TRAIN__SEED", "1")
    monkeypatch.delenv("TRAIND_MODEL__OVERRIDES__N_LAYER")
    monkeypatch.chdir("/")
    found = read_in_force(path)
    back = found.settings
    assert (found.revision, found.loaded_at) == (4, "2026-01-02T03:04:05.000Z")
    assert back.model_dump() == held.model_dump()
    assert back.config_file == held.config_file == config.resolve()
    assert back.train.seed == 9 and back.model.overrides == {"n_layer": 3}
    assert back.eval.sets["qa"] == clean_env / "sets" / "qa.jsonl"
    assert back.lineage_spec() == held.lineage_spec()
    assert back.lineage_spec().tokenizer_set  # which keys were set counts too
    assert back.train_config() == held.train_config()
    assert back.eval_config() == held.eval_config()


def test_revisions_go_on_from_the_last_one_written(tmp_path):
    path = tmp_path / "settings-in-force.json"
    assert (read_revision(path), next_revision(path)) == (None, 1)
    settings = load_settings(None, paths={"state": tmp_path})
    write_in_force(path, InForce(settings=settings, revision=3, loaded_at="x"))
    assert (read_revision(path), next_revision(path)) == (3, 4)
    path.write_text("{not json", encoding="utf-8")
    assert (read_revision(path), next_revision(path)) == (None, 1)
    with pytest.raises(SettingsError, match="cannot read the settings in force"):
        read_in_force(path)


WRITER = """
import sys
from pathlib import Path
from service.config.in_force import InForce, write_in_force
from service.config.settings import load_settings
state = Path(sys.argv[1])
settings = load_settings(None, paths={"state": state}, train={"learning_rate": 0.002})
write_in_force(state / "settings-in-force.json", InForce(settings=settings, revision=2, loaded_at="x"))
"""


@pytest.mark.parametrize(("point", "revision"), [("in_force:written", 1), ("in_force:renamed", 2)])
def test_a_write_killed_at_any_point_leaves_one_whole_file(tmp_path, point, revision):
    path = tmp_path / "settings-in-force.json"
    first = load_settings(None, paths={"state": tmp_path})
    write_in_force(path, InForce(settings=first, revision=1, loaded_at="x"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAIND_")}
    killed = subprocess.run(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        env={**env, "TRAIND_FAULT": point, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    found = read_in_force(path)
    assert found.revision == revision
    assert found.settings.train.learning_rate == (
        0.002 if revision == 2 else first.train.learning_rate
    )
    leftovers = list(tmp_path.glob(".settings-in-force.json.*.tmp"))
    assert len(leftovers) == (1 if revision == 1 else 0)
    # The next write goes through and clears what the killed one left.
    write_in_force(path, InForce(settings=first, revision=3, loaded_at="x"))
    assert read_in_force(path).revision == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings-in-force.json"]
