"""POST /v1/files: streamed to a staging file, renamed into the inbox, checked by the
watcher; hostile names stay inside the inbox; too large is a 413 leaving nothing."""

from __future__ import annotations

import errno
import gzip
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.web import uploads
from service.ledger import FileState
from tests.api.conftest import VALID, LiveApi

NAME = re.compile(r"upload-\d{8}T\d{6}-[0-9a-f]{8}--[A-Za-z0-9._-]{1,64}\.jsonl(\.gz)?")
BOUNDARY = "traind-test-boundary"


def multipart(*parts: tuple[bytes, bytes]) -> bytes:
    """A multipart body from raw (Content-Disposition value, data) pairs: no escaping, so
    hostile bytes reach the server as they are."""
    body = b""
    for disposition, data in parts:
        body += (
            f"--{BOUNDARY}\r\n".encode()
            + b"Content-Disposition: "
            + disposition
            + b"\r\nContent-Type: application/octet-stream\r\n\r\n"
            + data
            + b"\r\n"
        )
    return body + f"--{BOUNDARY}--\r\n".encode()


def post_multipart(api: LiveApi, body: bytes):
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    return api.post("/v1/files", content=body, headers={"Content-Type": content_type})


def leftovers(api: LiveApi) -> list[str]:
    """Files left in the staging folder or hidden in the inbox."""
    staging = api.settings.paths.state / "uploads"
    staged = [p.name for p in staging.iterdir()] if staging.exists() else []
    hidden = [p.name for p in api.inbox.iterdir() if p.name.startswith(".")]
    return staged + hidden


def test_an_upload_is_renamed_into_the_inbox_and_queued(api: LiveApi) -> None:
    response = api.post("/v1/files", files={"file": ("day1.jsonl", VALID.encode())})
    assert response.status_code == 202, response.json()
    body = response.json()
    assert NAME.fullmatch(body["name"]) and body["name"].endswith("--day1.jsonl")
    assert body["label"] == "day1.jsonl"
    assert body["bytes"] == len(VALID.encode())

    (record,) = api.wait_recorded(1)
    assert (record.name, record.state, record.size) == (
        body["name"],
        FileState.QUEUED,
        body["bytes"],
    )
    assert Path(record.path).parent == api.inbox / "accepted"
    assert leftovers(api) == []


def test_a_gzip_upload_keeps_its_suffix(api: LiveApi) -> None:
    data = gzip.compress(VALID.encode())
    response = api.post("/v1/files", files={"file": ("day2.JSONL.GZ", data)})
    assert response.status_code == 202
    assert response.json()["name"].endswith("--day2.jsonl.gz")
    (record,) = api.wait_recorded(1)
    assert record.state is FileState.QUEUED


def test_a_raw_body_with_a_name_is_streamed(api: LiveApi) -> None:
    def chunks() -> Iterator[bytes]:
        for i in range(2000):  # about 4 MiB, sent chunked: no Content-Length
            yield f'{{"text": "{i:08d} {"x" * 2000}"}}\n'.encode()

    response = api.post("/v1/files", params={"name": "big.jsonl"}, content=chunks())
    assert response.status_code == 202, response.json()
    assert response.json()["bytes"] == sum(len(c) for c in chunks())
    (record,) = api.wait_recorded(1)
    assert record.state is FileState.QUEUED and record.n_examples == 2000


def test_a_raw_body_needs_a_name(api: LiveApi) -> None:
    response = api.post("/v1/files", content=VALID.encode())
    assert response.status_code == 422
    assert "multipart/form-data field 'file'" in response.json()["detail"]
    assert leftovers(api) == []


@pytest.mark.parametrize(
    ("client_name", "label"),
    [
        (b"../x.jsonl", "x.jsonl"),
        (b"../../../../etc/passwd", "passwd"),
        (b"/etc/passwd", "passwd"),
        (b"C:\\\\Users\\\\me\\\\day1.jsonl", "day1.jsonl"),
        (b"a\x00b.jsonl", "ab.jsonl"),
        (b"..", "upload"),
        (b"...hidden.jsonl", "hidden.jsonl"),
        (b"x.jsonl.part", "x.jsonl.part"),
        (b"d\xc3\xada 1 \xe2\x98\x83.jsonl", "da1.jsonl"),
        (b"\xff\xfe.jsonl", "jsonl"),
        (b"", "upload"),
        (b"y" * 10_000 + b".jsonl", "y" * 64),
    ],
)
def test_hostile_names_stay_in_the_inbox_and_are_recorded(
    api: LiveApi, client_name: bytes, label: str
) -> None:
    body = multipart((b'form-data; name="file"; filename="' + client_name + b'"', VALID.encode()))
    response = post_multipart(api, body)
    assert response.status_code == 202, response.json()
    assert response.json()["label"] == label
    name = response.json()["name"]
    assert NAME.fullmatch(name), name
    (record,) = api.wait_recorded(1)
    assert record.name == name
    assert Path(record.path).parent == api.inbox / "accepted"
    outside = {p.name for p in api.inbox.parent.iterdir()}
    assert outside == {"inbox", "state", "checkpoints"}


def test_a_hostile_raw_name_is_reduced_too(api: LiveApi) -> None:
    response = api.post("/v1/files", params={"name": "../../a\x00/..b.jsonl"}, content=b"{}")
    assert response.status_code == 202
    assert response.json()["label"] == "b.jsonl"


