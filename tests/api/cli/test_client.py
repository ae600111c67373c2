"""ApiClient against a fake traind (tests/api/fake_traind.py): one test per route, error
mapping, the token header, and how the URL and token are discovered."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.cli.client import (
    FILE_STATES,
    ApiClient,
    ApiError,
    ServerUnreachableError,
    discover_token,
    discover_url,
)
from service.config.settings import Settings, load_settings
from service.ledger import FileState
from tests.api.fake_traind import TOKEN, FakeTraind

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture(scope="module")
def server() -> Iterator[FakeTraind]:
    with FakeTraind().serving() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeTraind) -> FakeTraind:
    server.reset()
    return server


@pytest.fixture
def client(fake: FakeTraind) -> Iterator[ApiClient]:
    with ApiClient(fake.url, token=TOKEN) as api:
        yield api


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- one method per route -----------------------------------------------------------------


def test_status(client: ApiClient, fake: FakeTraind) -> None:
    assert client.status() == fake.status
    assert [s.method for s in fake.requests_to("/v1/status")] == ["GET"]


def test_queue_passes_filters_and_paging(client: ApiClient, fake: FakeTraind) -> None:
    page = client.queue(states=["queued", "failed"], limit=1, offset=1)
    assert page["total"] == 2
    assert [item["id"] for item in page["items"]] == [5]
    assert fake.seen[-1].query == "state=queued&state=failed&limit=1&offset=1"


def test_queue_defaults(client: ApiClient, fake: FakeTraind) -> None:
    page = client.queue()
    assert page["total"] == len(fake.files)
    assert fake.seen[-1].query == "limit=50&offset=0"


def test_file(client: ApiClient) -> None:
    answer = client.file(4)
    assert answer["state"] == "rejected"
    assert "line 3" in answer["error"]


def test_enqueue_uploads_the_file_as_field_file(
    client: ApiClient, fake: FakeTraind, tmp_path: Path
) -> None:
    drop = tmp_path / "day9.jsonl"
    content = b'{"text": "2+2=4"}\n' * 100
    drop.write_bytes(content)
    answer = client.enqueue(drop)
    assert answer["name"] == "upload-20250101T000000Z-0001--day9.jsonl"
    assert fake.uploads == [("day9.jsonl", content)]
    assert fake.seen[-1].method == "POST"
    assert fake.seen[-1].path == "/v1/files"


def test_retry_and_cancel(client: ApiClient) -> None:
    assert client.retry(5)["state"] == "queued"
    assert client.retry(4)["requeued_as"] == "retry-0001--bad.jsonl"  # 202, still rejected
    assert client.cancel(3)["state"] == "cancelled"
    assert client.cancel(2)["state"] == "training"  # 202: stops at its next step


def test_pause_resume_and_checkpoints(client: ApiClient, fake: FakeTraind) -> None:
    assert client.pause()["desired_state"] == "paused"
    assert fake.status["desired_state"] == "paused"
    assert client.resume()["desired_state"] == "running"
    assert client.checkpoint()["checkpoint_requested_at"]
    assert client.checkpoints()["items"][0]["step"] == 200
    assert client.gold()["gold"]["step"] == 200
    posts = [(s.method, s.path) for s in fake.seen if s.method == "POST"]
    assert posts == [("POST", "/v1/pause"), ("POST", "/v1/resume"), ("POST", "/v1/checkpoints")]


def test_file_states_match_the_ledger() -> None:
    assert tuple(state.value for state in FileState) == FILE_STATES


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "status", "detail"),
    [
        (lambda c: c.file(99), 404, "no file #99; GET /v1/queue lists the files"),
        (lambda c: c.retry(1), 409, "file 1 is done: only failed, cancelled or rejected"),
        (lambda c: c.cancel(1), 409, "file 1 is done: only queued or training files"),
    ],
)
def test_refusals_carry_the_server_detail(
    client: ApiClient, call, status: int, detail: str
) -> None:
    with pytest.raises(ApiError) as caught:
        call(client)
    assert caught.value.status == status
    assert caught.value.detail.startswith(detail)
    assert not isinstance(caught.value, ServerUnreachableError)


def test_upload_too_large_is_413(fake: FakeTraind, tmp_path: Path) -> None:
    drop = tmp_path / "big.jsonl"
    drop.write_bytes(b"x" * (fake.max_file_bytes + 1))
    with ApiClient(fake.url, token=TOKEN) as api, pytest.raises(ApiError) as caught:
        api.enqueue(drop)
    assert caught.value.status == 413
    assert "watcher.max_file_bytes" in caught.value.detail


def test_validation_errors_become_one_readable_line(client: ApiClient) -> None:
    with pytest.raises(ApiError) as caught:
        client.queue(limit=100_000)
    assert caught.value.status == 422
    assert caught.value.detail.startswith("query.limit: ")


def test_non_json_error_body_is_shown_as_text(client: ApiClient, fake: FakeTraind) -> None:
    fake.fail_next(502, "upstream went away")
    with pytest.raises(ApiError) as caught:
        client.status()
    assert (caught.value.status, caught.value.detail) == (502, "upstream went away")


def test_html_error_body_falls_back_to_the_status_line(client: ApiClient, fake: FakeTraind) -> None:
    fake.fail_next(503, "<html>busy</html>", media_type="text/html")
    with pytest.raises(ApiError, match=r"^HTTP 503 Service Unavailable$"):
        client.status()


def test_a_non_json_success_says_it_may_not_be_traind(client: ApiClient, fake: FakeTraind) -> None:
    fake.fail_next(200, "hello from nginx")
    with pytest.raises(ApiError, match="other than JSON: is it traind"):
        client.status()


def test_unreachable_server_says_so_without_a_traceback() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with ApiClient(url) as api, pytest.raises(ServerUnreachableError) as caught:
        api.status()
    assert caught.value.status is None
    assert str(caught.value) == (
        f"cannot reach traind at {url}: is `traind serve` running? (connection refused)"
    )
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_a_server_that_does_not_answer_in_time(fake: FakeTraind) -> None:
    fake.delay_s = 1.0
    with ApiClient(fake.url, timeout=0.2) as api, pytest.raises(ServerUnreachableError) as caught:
        api.status()
    assert str(caught.value) == f"traind at {fake.url} did not answer within 0.2 s"


def test_bad_base_url_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="not an http"):
        ApiClient("localhost:8321")


# -- the token ----------------------------------------------------------------------------


def test_token_is_sent_as_bearer_on_every_request(client: ApiClient, fake: FakeTraind) -> None:
    client.status()
    client.pause()
    assert {s.authorization for s in fake.seen} == {f"Bearer {TOKEN}"}


def test_no_token_no_header_and_posts_get_401(fake: FakeTraind) -> None:
    with ApiClient(fake.url) as api:
        assert api.status()["state"] == "training"  # reads are open on loopback
        with pytest.raises(ApiError) as caught:
            api.pause()
    assert caught.value.status == 401
    assert caught.value.detail == "missing or wrong API token"
    assert {s.authorization for s in fake.seen} == {None}


def test_wrong_token_gets_401(fake: FakeTraind) -> None:
    with ApiClient(fake.url, token="nope") as api, pytest.raises(ApiError) as caught:
        api.resume()
    assert caught.value.status == 401


# -- discovery ----------------------------------------------------------------------------


def settings_with(tmp_path: Path, **server: object) -> Settings:
    return load_settings(paths={"state": tmp_path / "state"}, server=server)


class Loader:
    """Settings for discovery, counting the loads (they happen only when needed)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.calls = 0

    def __call__(self) -> Settings:
        self.calls += 1
        return self.settings


