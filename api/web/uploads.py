"""Uploads: stream a request body to a staging file, then rename it into the inbox.

``POST /v1/files`` takes the file as the multipart field ``file`` (or, for ``curl
--data-binary``, as the raw body with ``?name=``). The body is read in chunks and
written to ``<paths.state>/uploads/`` as it arrives, never held in memory, and counted:
past ``watcher.max_file_bytes`` the upload stops and its staging file is deleted.
A complete upload is renamed into the inbox under a name the server makes,
``upload-<UTC time>-<8 hex>--<label>.jsonl``; the client's file name is only a label,
reduced to ``[A-Za-z0-9._-]`` so that no name can reach outside the inbox. The watcher
then checks and records it like any drop (a rename is taken at once).

A rejected file that is retried goes back the same way (:func:`return_to_inbox`).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import anyio
import python_multipart
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from service.config.settings import Settings
from service.inbox.layout import is_ignored
from trainer.records.storage import fsync_folder_quietly, fsync_path

log = logging.getLogger(__name__)

FIELD = "file"
"""The multipart field that carries the file."""
LABEL_MAX = 64
PART_HEADER_MAX = 64 << 10
"""Longest header line of a multipart part (a long file name is legal, if silly)."""
MULTIPART_SLACK = 1 << 20
"""Bytes a multipart body may hold beyond the file (boundaries, headers, other fields)."""
DRAIN_MAX = 32 << 20
"""After refusing an upload, read (and drop) at most this much more of the body, so that
a client still sending gets the 413 instead of a reset connection."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class UploadError(Exception):
    """An upload refused: ``status`` (413, 422 or 507) and a message for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class Staged:
    """An upload written to its staging file."""

    path: Path
    client_name: str
    bytes: int = 0


def staging_folder(settings: Settings) -> Path:
    """Where uploads are written while they arrive (on the state folder's filesystem)."""
    return settings.paths.state / "uploads"


def label_for(client_name: str) -> str:
    """The client's file name as a label: its last path component reduced to
    ``[A-Za-z0-9._-]``, without leading dots, at most 64 characters (``upload`` if empty)."""
    last = re.split(r"[/\\]", client_name)[-1]
    label = _UNSAFE.sub("", last).lstrip(".")[:LABEL_MAX]
    return label or "upload"


def upload_name(label: str, *, gz: bool) -> str:
    """A fresh inbox name ``upload-<yyyymmddTHHMMSS>-<8 hex>--<stem>.jsonl[.gz]``."""
    stem = label
    for suffix in (".jsonl.gz", ".jsonl", ".gz"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"upload-{stamp}-{secrets.token_hex(4)}--{stem or 'upload'}.jsonl{'.gz' if gz else ''}"


async def receive(
    chunks: AsyncIterator[bytes],
    *,
    content_type: str,
    raw_name: str | None,
    staging: Path,
    max_bytes: int,
) -> Staged:
    """Write the upload in ``chunks`` to a new file in ``staging``; UploadError if refused.

    The staging file is deleted on any failure (a refusal, a client that goes away).
    """
    staging.mkdir(parents=True, exist_ok=True)
    path = staging / f".upload-{secrets.token_hex(8)}.part"
    sink = _Sink(path)
    try:
        mime, options = parse_options_header(content_type)
        if mime == b"multipart/form-data":
            client_name = await _receive_multipart(
                chunks, sink=sink, boundary=options.get(b"boundary"), max_bytes=max_bytes
            )
        else:
            if not raw_name:
                raise UploadError(
                    422,
                    "send the file as the multipart/form-data field 'file' (curl -F "
                    "file=@day1.jsonl), or as the raw body with ?name=day1.jsonl",
                )
            client_name = raw_name
            await _receive_raw(chunks, sink=sink, max_bytes=max_bytes)
        await anyio.to_thread.run_sync(sink.finish)
    except OSError as exc:
        await anyio.to_thread.run_sync(sink.discard)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise UploadError(
            507, f"no room to store the upload in {staging} ({exc.strerror}); free some space"
        ) from None
    except BaseException:
        await anyio.to_thread.run_sync(sink.discard)
        raise
    return Staged(path=path, client_name=client_name, bytes=sink.size)


async def _receive_raw(chunks: AsyncIterator[bytes], *, sink: _Sink, max_bytes: int) -> None:
    async for chunk in chunks:
        if sink.size + len(chunk) > max_bytes:
            await _drain(chunks, read=sink.size + len(chunk))
            raise _too_large(max_bytes)
        await anyio.to_thread.run_sync(sink.write, [chunk])


async def _receive_multipart(
    chunks: AsyncIterator[bytes], *, sink: _Sink, boundary: bytes | None, max_bytes: int
) -> str:
    if not boundary:
        raise UploadError(422, "the multipart/form-data Content-Type has no boundary")
    form = _Form()
    try:
        parser = python_multipart.MultipartParser(
            boundary, form.callbacks(), max_header_size=PART_HEADER_MAX
        )
    except (FormParserError, ValueError) as exc:
        raise UploadError(422, f"the multipart boundary is not usable: {exc}") from None
    read = 0
    try:
        async for chunk in chunks:
            read += len(chunk)
            parser.write(chunk)
            pending, form.pending = form.pending, []
            if sink.size + sum(map(len, pending)) > max_bytes or read > max_bytes + MULTIPART_SLACK:
                await _drain(chunks, read=read)
                raise _too_large(max_bytes)
            if pending:
                await anyio.to_thread.run_sync(sink.write, pending)
        parser.finalize()
    except FormParserError as exc:
        raise UploadError(
            422, f"the request body is not valid multipart/form-data: {exc}"
        ) from None
    if form.error:
        raise UploadError(422, form.error)
    if form.filename is None or not form.done:
        raise UploadError(
            422, f"the multipart body has no complete file field {FIELD!r}: send -F file=@FILE"
        )
    return form.filename


def _too_large(max_bytes: int) -> UploadError:
    return UploadError(
        413,
        f"the upload is larger than watcher.max_file_bytes ({max_bytes} bytes); split it into "
        "smaller files",
    )


async def _drain(chunks: AsyncIterator[bytes], *, read: int) -> None:
    """Read and drop the rest of a refused body, up to DRAIN_MAX."""
    limit = read + DRAIN_MAX
    async for chunk in chunks:
        read += len(chunk)
        if read > limit:
            return


@dataclass
class _Form:
    """python-multipart callbacks that collect the ``file`` field's data for the sink."""

    filename: str | None = None
    done: bool = False
    error: str | None = None
    pending: list[bytes] = field(default_factory=list)
    _in_file: bool = False
    _header: bytes = b""
    _value: bytes = b""
    _disposition: bytes = b""

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._disposition = b""
        self._in_file = False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") != FIELD.encode():
            return  # another field: its data is dropped
        if self.filename is not None:
            self.error = f"send one file per request (the field {FIELD!r} came twice)"
            return
        # Browsers send UTF-8 in the quoted filename; anything else becomes U+FFFD.
        self.filename = options.get(b"filename", b"").decode("utf-8", errors="replace")
        self._in_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file and self.error is None:
            self.pending.append(data[start:end])

    def _part_end(self) -> None:
        if self._in_file:
            self.done = True
        self._in_file = False


class _Sink:
    """The staging file, written in the thread pool (so the event loop never waits on disk)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def write(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            view = memoryview(piece)
            while view:
                view = view[os.write(self._fd, view) :]
            self.size += len(piece)

    def finish(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1

    def discard(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)


def place(staged: Path, *, inbox: Path, label: str, gz: bool) -> Path:
    """Rename the staging file into the inbox under a fresh upload name; its new path.

    Staging and inbox on different filesystems: copy to a hidden ``.upload-*.part`` in
    the inbox (which the watcher ignores), then rename that, so the watcher never sees a
    half-copied file.
    """
    target = _fresh(inbox, label=label, gz=gz)
    try:
        os.rename(staged, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        part = inbox / f".upload-{secrets.token_hex(8)}.part"
        try:
            shutil.copyfile(staged, part)
            fsync_path(part)
            os.rename(part, target)
        finally:
            part.unlink(missing_ok=True)
        staged.unlink()
    # The rename must survive a power cut, or a 202 would promise a file that is gone.
    fsync_folder_quietly(inbox)
    log.info("upload of %s placed in the inbox as %s", label, target.name)
    return target


def return_to_inbox(current: Path, *, inbox: Path, name: str) -> Path:
    """Move a rejected file back to the inbox top level, to be checked again: under
    ``name`` if that is free and a plain drop name, else a fresh upload name."""
    usable = Path(name).name == name and not is_ignored(name)
    target = inbox / name if usable else _fresh(inbox, label=label_for(name), gz=is_gz(name))
    if os.path.lexists(target):
        target = _fresh(inbox, label=label_for(name), gz=is_gz(name))
    os.rename(current, target)
    fsync_folder_quietly(inbox)
    fsync_folder_quietly(current.parent)
    log.info("%s moved back into the inbox as %s to be checked again", current, target.name)
    return target


def clear_leftovers(staging: Path, *, inbox: Path) -> int:
    """Delete staging files that uploads cut short by a crash left behind; how many.

    Run at start, before any upload: ``.upload-*.part`` files are only ever traind's own.
    """
    removed = 0
    for folder in (staging, inbox):
        for path in folder.glob(".upload-*.part") if folder.is_dir() else ():
            path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d partial upload(s) left by an earlier run", removed)
    return removed


def is_gz(name: str) -> bool:
    """Whether a client's file name says gzip (the inbox name then ends ``.jsonl.gz``)."""
    return name.lower().endswith(".gz")


def _fresh(inbox: Path, *, label: str, gz: bool) -> Path:
    while True:
        target = inbox / upload_name(label, gz=gz)
        if not os.path.lexists(target):
            return target
