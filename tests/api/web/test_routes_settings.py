"""GET /v1/settings: the settings the daemon holds in force, secrets redacted."""

from __future__ import annotations

import httpx

from tests.api.live_server import TOKEN, live_traind


def test_the_settings_in_force_are_shown_without_the_token(tmp_path, clean_env):
    with live_traind(tmp_path, train={"learning_rate": 0.002}) as live:
        body = httpx.get(f"{live.url}/v1/settings", timeout=10).json()
        assert body["revision"] == live.daemon.in_force.revision == 1
    assert body["config_file"] is None and body["loaded_at"].endswith("Z")
    assert body["settings"]["train"]["learning_rate"] == 0.002
    assert body["settings"]["paths"]["state"] == str(tmp_path / "state")
    assert body["settings"]["server"]["token"] == "<redacted>"
    assert TOKEN not in str(body)