def test_token_order_explicit_env_setting_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "api-token").write_text("from-file\n", encoding="utf-8")
    with_setting = Loader(settings_with(tmp_path, token="from-setting"))
    without_setting = Loader(settings_with(tmp_path))

    monkeypatch.setenv("TRAIND_TOKEN", "from-env")
    assert discover_token("explicit", settings=with_setting) == "explicit"
    assert discover_token(None, settings=with_setting) == "from-env"
    assert with_setting.calls == 0  # not even loaded
    monkeypatch.delenv("TRAIND_TOKEN")
    assert discover_token(None, settings=with_setting) == "from-setting"
    assert discover_token(None, settings=without_setting) == "from-file"


def test_no_token_file_or_an_empty_one_means_none(tmp_path: Path) -> None:
    load = Loader(settings_with(tmp_path))
    assert discover_token(None, settings=load) is None  # no state folder yet
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "api-token").write_text("  \n", encoding="utf-8")
    assert discover_token(None, settings=load) is None


def test_a_token_path_that_is_not_a_file_means_none(tmp_path: Path) -> None:
    (tmp_path / "state" / "api-token").mkdir(parents=True)
    assert discover_token(None, settings=Loader(settings_with(tmp_path))) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_token_file_means_none(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    token_file = tmp_path / "state" / "api-token"
    token_file.write_text("secret", encoding="utf-8")
    token_file.chmod(0)
    try:
        assert discover_token(None, settings=Loader(settings_with(tmp_path))) is None
    finally:
        token_file.chmod(0o600)


def test_url_order_explicit_env_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load = Loader(settings_with(tmp_path, host="10.0.0.5", port=9000))
    monkeypatch.setenv("TRAIND_URL", "http://from-env:1/")
    assert discover_url("http://explicit:2/", settings=load) == "http://explicit:2"
    assert discover_url(None, settings=load) == "http://from-env:1"
    assert load.calls == 0
    monkeypatch.delenv("TRAIND_URL")
    assert discover_url(None, settings=load) == "http://10.0.0.5:9000"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8321"),
        ("::", "http://127.0.0.1:8321"),
        ("::1", "http://[::1]:8321"),
        ("localhost", "http://localhost:8321"),
    ],
)
def test_url_from_settings_maps_wildcards_to_loopback(tmp_path: Path, host: str, url: str) -> None:
    assert discover_url(None, settings=Loader(settings_with(tmp_path, host=host))) == url
