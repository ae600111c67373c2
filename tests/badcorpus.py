"""The bad-input corpus: every kind of bad drop, with what its rejection must say,
and good drops with awkward but valid content. Shared by the watcher's tests and the
end-to-end test that drops it into a real ``traind serve``."""

from __future__ import annotations

import gzip
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MAX_LINE_BYTES = 4096
MAX_FILE_BYTES = 64 * 1024
SETTLE_S = 0.2
LINUX = Path("/proc/self/fdinfo").is_dir()


def jl(*rows: object) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


TEXT = {"text": "If X=2 and Y=3, X+Y = 5."}
QA = {"prompt": "2+2=", "completion": " 4"}
CHAT = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _flipped_gzip() -> bytes:
    data = bytearray(gz(jl(*({"text": f"line {i} " * 20} for i in range(200)))))
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    return bytes(data)


@dataclass(frozen=True)
class Bad:
    """One kind of bad drop and what its rejection must say."""

    kind: str
    name: str
    reason: str
    line: int | None = None
    data: bytes | None = None
    make: Callable[[Path], None] | None = None
    in_place: bool = False
    recorded: str | None = None
    """The name the ledger records, where it differs from ``name`` (a name not UTF-8)."""

    @property
    def recorded_name(self) -> str:
        return self.recorded or self.name


def _symlink(path: Path) -> None:
    outside = path.parent / "outside-target.jsonl"
    outside.write_bytes(jl(TEXT))
    path.symlink_to(outside)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _folder(path: Path) -> None:
    path.mkdir()
    (path / "inside.jsonl").write_bytes(jl(TEXT))


NOT_UTF8 = os.fsdecode(b"day\xff1.jsonl")
"""A name whose byte 0xff is not UTF-8 (``os`` gives it as a lone surrogate)."""


