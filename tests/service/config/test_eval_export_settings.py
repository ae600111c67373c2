"""``[eval]`` scoring the same sequences whatever the training batch, the deprecated
``eval.iters``, and ``export.from``: read from the file, handed to the trainer, refused
with the key and the reason when they cannot work."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from service.config.settings import SettingsError, load_settings
from service.config.template import render_default_config


@pytest.fixture(autouse=True)
def clean_env(clean_env: Path) -> Path:
    work = clean_env / "cwd"
    work.mkdir()
    os.chdir(work)
    return work


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_the_eval_selection_does_not_follow_the_training_batch(clean_env: Path) -> None:
    configs = []
    for micro in (8, 2):
        config = write(clean_env / f"m{micro}.toml", f"[train]\nmicro_batch_size = {micro}\n")
        configs.append(load_settings(config).eval_config())
    assert configs[0] == configs[1]
    assert (configs[0].sequences, configs[0].batch_size) == (160, 8)


def test_iters_is_read_as_sequences_with_a_warning(clean_env: Path, caplog) -> None:
    config = write(clean_env / "t.toml", "[eval]\niters = 5\nbatch_size = 4\n")
    with caplog.at_level(logging.WARNING):
        settings = load_settings(config)
    assert settings.eval_config().sequences == 20
    assert "eval.iters is deprecated: it means eval.sequences = 20" in caplog.text
    both = write(clean_env / "both.toml", "[eval]\niters = 5\nsequences = 40\n")
    with pytest.raises(SettingsError, match=r"set eval\.sequences only"):
        load_settings(both)


def test_export_from_gold_needs_an_evaluation(clean_env: Path) -> None:
    config = write(clean_env / "g.toml", '[export]\nfrom = "gold"\n')
    with pytest.raises(SettingsError, match=r'export.from = "gold" needs an evaluation'):
        load_settings(config)
    config = write(
        clean_env / "g.toml", '[export]\nfrom = "gold"\n[eval]\nholdout_fraction = 0.1\n'
    )
    assert load_settings(config).export_config().source == "gold"
    wrong = write(clean_env / "w.toml", '[export]\nfrom = "best"\n')
    with pytest.raises(SettingsError, match=r"export\.from"):
        load_settings(wrong)


def test_the_template_spells_the_key_from() -> None:
    text = render_default_config()
    export = text[text.index("[export]") : text.index("[ledger]")]
    assert '\nfrom = "latest"\n' in export and "\nsource =" not in export
    assert "\nat_file_end = true\n" in text and "\n# sequences = 160\n" in text