def test_an_upload_over_the_limit_is_413_and_leaves_nothing(api_factory) -> None:
    api = api_factory(watcher={"max_file_bytes": 1000})
    exact = api.post("/v1/files", files={"file": ("ok.jsonl", b'{"text": "a"}\n' * 71 + b"x" * 6)})
    assert exact.status_code == 202  # 1000 bytes: at the limit is fine

    response = api.post("/v1/files", files={"file": ("big.jsonl", b"y" * 5000)})
    assert response.status_code == 413
    assert "watcher.max_file_bytes (1000 bytes)" in response.json()["detail"]
    raw = api.post("/v1/files", params={"name": "big.jsonl"}, content=b"y" * 1001)
    assert raw.status_code == 413
    many = api.post("/v1/files", params={"name": "huge.jsonl"}, content=b"z" * (8 << 20))
    assert many.status_code == 413  # the client still sending gets the answer
    assert leftovers(api) == []
    (record,) = api.wait_recorded(1)
    assert record.name == exact.json()["name"]
    top = [p.name for p in api.inbox.iterdir() if p.is_file()]
    assert top == []


@pytest.mark.parametrize(
    ("body", "content_type", "detail"),
    [
        (
            multipart((b'form-data; name="data"; filename="a.jsonl"', b"{}")),
            None,
            "no complete file field",
        ),
        (
            multipart(
                (b'form-data; name="file"; filename="a.jsonl"', b"{}"),
                (b'form-data; name="file"; filename="b.jsonl"', b"{}"),
            ),
            None,
            "one file per request",
        ),
        (f"--{BOUNDARY}\r\ngarbage".encode(), None, "no complete file field"),
        (b"\x00" * 100, None, "not valid multipart"),
        (
            multipart((b'form-data; name="file"; filename="' + b"n" * 100_000 + b'"', b"{}")),
            None,
            "Maximum header size exceeded",
        ),
        (b"x", "multipart/form-data", "has no boundary"),
    ],
)
def test_malformed_multipart_is_422(
    api: LiveApi, body: bytes, content_type: str | None, detail: str
) -> None:
    if content_type is None:
        response = post_multipart(api, body)
    else:
        response = api.post("/v1/files", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 422
    assert detail in response.json()["detail"]
    assert leftovers(api) == []


def test_a_full_disk_is_507_and_leaves_nothing(
    api: LiveApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: object, pieces: list[bytes]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(uploads._Sink, "write", full)
    response = api.post("/v1/files", files={"file": ("a.jsonl", VALID.encode())})
    assert response.status_code == 507
    assert "No space left on device" in response.json()["detail"]
    assert leftovers(api) == []


def test_other_fields_are_ignored(api: LiveApi) -> None:
    body = multipart(
        (b'form-data; name="comment"', b"hello"),
        (b'form-data; name="file"; filename="c.jsonl"', VALID.encode()),
    )
    response = post_multipart(api, body)
    assert response.status_code == 202
    assert response.json()["bytes"] == len(VALID.encode())


def _other_filesystem() -> Path | None:
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        return None
    if shm.stat().st_dev == Path(tempfile.gettempdir()).stat().st_dev:
        return None
    return shm


@pytest.mark.skipif(_other_filesystem() is None, reason="no second writable filesystem")
def test_an_upload_crosses_filesystems_through_a_hidden_part_file(api_factory, clean_env) -> None:
    root = clean_env / "run"
    with tempfile.TemporaryDirectory(dir=_other_filesystem()) as state:
        api = api_factory(root, paths={"state": Path(state)})
        response = api.post("/v1/files", files={"file": ("far.jsonl", VALID.encode())})
        assert response.status_code == 202, response.json()
        (record,) = api.wait_recorded(1)
        assert record.name == response.json()["name"] and record.state is FileState.QUEUED
        assert leftovers(api) == []
        api.stop()


def test_place_falls_back_to_copy_then_rename_across_filesystems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged = tmp_path / "staging.part"
    staged.write_bytes(b"data")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    real_rename = os.rename
    seen: list[str] = []

    def rename(source: Path, target: Path) -> None:
        seen.append(Path(source).name)
        if Path(source) == staged:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_rename(source, target)

    monkeypatch.setattr(uploads.os, "rename", rename)
    placed = uploads.place(staged, inbox=inbox, label="d.jsonl", gz=False)
    assert placed.read_bytes() == b"data"
    assert not staged.exists()
    assert seen[1].startswith(".upload-") and seen[1].endswith(".part")
    assert [p.name for p in inbox.iterdir()] == [placed.name]


def test_partial_uploads_of_an_earlier_run_are_removed_at_start(api_factory, clean_env) -> None:
    root = clean_env / "run"
    (root / "state" / "uploads").mkdir(parents=True)
    (root / "inbox").mkdir(parents=True)
    (root / "state" / "uploads" / ".upload-0123456789abcdef.part").write_bytes(b"half")
    (root / "inbox" / ".upload-fedcba9876543210.part").write_bytes(b"half")
    (root / "inbox" / ".mine.part").write_bytes(b"a user's own")
    api = api_factory(root)
    assert leftovers(api) == [".mine.part"]


@pytest.mark.parametrize(
    ("label", "gz", "suffix"),
    [
        ("day1.jsonl", False, "--day1.jsonl"),
        ("day1.jsonl.gz", True, "--day1.jsonl.gz"),
        ("day1.gz", True, "--day1.jsonl.gz"),
        ("notes.txt", False, "--notes.txt.jsonl"),
        (".jsonl", False, "--upload.jsonl"),
    ],
)
def test_upload_names(label: str, gz: bool, suffix: str) -> None:
    name = uploads.upload_name(label, gz=gz)
    assert NAME.fullmatch(name) and name.endswith(suffix)