BAD = [
    Bad("invalid UTF-8", "latin1.jsonl", "is not valid UTF-8 (byte 0xe9", 2,
        jl(TEXT) + b'{"text": "caf\xe9"}\n'),
    Bad("UTF-16 file", "utf16.jsonl", "is not valid UTF-8", 1,
        '{"text": "hi"}\n'.encode("utf-16")),
    Bad("binary garbage", "garbage.jsonl", "has no valid example", 1,
        random.Random(7).randbytes(3000)),
    Bad("NUL bytes", "nul.jsonl", "is not valid JSON", 1, b"\x00" * 64 + b"\n"),
    Bad("NUL inside a string", "nul-in-string.jsonl", "is not valid JSON", 2,
        jl(TEXT) + b'{"text": "a\x00b"}\n'),
    Bad("truncated last line", "truncated.jsonl", "is truncated", 2,
        jl(TEXT) + b'{"text": "cut o'),
    Bad("not JSON", "prose.jsonl", "is not valid JSON", 1, b"Dear diary, today I trained.\n",
        in_place=True),
    Bad("JSON array line", "array.jsonl", "is a JSON list, not an object", 2,
        jl(TEXT) + b'["text", "x"]\n'),
    Bad("JSON number line", "number.jsonl", "is a JSON number, not an object", 1, b"42\n"),
    Bad("JSON string line", "string.jsonl", "is a JSON string, not an object", 1, b'"hi"\n'),
    Bad("JSON null line", "null.jsonl", "is a JSON null, not an object", 1, b"null\n"),
    Bad("unknown keys only", "schema.jsonl", 'has no "text", "prompt"/"completion" or "messages"',
        1, jl({"question": "2+2", "answer": "4"})),
    Bad("missing completion", "no-completion.jsonl", 'is missing "completion"', 2,
        jl(QA, {"prompt": "3+3="})),
    Bad("missing prompt", "no-prompt.jsonl", 'is missing "prompt"', 1,
        jl({"completion": " 6"})),
    Bad("completion not a string", "completion-number.jsonl",
        '"completion" must be a string, got number', 2, jl(QA, {"prompt": "1+1=", "completion": 2})),
    Bad("empty completion", "completion-empty.jsonl", '"completion" is empty', 1,
        jl({"prompt": "1+1=", "completion": ""})),
    Bad("text not a string", "text-list.jsonl", '"text" must be a string, got list', 1,
        jl({"text": ["a", "b"]})),
    Bad("text NaN", "text-nan.jsonl", '"text" must be a string, got number', 1,
        b'{"text": NaN}\n'),
    Bad("empty text", "text-empty.jsonl", '"text" is empty', 3, jl(TEXT, TEXT, {"text": "   "})),
    Bad("lone surrogate", "surrogate.jsonl", "lone surrogate", 1, b'{"text": "\\ud800"}\n'),
    Bad("messages empty list", "messages-empty.jsonl",
        '"messages" must be a non-empty list, got empty list', 1, jl({"messages": []})),
    Bad("messages not a list", "messages-string.jsonl",
        '"messages" must be a non-empty list, got string', 1, jl({"messages": "hi"})),
    Bad("message bad role", "role.jsonl", 'message 2 has unknown role "robot"', 2,
        jl(CHAT, {"messages": [{"role": "user", "content": "x"},
                               {"role": "robot", "content": "y"}]})),
    Bad("message content not a string", "content.jsonl",
        'message 1 "content" must be a string, got number', 1,
        jl({"messages": [{"role": "user", "content": 3}]})),
    Bad("message missing content", "no-content.jsonl", 'message 1 needs "role" and "content"', 1,
        jl({"messages": [{"role": "user"}]})),
    Bad("mixed formats", "mixed.jsonl",
        "this file is in text format (from line 1); line 3 is prompt_completion format", 3,
        jl(TEXT, TEXT, QA, CHAT)),
    Bad("keys of two formats on one line", "two-formats.jsonl",
        "mixes the keys of several formats", 1, jl({"text": "a", "prompt": "b", "completion": "c"})),
    Bad("deeply nested JSON", "nested.jsonl", "nested too deeply", 1, b"[" * 4_000 + b"\n"),
    Bad("empty file", "empty.jsonl", "the file is empty", None, b"", in_place=True),
    Bad("whitespace-only file", "blank.jsonl", "the file is empty", None, b"\n  \n\t\n\r\n"),
    Bad("line over max_line_bytes", "long-line.jsonl",
        f"is longer than the limit of {MAX_LINE_BYTES} bytes", 2,
        jl(TEXT, {"text": "x" * (MAX_LINE_BYTES + 10)}, TEXT)),
    Bad("file over max_file_bytes", "huge.jsonl",
        f"over the limit of {MAX_FILE_BYTES} bytes (watcher.max_file_bytes)", None,
        jl(*[TEXT] * (MAX_FILE_BYTES // len(jl(TEXT)) + 5))),
    Bad(".jsonl.gz that is not gzip", "plain.jsonl.gz", "is not gzip-compressed", None, jl(TEXT)),
    Bad("truncated gzip", "cut.jsonl.gz", "the gzip data ends abruptly", None,
        gz(jl(*[TEXT] * 500))[:-40]),
    Bad("corrupt gzip", "flipped.jsonl.gz", "corrupt", None, _flipped_gzip()),
    Bad("gzip with a bad line", "bad-line.jsonl.gz", "is not valid JSON", 2,
        gz(jl(TEXT) + b"{oops}\n")),
    Bad("some good, some bad lines", "partly.jsonl", "has 2 invalid lines of 5 (lines 2, 4)", 2,
        jl(TEXT) + b"{bad\n" + jl(TEXT) + b"[]\n" + jl(TEXT)),
    Bad("symlink out of the inbox", "link.jsonl", "is a symbolic link", None, make=_symlink),
    Bad("FIFO named .jsonl", "pipe.jsonl", "is a FIFO (named pipe), not a regular file", None,
        make=_fifo),
    Bad("wrong extension .txt", "notes.txt", "only *.jsonl and *.jsonl.gz files are taken", None,
        b"some notes\n"),
    Bad("wrong extension .json", "data.json", "only *.jsonl and *.jsonl.gz files are taken", None,
        json.dumps([TEXT]).encode()),
    Bad("no extension", "README", "only *.jsonl and *.jsonl.gz files are taken", None, b"hi\n",
        in_place=True),
    Bad("file name not UTF-8", NOT_UTF8,
        "the file name is not valid UTF-8 (byte 0xff at byte 4; each such byte is shown here "
        "as \\xNN); rename it with a UTF-8 name and drop it again", None, jl(TEXT),
        recorded="day\\xff1.jsonl"),
    Bad("a folder", "folder.jsonl",
        "is a folder; traind takes files, not folders: move the *.jsonl files inside it into "
        "the inbox", None, make=_folder),
    Bad("chat without an assistant turn", "no-reply.jsonl",
        'has no "assistant" message, so there is nothing to train on', 2,
        jl(CHAT, {"messages": [{"role": "system", "content": "be brief"},
                               {"role": "user", "content": "2+2?"}]})),
    Bad("chat with only empty replies", "empty-replies.jsonl",
        'every "assistant" message is empty, so there is nothing to train on', 1,
        jl({"messages": [{"role": "user", "content": "2+2?"},
                         {"role": "assistant", "content": ""}]},
           {"messages": [{"role": "user", "content": "3+3?"},
                         {"role": "assistant", "content": " "}]})),
]  # fmt: skip

GOOD = {
    "utf8-bom.jsonl": b"\xef\xbb\xbf" + jl(TEXT, TEXT),
    "crlf.jsonl": jl(QA, QA).replace(b"\n", b"\r\n"),
    "blank-lines.jsonl": b"\n" + jl(TEXT) + b"\n\n  \n" + jl({"text": "another"}) + b"\n",
    "extra-keys.jsonl": jl({**QA, "id": 7, "source": "web"}, {**QA, "meta": {"a": 1}}),
    "extra-keys-chat.jsonl": jl(
        {
            "messages": [
                {"role": "user", "content": "hi", "name": "bob"},
                {"role": "assistant", "content": "hello", "weight": 1},
            ],
            "id": "x1",
        }
    ),
    "données d'été 2024 (v2).jsonl": jl({"text": "héhé, ça marche 🎉"}),
    "compressed.jsonl.gz": gz(jl(*[CHAT] * 10)),
    "no-final-newline.jsonl": jl(TEXT) + b'{"text": "last line, complete JSON"}',
    "written-in-place.jsonl": jl({"text": "in place"}),
}
IN_PLACE_GOOD = {"written-in-place.jsonl"}


def drop(staging: Path, inbox: Path, name: str, *, data: bytes | None, make, in_place: bool):
    target = inbox / name
    if in_place:
        target.write_bytes(data or b"")
        return
    staged = staging / name
    if make is not None:
        make(staged)
    else:
        staged.write_bytes(data or b"")
    staged.rename(target)  # a rename moves a link or a FIFO itself, not what it points to
