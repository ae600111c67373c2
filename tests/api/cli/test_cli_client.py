"""The client commands (status, queue, pause, resume, enqueue, retry, cancel) against a fake
traind (tests/api/fake_traind.py), and one smoke run against the real app.

``status --watch`` is ended by its ``--count N`` option (stop after N refreshes), or by a
fake Ctrl-C: ``api.cli.watch._sleep`` (the pause between refreshes) replaced by one that raises
KeyboardInterrupt.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from api.cli import views, watch
from api.cli.main import app
from service.ledger import FileState
from tests.api.fake_traind import STATUS, TOKEN, FakeTraind, serving

pytestmark = pytest.mark.usefixtures("clean_env")

# Wide enough that rich never wraps the facts the tests look for.
runner = CliRunner(env={"COLUMNS": "160"})


@pytest.fixture(scope="module")
def server() -> Iterator[FakeTraind]:
    with FakeTraind().serving() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeTraind) -> FakeTraind:
    server.reset()
    return server


def invoke(fake: FakeTraind, *args: str, token: str | None = TOKEN, **kwargs):
    auth = ["--token", token] if token else []
    return runner.invoke(app, [*args, "--url", fake.url, *auth], **kwargs)


def closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def drop(folder: Path, name: str = "day9.jsonl", *, size: int = 0) -> Path:
    path = folder / name
    path.write_text('{"text": "2+2=4"}\n' if not size else "x" * size, encoding="utf-8")
    return path


# -- status -------------------------------------------------------------------------------


def test_status_shows_the_key_facts(fake: FakeTraind) -> None:
    result = invoke(fake, "status")
    assert result.exit_code == 0, result.output
    for fact in (
        "training",
        "210",  # global step
        "#2 day2.jsonl",
        "50%",
        "steps 120 → 300",
        "loss 1.2345",
        "val loss 1.5000",
        "lr 3.00e-04",
        "12,346 tokens/s",
        "file 1m 15s",
        "queue 1h 02m",
        "step 200, val loss 1.4321",
        "1 queued · 1 training · 1 done · 1 failed · 1 rejected · 1 cancelled",
        "heartbeat 0.4 s ago",
    ):
        assert fact in result.stdout, fact


def test_status_when_idle(fake: FakeTraind) -> None:
    fake.status.update(
        state="idle",
        current_file=None,
        gold=None,
        train_loss=None,
        lr=None,
        tokens_per_s=None,
        eta_s=None,
        eta_queue_s=None,
        last_eval=None,
        queue={},
    )
    result = invoke(fake, "status")
    assert result.exit_code == 0, result.output
    assert re.search(r"state\s+idle", result.stdout)
    assert re.search(r"file\s+none", result.stdout)
    assert re.search(r"gold\s+none yet", result.stdout)
    assert re.search(r"queue\s+empty", result.stdout)
    assert "ETA" not in result.stdout


def test_status_names_the_export_and_its_source(fake: FakeTraind) -> None:
    fake.status.update(export={"step": 130, "source_checkpoint": "gold", "from": "gold"})
    result = invoke(fake, "status")
    assert result.exit_code == 0, result.output
    assert re.search(r"export\s+step 130 \(gold\), follows gold", result.stdout)


FORGETTING = {
    "step": 60,
    "worst": {
        "file": "000001-a.jsonl",
        "sha256": "a" * 64,
        "end_step": 40,
        "loss": 2.31,
        "best": 2.1,
        "best_step": 40,
        "increase": 0.123,
        "sequences": 16,
    },
    "measured": 1,
    "drops_total": 3,
    "threshold": 0.1,
}


def test_status_shows_the_worst_forgotten_drop(fake: FakeTraind) -> None:
    fake.status.update(forgetting=FORGETTING)
    result = invoke(fake, "status")
    assert result.exit_code == 0, result.output
    line = (
        r"forgetting\s+worst 000001-a\.jsonl \+12\.3% \(loss 2\.3100, best 2\.1000 @ step 40\), "
        r"1 of 3 drops measured; gold blocks above 10%"
    )
    assert re.search(line, result.stdout), result.stdout

    fake.status.update(forgetting={**FORGETTING, "threshold": None})
    result = invoke(fake, "status")
    assert re.search(r"1 of 3 drops measured\W*$", result.stdout, re.MULTILINE), result.stdout
    assert "gold blocks" not in result.stdout


def test_status_without_a_forgetting_report_shows_no_line(fake: FakeTraind) -> None:
    fake.status.update(forgetting=None)
    result = invoke(fake, "status")
    assert result.exit_code == 0, result.output
    assert "forgetting" not in result.stdout
    assert views.forgetting_line(None) == views.forgetting_line({"worst": None}) == ""


def test_status_json_is_the_server_body(fake: FakeTraind) -> None:
    result = invoke(fake, "status", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == httpx.get(f"{fake.url}/v1/status").json() == STATUS


# -- queue --------------------------------------------------------------------------------


def test_queue_table(fake: FakeTraind) -> None:
    result = invoke(fake, "queue")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    row = next(line for line in lines if "day2.jsonl" in line)
    assert row.split() == ["2", "day2.jsonl", "training", "120", "→", "300"]
    rejected = next(line for line in lines if "bad.jsonl" in line)
    assert "rejected" in rejected
    assert "line 3: not valid JSON (Expecting ',' delimiter: line 1 col…" in rejected  # 60 chars
    assert "1–6 of 6" in result.stdout
    assert fake.seen[-1].query == "limit=50&offset=0"


def test_queue_filters_and_pages(fake: FakeTraind) -> None:
    result = invoke(fake, "queue", "--state", "failed", "-s", "REJECTED", "--limit", "1")
    assert result.exit_code == 0, result.output
    assert fake.seen[-1].query == "state=failed&state=rejected&limit=1&offset=0"
    assert "bad.jsonl" in result.stdout
    assert "day4.jsonl" not in result.stdout
    assert "1–1 of 2 (next: --offset 1)" in result.stdout


def test_queue_empty(fake: FakeTraind) -> None:
    result = invoke(fake, "queue", "--state", "duplicate")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "no files in state duplicate"


def test_queue_json_is_the_server_body(fake: FakeTraind) -> None:
    result = invoke(fake, "queue", "--json", "--offset", "2")
    assert result.exit_code == 0, result.output
    expected = httpx.get(f"{fake.url}/v1/queue", params={"limit": 50, "offset": 2}).json()
    assert json.loads(result.stdout) == expected
    assert expected["total"] == 6


def test_queue_states_are_the_ledgers() -> None:
    assert [s.value for s in views.FileState] == [s.value for s in FileState]


def test_queue_unknown_state_is_a_usage_error(fake: FakeTraind) -> None:
    result = invoke(fake, "queue", "--state", "sleeping")
    assert result.exit_code == 2
    assert fake.seen == []


def test_queue_refused_limit_exits_1_with_the_detail(fake: FakeTraind) -> None:
    result = invoke(fake, "queue", "--limit", "5000")
    assert result.exit_code == 1
    assert "query.limit: " in result.stderr
    assert "(HTTP 422)" in result.stderr


# -- pause, resume ------------------------------------------------------------------------


def test_pause_and_resume(fake: FakeTraind) -> None:
    result = invoke(fake, "pause")
    assert result.exit_code == 0, result.output
    assert result.stdout == "paused: the worker checkpoints at its next step and holds\n"
    assert fake.status["desired_state"] == "paused"
    result = invoke(fake, "resume")
    assert result.exit_code == 0, result.output
    assert result.stdout == "resumed: training continues at the same step\n"
    assert fake.status["desired_state"] == "running"
    assert {s.authorization for s in fake.seen} == {f"Bearer {TOKEN}"}


@pytest.mark.parametrize("command", ["pause", "resume"])
def test_pause_resume_json(fake: FakeTraind, command: str) -> None:
    result = invoke(fake, command, "--json")
    assert result.exit_code == 0, result.output
    wanted = "paused" if command == "pause" else "running"
    assert json.loads(result.stdout) == {
        "desired_state": wanted,
        "updated_at": "2025-01-01T00:00:00Z",
        "checkpoint_requested_at": None,
    }


def test_without_a_token_the_server_refuses_with_exit_1(fake: FakeTraind) -> None:
    result = invoke(fake, "pause", token=None)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "error: missing or wrong API token (HTTP 401); pass --token" in result.stderr
    assert fake.status["desired_state"] == "running"


# -- enqueue ------------------------------------------------------------------------------


def test_enqueue_uploads_each_file(fake: FakeTraind, tmp_path: Path) -> None:
    first, second = drop(tmp_path, "a.jsonl"), drop(tmp_path, "b.jsonl")
    result = invoke(fake, "enqueue", str(first), str(second))
    assert result.exit_code == 0, result.output
    assert [label for label, _ in fake.uploads] == ["a.jsonl", "b.jsonl"]
    assert f"uploaded {first} as upload-20250101T000000Z-0001--a.jsonl" in result.stdout
    assert f"uploaded {second} as upload-20250101T000000Z-0001--b.jsonl" in result.stdout


def test_enqueue_json_is_one_server_body_per_line(fake: FakeTraind, tmp_path: Path) -> None:
    files = [drop(tmp_path, "a.jsonl"), drop(tmp_path, "b.jsonl")]
    result = invoke(fake, "enqueue", "--json", *map(str, files))
    assert result.exit_code == 0, result.output
    bodies = [json.loads(line) for line in result.stdout.splitlines()]
    assert bodies == [
        {"name": f"upload-20250101T000000Z-0001--{p.name}", "label": p.name, "bytes": 18}
        for p in files
    ]


def test_enqueue_goes_on_past_a_refused_file_and_exits_1(fake: FakeTraind, tmp_path: Path) -> None:
    big = drop(tmp_path, "big.jsonl", size=fake.max_file_bytes + 1)
    small = drop(tmp_path, "small.jsonl")
    result = invoke(fake, "enqueue", str(big), str(small))
    assert result.exit_code == 1
    assert f"error: {big}: the upload is over watcher.max_file_bytes" in result.stderr
    assert "(HTTP 413)" in result.stderr
    assert [label for label, _ in fake.uploads] == ["small.jsonl"]


def test_enqueue_missing_file_is_a_usage_error(fake: FakeTraind, tmp_path: Path) -> None:
    result = invoke(fake, "enqueue", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 2
    assert fake.seen == []


# -- retry, cancel ------------------------------------------------------------------------


def test_retry(fake: FakeTraind) -> None:
    result = invoke(fake, "retry", "5")
    assert result.exit_code == 0, result.output
    assert result.stdout == "queued again: file 5 (day4.jsonl)\n"
    result = invoke(fake, "retry", "4")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "back in the inbox as retry-0001--bad.jsonl: file 4 (bad.jsonl) is checked again\n"
    )


def test_retry_refused_exits_1_with_the_detail(fake: FakeTraind) -> None:
    result = invoke(fake, "retry", "1")
    assert result.exit_code == 1
    assert result.stderr == (
        "error: file 1 is done: only failed, cancelled or rejected files can be retried"
        " (HTTP 409)\n"
    )
    result = invoke(fake, "retry", "99")
    assert result.exit_code == 1
    assert "no file #99; GET /v1/queue lists the files (HTTP 404)" in result.stderr


def test_cancel(fake: FakeTraind) -> None:
    result = invoke(fake, "cancel", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout == "cancelled: file 3 (day3.jsonl)\n"
    result = invoke(fake, "cancel", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("cancelling: file 2 (day2.jsonl) stops at its next")
    assert invoke(fake, "cancel", "1").exit_code == 1


@pytest.mark.parametrize(("command", "file_id"), [("retry", "5"), ("cancel", "3")])
def test_retry_cancel_json(fake: FakeTraind, command: str, file_id: str) -> None:
    result = invoke(fake, command, file_id, "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["id"] == int(file_id)
    assert body["state"] == ("queued" if command == "retry" else "cancelled")


# -- no server, bad options, discovery ----------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["status", "--json"],
        ["queue"],
        ["pause"],
        ["resume"],
        ["retry", "1"],
        ["cancel", "1"],
        ["enqueue", "README.md"],
    ],
)
def test_unreachable_server_exits_3(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("{}\n", encoding="utf-8")
    url = closed_url()
    result = runner.invoke(app, [*args, "--url", url])
    assert result.exit_code == 3
    assert result.stdout == ""
    assert result.stderr == (
        f"error: cannot reach traind at {url}: is `traind serve` running? (connection refused)\n"
    )


def test_bad_url_is_a_usage_error() -> None:
    result = runner.invoke(app, ["status", "--url", "localhost:8321"])
    assert result.exit_code == 2
    assert "is not an http:// or https:// URL" in result.stderr


def test_bad_settings_are_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "traind.toml"
    config.write_text("[server]\nprot = 1\n", encoding="utf-8")
    result = runner.invoke(app, ["status", "--config", str(config)])
    assert result.exit_code == 2
    assert "server.prot: unknown key" in result.stderr


def write_config(folder: Path, url: str) -> Path:
    port = url.rsplit(":", 1)[1]
    config = folder / "traind.toml"
    config.write_text(f'[server]\nhost = "0.0.0.0"\nport = {port}\n', encoding="utf-8")
    return config


def test_url_and_token_come_from_the_settings_and_token_file(
    fake: FakeTraind, tmp_path: Path
) -> None:
    config = write_config(tmp_path, fake.url)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "api-token").write_text(f"{TOKEN}\n", encoding="utf-8")
    result = runner.invoke(app, ["pause", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert fake.seen[-1].authorization == f"Bearer {TOKEN}"


def test_url_and_token_from_the_environment_win_over_the_settings(
    fake: FakeTraind, tmp_path: Path
) -> None:
    write_config(tmp_path, closed_url())  # ./traind.toml points nowhere
    env = {"TRAIND_URL": fake.url, "TRAIND_TOKEN": TOKEN}
    result = runner.invoke(app, ["resume"], env=env)
    assert result.exit_code == 0, result.output
    assert fake.seen[-1].authorization == f"Bearer {TOKEN}"
    result = runner.invoke(app, ["resume", "--token", "explicit"], env=env)
    assert result.exit_code == 1
    assert fake.seen[-1].authorization == "Bearer explicit"


# -- status --watch -----------------------------------------------------------------------

PANEL = "╭─ traind"


def test_watch_prints_each_refresh_when_not_a_terminal(fake: FakeTraind) -> None:
    result = invoke(fake, "status", "--watch", "--interval", "0.01", "--count", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout.count(PANEL) == 3
    assert result.stdout.count("next up") == 3
    assert len(fake.requests_to("/v1/status")) == 3
    assert all(
        s.query == "state=training&state=queued&limit=10&offset=0"
        for s in fake.requests_to("/v1/queue")
    )


def test_watch_is_a_live_view_in_a_terminal(fake: FakeTraind) -> None:
    env = {"TTY_COMPATIBLE": "1", "TERM": "xterm-256color", "COLUMNS": "160"}
    result = invoke(fake, "status", "-w", "--interval", "0.01", "--count", "2", env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.count(PANEL) >= 2  # each refresh redraws (and the last stays)
    assert "\x1b[1A\x1b[2K" in result.stdout  # moved up and cleared: redrawn in place
    assert "\x1b[?25l" in result.stdout and result.stdout.endswith("\x1b[?25h")  # cursor back
    assert len(fake.requests_to("/v1/status")) == 2


def test_watch_ctrl_c_exits_0(fake: FakeTraind, monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []

    def sleep_then_ctrl_c(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(watch, "_sleep", sleep_then_ctrl_c)
    result = invoke(fake, "status", "--watch", "--interval", "0.5")
    assert result.exit_code == 0, result.output
    assert result.stdout.count(PANEL) == 2
    assert all(0 < p <= 0.5 for p in pauses)


def test_watch_keeps_retrying_while_the_server_is_away(tmp_path: Path) -> None:
    url = closed_url()
    started = time.monotonic()
    result = runner.invoke(
        app, ["status", "-w", "--url", url, "--interval", "0.01", "--count", "3"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.count("disconnected, retrying every 0.01 s: cannot reach traind") == 3
    assert time.monotonic() - started < 5


def test_watch_recovers_and_shows_server_errors(fake: FakeTraind) -> None:
    fake.fail_next(503, "busy")
    result = invoke(fake, "status", "-w", "--interval", "0.01", "--count", "2")
    assert result.exit_code == 0, result.output
    first, second = result.stdout.split("server error, retrying every 0.01 s: busy (HTTP 503)")
    assert first == ""
    assert second.count(PANEL) == 1


def test_watch_stops_on_a_refusal(fake: FakeTraind) -> None:
    fake.reads_need_token = True
    result = invoke(fake, "status", "-w", "--interval", "0.01", token=None)
    assert result.exit_code == 1
    assert "missing or wrong API token (HTTP 401)" in result.stderr


def test_watch_json_prints_one_status_per_line(fake: FakeTraind) -> None:
    fake.fail_next(503, "busy")
    result = invoke(fake, "status", "-w", "--json", "--interval", "0.01", "--count", "3")
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == [STATUS, STATUS]
    assert "server error, retrying" in result.stderr


# -- the real app -------------------------------------------------------------------------


def test_smoke_against_the_real_app(tmp_path: Path) -> None:
    """The commands against ``create_app`` with a daemon that starts no worker: the token
    is the one the server generates into state/api-token, found through --config."""
    pytest.importorskip("api.web.routes")
    from api.web.app import create_app
    from service.config.settings import load_settings
    from service.daemon.main_process import Daemon

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = tmp_path / "traind.toml"
    config.write_text(
        f"[server]\nport = {port}\n[watcher]\nsettle_s = 0.1\nrescan_interval_s = 0.5\n",
        encoding="utf-8",
    )
    settings = load_settings(config)
    app_ = create_app(settings, daemon=Daemon(settings, start_worker=False))
    with serving(app_, lifespan="on", sock=sock):
        assert (tmp_path / "state" / "api-token").is_file()
        args = ["--config", str(config)]

        result = runner.invoke(app, ["status", *args])
        assert result.exit_code == 0, result.output
        assert re.search(r"state\s+idle", result.stdout)
        assert runner.invoke(app, ["queue", *args]).stdout.strip() == "no files"

        result = runner.invoke(app, ["enqueue", str(drop(tmp_path)), "--json", *args])
        assert result.exit_code == 0, result.output
        name = json.loads(result.stdout)["name"]
        assert name.endswith("day9.jsonl")

        deadline = time.monotonic() + 20
        while True:
            page = json.loads(runner.invoke(app, ["queue", "--json", *args]).stdout)
            if page["total"] == 1 and page["items"][0]["state"] == "queued":
                break
            assert time.monotonic() < deadline, page
            time.sleep(0.1)
        file_id = str(page["items"][0]["id"])

        assert runner.invoke(app, ["pause", *args]).exit_code == 0
        status = json.loads(runner.invoke(app, ["status", "--json", *args]).stdout)
        assert status["desired_state"] == "paused"
        assert runner.invoke(app, ["resume", *args]).exit_code == 0

        result = runner.invoke(app, ["retry", file_id, *args])
        assert result.exit_code == 1
        assert "(HTTP 409)" in result.stderr
        result = runner.invoke(app, ["cancel", file_id, *args])
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"cancelled: file {file_id} (")
        assert runner.invoke(app, ["retry", file_id, *args]).exit_code == 0

        result = runner.invoke(app, ["pause", "--token", "wrong", *args])
        assert result.exit_code == 1
        assert "(HTTP 401)" in result.stderr

        result = runner.invoke(app, ["status", "-w", "--interval", "0.01", "--count", "2", *args])
        assert result.exit_code == 0, result.output
        assert result.stdout.count(PANEL) == 2
