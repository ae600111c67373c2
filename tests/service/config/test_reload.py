"""Reading traind.toml again in a running service (service.config.reload): what a reload
takes, what it refuses and why, what a file that does not load does, and what people see
of the secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.config.reload import FIXED, REDACTED, redacted, reread
from service.config.settings import SettingsError, load_settings

TOKEN = "a-long-secret-token-that-nobody-may-see"
PASSWORD = "hunter2-secret"


def settings_file(folder: Path, *, lr: float = 0.0003, port: int = 8400, extra: str = "") -> Path:
    path = folder / "traind.toml"
    path.write_text(
        f"""
[server]
port = {port}
token = "{TOKEN}"

[train]
learning_rate = {lr}

[gold]
overfit_ratio = 1.5
{extra}
""",
        encoding="utf-8",
    )
    return path


def test_training_settings_are_taken_and_the_others_refused_with_their_reason(clean_env):
    path = settings_file(clean_env)
    current = load_settings(path)
    # lr changed, eval.interval added, [gold] removed (back to its default), the port and
    # the model changed: the first three are taken, the last two refused, all in one go.
    path.write_text(
        path.read_text()
        .replace("0.0003", "0.001")
        .replace("8400", "8500")
        .replace(
            "[gold]\noverfit_ratio = 1.5", '[eval]\ninterval = 50\n\n[model]\npreset = "test"'
        ),
        encoding="utf-8",
    )
    result = reread(current)
    assert result.event_fields() == {
        "changed": {
            "train.learning_rate": [0.0003, 0.001],
            "eval.interval": [500, 50],
            "gold.overfit_ratio": [1.5, load_settings(None).gold.overfit_ratio],
        },
        "refused": {"server.port": FIXED["server"], "model.preset": FIXED["model"]},
    }
    assert FIXED["server"].startswith("needs a restart: ")
    kept = result.settings
    assert (kept.train.learning_rate, kept.eval.interval) == (0.001, 50)
    assert (kept.server.port, kept.model.preset) == (8400, current.model.preset)
    assert kept.config_file == current.config_file
    accepted, refused = result.log_lines()
    assert accepted[0] == (
        "settings reloaded: train.learning_rate 0.0003 -> 0.001 (applies from the next file)"
    )
    assert refused[0] == (
        f"settings reload refused server.port 8400 -> 8500 ({FIXED['server']}); "
        "the old value stays in force"
    )


def test_the_environment_still_wins_over_the_file(clean_env, monkeypatch):
    monkeypatch.setenv("TRAIND_TRAIN__LEARNING_RATE", "0.002")
    path = settings_file(clean_env)
    current = load_settings(path)
    settings_file(clean_env, lr=0.01)
    result = reread(current)
    assert (result.changed, result.refused) == ((), ())
    assert result.settings.train.learning_rate == 0.002


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[train\nlearning_rate = 1", "not valid TOML"),
        ("[train]\nlearning_rate = -1", "train.learning_rate"),
        ("[train]\nlearning_rat = 1", "unknown key"),
    ],
    ids=["not-toml", "bad-value", "unknown-key"],
)
def test_a_file_that_does_not_load_is_refused_whole(clean_env, text, problem):
    current = load_settings(settings_file(clean_env))
    (clean_env / "traind.toml").write_text(text, encoding="utf-8")
    with pytest.raises(SettingsError, match=problem):
        reread(current)


def test_without_a_settings_file_there_is_nothing_to_reread(clean_env):
    with pytest.raises(SettingsError, match="without a settings file"):
        reread(load_settings(None))


def test_secrets_are_never_shown(clean_env):
    url = f"postgresql+psycopg://traind:{PASSWORD}@db.example/traind"
    path = settings_file(clean_env, extra=f'\n[ledger]\nurl = "{url}"\n')
    current = load_settings(path)
    shown = redacted(current)
    assert shown["server"]["token"] == REDACTED
    assert shown["ledger"]["url"] == "postgresql+psycopg://traind:***@db.example/traind"
    assert shown["train"]["learning_rate"] == 0.0003
    # Both secrets changed: refused, named, and still not shown.
    path.write_text(
        path.read_text().replace(TOKEN, TOKEN + "-new").replace(PASSWORD, "other-secret"),
        encoding="utf-8",
    )
    result = reread(current)
    assert set(result.event_fields()["refused"]) == {"server.token", "ledger.url"}
    accepted, refused = result.log_lines()
    assert refused[0].startswith("settings reload refused server.token changed (needs a restart")
    everything = json.dumps(
        [result.event_fields(), accepted, refused, [str(c) for c, _ in result.refused]]
    )
    for secret in (TOKEN, PASSWORD, "other-secret"):
        assert secret not in everything
    assert result.settings.server.token == TOKEN  # the old value stays in force
