"""``[model.lora]``, ``model.new_tokens``, ``model.unfreeze_base_rows_at_step`` and
``export.adapter_only``: read from the file and the environment, handed to the trainer, and
refused with the key and the reason when they cannot work."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from service.config.settings import SettingsError, load_settings
from trainer.config import LoraConfig


@pytest.fixture(autouse=True)
def clean_env(clean_env: Path) -> Path:
    work = clean_env / "cwd"
    work.mkdir()
    os.chdir(work)
    return work


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_lora_and_new_tokens_from_the_file_reach_the_lineage_spec(clean_env: Path) -> None:
    write(clean_env / "conf" / "tokens.txt", "<lang:xx>\n\n <with space>\n<lang:xx>\n")
    config = write(
        clean_env / "conf" / "traind.toml",
        '[model]\nnew_tokens = "tokens.txt"\nunfreeze_base_rows_at_step = 500\n'
        '[model.lora]\nr = 16\nalpha = 32.0\nmodules_to_save = ["norm_f"]\n',
    )
    spec = load_settings(config).lineage_spec()
    assert spec.lora == LoraConfig(r=16, alpha=32.0, modules_to_save=("norm_f",))
    # Relative to the file's folder; empty lines skipped, a repeated token once, spaces kept.
    assert spec.new_tokens == ("<lang:xx>", " <with space>")
    assert spec.unfreeze_base_rows_at_step == 500


def test_lora_from_the_environment_and_unset_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().lineage_spec().lora is None
    monkeypatch.setenv("TRAIND_MODEL__LORA", json.dumps({"r": 4, "target_modules": ["qkv"]}))
    assert load_settings().lineage_spec().lora == LoraConfig(r=4, target_modules=("qkv",))
    monkeypatch.setenv("TRAIND_MODEL__LORA", "null")
    assert load_settings().lineage_spec().lora is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[model.lora]\nr = 0\n", "model.lora.r: Input should be greater than or equal to 1"),
        ("[model.lora]\nrank = 8\n", "model.lora.rank: unknown key"),
        ("[model.lora]\ndropout = 1.0\n", "model.lora.dropout: Input should be less than 1"),
        ('[model]\nnew_tokens = "missing.txt"\n', "missing.txt does not exist"),
        ("[model]\nunfreeze_base_rows_at_step = -1\n", "greater than or equal to 0"),
    ],
)
def test_bad_values_name_the_key(clean_env: Path, text: str, expected: str) -> None:
    write(clean_env / "traind.toml", text)
    with pytest.raises(SettingsError, match=expected):
        load_settings()


def test_a_bad_tokens_file_names_its_line(clean_env: Path) -> None:
    write(clean_env / "tokens.txt", "<ok>\n" + "x" * 300 + "\n")
    write(clean_env / "traind.toml", '[model]\nnew_tokens = "tokens.txt"\n')
    with pytest.raises(SettingsError, match=r"tokens.txt, line 2: 300 characters"):
        load_settings()


def test_adapter_only_exports_need_lora_on_a_hugging_face_model(clean_env: Path) -> None:
    write(clean_env / "traind.toml", "[model.lora]\nr = 4\n[export]\nadapter_only = true\n")
    with pytest.raises(SettingsError, match=r"needs \[model.lora\] on a Hugging Face model"):
        load_settings()
