"""The bearer token: where it comes from, which routes need it, and the bind check."""

from __future__ import annotations

import logging
import stat

import httpx
import pytest

from api.web.auth import (
    MAKE_TOKEN,
    BindError,
    TokenError,
    check_bind,
    is_loopback,
    resolve_token,
)
from api.web.server import run_server
from tests.api.conftest import VALID, LiveApi, api_settings

POSTS = [
    "/v1/files",
    "/v1/files/1/retry",
    "/v1/files/1/cancel",
    "/v1/pause",
    "/v1/resume",
    "/v1/checkpoints",
    "/v1/eval",
    "/v1/files/requeue-rolled-back",
]
READS = [
    "/v1/status",
    "/v1/queue",
    "/v1/files/1",
    "/v1/checkpoints",
    "/v1/gold",
]
REMOTE = {"X-Forwarded-For": "203.0.113.7"}
"""uvicorn trusts this header from 127.0.0.1 (its default), as from a local proxy."""


@pytest.mark.parametrize("path", POSTS)
def test_every_post_route_needs_the_token(api: LiveApi, path: str) -> None:
    assert api.client is not None
    missing = api.client.post(path)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer <token>" in missing.json()["detail"]

    wrong = api.post(path, token="not-the-token")
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"] == "Bearer"
    assert wrong.json()["detail"].startswith("wrong bearer token")

    basic = api.client.post(path, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401

    right = api.post(path, files={"file": ("a.jsonl", VALID)} if path == "/v1/files" else None)
    assert right.status_code in (200, 202, 404), right.json()  # 404: there is no file #1


def test_a_non_ascii_token_is_a_401_not_a_500(api: LiveApi) -> None:
    assert api.client is not None
    response = api.client.post("/v1/pause", headers={"Authorization": b"Bearer \xff\xfe"})
    assert response.status_code == 401


def test_reads_from_loopback_need_no_token(api: LiveApi) -> None:
    assert api.client is not None
    for path in READS:
        assert api.client.get(path).status_code in (200, 404), path


@pytest.mark.parametrize("path", READS)
def test_reads_from_elsewhere_need_the_token(api: LiveApi, path: str) -> None:
    response = api.get(path, headers=REMOTE)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert api.get(path, headers={**REMOTE, **api.auth()}).status_code in (200, 404)


def test_probes_are_open_from_anywhere(api: LiveApi) -> None:
    assert api.get("/livez", headers=REMOTE).status_code == 200
    assert api.get("/readyz", headers=REMOTE).status_code == 503  # no worker: not a 401


def test_a_generated_token_is_private_and_reused_after_a_restart(
    api_factory, clean_env, caplog: pytest.LogCaptureFixture
) -> None:
    root = clean_env / "run"
    with caplog.at_level(logging.INFO, logger="api.web.auth"):
        first = api_factory(root)
    path = root / "state" / "api-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == first.token
    assert len(first.token) >= 43  # token_urlsafe(32)
    assert f"generated an API token in {path}" in caplog.text
    assert first.post("/v1/pause").status_code == 202
    first.stop()

    second = api_factory(root)
    assert second.token == first.token
    assert second.post("/v1/resume", token=first.token).status_code == 202
    assert [p.name for p in path.parent.iterdir() if "api-token" in p.name] == ["api-token"]


def test_server_token_setting_wins_and_writes_no_file(api_factory, clean_env) -> None:
    api = api_factory(server={"token": "s3cret-from-settings"})
    assert api.token == "s3cret-from-settings"
    assert not (clean_env / "run" / "state" / "api-token").exists()
    assert api.post("/v1/pause", token="s3cret-from-settings").status_code == 202


def test_an_empty_token_file_is_refused_with_its_path(clean_env) -> None:
    settings = api_settings(clean_env)
    settings.paths.state.mkdir(parents=True)
    (settings.paths.state / "api-token").write_text("\n")
    with pytest.raises(TokenError, match="api-token is empty; delete it"):
        resolve_token(settings)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("example.com", False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_check_bind_refuses_a_public_address_without_a_token(clean_env) -> None:
    with pytest.raises(BindError, match=r"'0\.0\.0\.0'.*set server\.token"):
        check_bind(api_settings(clean_env, server={"host": "0.0.0.0"}))
    check_bind(api_settings(clean_env, server={"host": "0.0.0.0", "token": "a-long-random-secret"}))
    check_bind(api_settings(clean_env, server={"host": "::1"}))
    check_bind(api_settings(clean_env))


def test_serve_exits_2_on_a_public_address_without_a_token(
    clean_env, caplog: pytest.LogCaptureFixture
) -> None:
    settings = api_settings(clean_env, server={"host": "0.0.0.0"})
    with caplog.at_level(logging.ERROR, logger="api.web.server"):
        assert run_server(settings) == 2
    assert "server.token is not set" in caplog.text
    assert not settings.paths.state.exists()  # refused before anything started


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
@pytest.mark.parametrize("token", [" ", "\t\n  "])
def test_a_whitespace_token_that_would_guard_nothing_is_refused_on_any_address(
    clean_env, host: str, token: str
) -> None:
    settings = api_settings(clean_env, server={"host": host, "token": token})
    expected = r"server\.token \(or TRAIND_SERVER__TOKEN\) is empty or only whitespace"
    with pytest.raises(BindError, match=expected) as refused:
        check_bind(settings)
    assert MAKE_TOKEN in str(refused.value)
    with pytest.raises(TokenError, match=expected):
        resolve_token(settings)


@pytest.mark.parametrize(
    ("token", "length"), [("x", 1), ("  fifteen-chars!!  ", 15), ("012345678901234\n", 15)]
)
def test_a_short_token_is_refused_for_a_public_address(clean_env, token: str, length: int) -> None:
    settings = api_settings(clean_env, server={"host": "0.0.0.0", "token": token})
    with pytest.raises(BindError) as refused:
        check_bind(settings)
    message = str(refused.value)
    assert f"server.token (or TRAIND_SERVER__TOKEN) has only {length} character" in message
    assert "'0.0.0.0'" in message and "at least 16 random characters" in message
    assert MAKE_TOKEN in message and "bind to 127.0.0.1" in message
    with pytest.raises(TokenError, match="too few to guard"):
        resolve_token(settings)
    # The same token is fine on loopback, where only this machine can try it.
    loopback = api_settings(clean_env, server={"host": "127.0.0.1", "token": token})
    check_bind(loopback)
    assert resolve_token(loopback) == token.strip()
    sixteen = api_settings(clean_env, server={"host": "0.0.0.0", "token": " 0123456789abcdef\n"})
    check_bind(sixteen)
    assert resolve_token(sixteen) == "0123456789abcdef"


def test_serve_exits_2_on_a_public_address_with_a_short_token(
    clean_env, caplog: pytest.LogCaptureFixture
) -> None:
    settings = api_settings(clean_env, server={"host": "0.0.0.0", "token": "hunter2"})
    with caplog.at_level(logging.ERROR, logger="api.web.server"):
        assert run_server(settings) == 2
    assert "server.token (or TRAIND_SERVER__TOKEN) has only 7 characters" in caplog.text
    assert MAKE_TOKEN in caplog.text
    assert "hunter2" not in caplog.text  # the refusal never prints the secret
    assert not settings.paths.state.exists()  # refused before anything started


def test_a_token_set_with_surrounding_whitespace_works_without_it(api_factory) -> None:
    api = api_factory(server={"token": "  s3cret-from-settings\n"})
    assert api.token == "s3cret-from-settings"
    assert api.post("/v1/pause", token="s3cret-from-settings").status_code == 202


def test_the_token_is_compared_whole(api: LiveApi) -> None:
    assert api.post("/v1/pause", token=api.token[:-1]).status_code == 401
    assert api.post("/v1/pause", token=api.token + "x").status_code == 401
    assert httpx.codes.is_success(api.post("/v1/pause").status_code)
