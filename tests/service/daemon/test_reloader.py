"""SIGHUP to traind serve (service.daemon.reloader): the handler only sets a flag, the
reloader's thread reloads; an accepted reload is written for the worker before it is put
in force, logged key by key and recorded; a file refused whole changes nothing."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import pytest

from service.config.in_force import IN_FORCE_NAME, InForce, read_in_force, write_in_force
from service.config.settings import load_settings
from service.daemon.reloader import Reloader
from trainer.records.events import EventLog


class Held:
    """What the daemon holds: the settings in force, replaced by ``put``."""

    def __init__(self, config: Path) -> None:
        settings = load_settings(config)
        self.path = settings.paths.state / IN_FORCE_NAME
        self.in_force = InForce(settings=settings, revision=1, loaded_at="start")
        write_in_force(self.path, self.in_force)
        self.events = EventLog(settings.paths.state / "events.jsonl")
        self.reloader = Reloader(
            current=lambda: self.in_force, put=self.put, path=self.path, events=self.events
        )

    def put(self, in_force: InForce) -> None:
        # Written for the worker before the main process uses it.
        assert read_in_force(self.path).revision == in_force.revision
        self.in_force = in_force

    def events_of(self, kind: str) -> list[dict]:
        lines = self.events.path.read_text().splitlines() if self.events.path.exists() else []
        return [r for r in map(json.loads, lines) if r["event"] == kind]


@pytest.fixture
def config(clean_env) -> Path:
    path = clean_env / "traind.toml"
    path.write_text("[server]\nport = 8400\n\n[train]\nlearning_rate = 0.0003\n")
    return path


def test_an_accepted_reload_is_written_put_in_force_logged_and_recorded(config, caplog):
    held = Held(config)
    config.write_text("[server]\nport = 8500\n\n[train]\nlearning_rate = 0.001\n")
    caplog.set_level(logging.INFO, logger="service.daemon.reloader")
    assert held.reloader.reload().revision == 2
    assert held.in_force.revision == 2
    settings = read_in_force(held.path).settings
    assert (settings.train.learning_rate, settings.server.port) == (0.001, 8400)
    [event] = held.events_of("settings_reloaded")
    assert event["revision"] == 2
    assert event["changed"] == {"train.learning_rate": [0.0003, 0.001]}
    assert list(event["refused"]) == ["server.port"]
    assert event["refused"]["server.port"].startswith("needs a restart: ")
    assert (
        "settings reloaded: train.learning_rate 0.0003 -> 0.001 (applies from the next file)"
        in caplog.messages
    )
    assert any(
        m.startswith("settings reload refused server.port 8400 -> 8500") for m in caplog.messages
    )

    # Only refused changes: recorded, and no new revision for the worker.
    held.reloader.reload()
    assert held.in_force.revision == read_in_force(held.path).revision == 2
    assert held.events_of("settings_reloaded")[-1]["changed"] == {}


def test_a_file_refused_whole_changes_nothing(config, caplog):
    held = Held(config)
    before = held.path.read_bytes()
    config.write_text("[train]\nlearning_rate = 0.001\n[train\n")
    caplog.set_level(logging.ERROR, logger="service.daemon.reloader")
    assert held.reloader.reload().revision == 1
    assert held.in_force.settings.train.learning_rate == 0.0003
    assert held.path.read_bytes() == before
    [failed] = held.events_of("settings_reload_failed")
    assert failed["revision"] == 1 and "not valid TOML" in failed["error"]
    assert held.events_of("settings_reloaded") == []
    assert "settings reload refused, the settings in force stay (revision 1)" in caplog.text


def test_sighup_only_asks_and_the_reloader_thread_reloads(config):
    held = Held(config)
    previous = held.reloader.install()
    held.reloader.start()
    try:
        config.write_text("[server]\nport = 8400\n\n[train]\nlearning_rate = 0.002\n")
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 10
        while held.in_force.revision == 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert held.in_force.settings.train.learning_rate == 0.002
    finally:
        held.reloader.stop()
        signal.signal(signal.SIGHUP, previous)
