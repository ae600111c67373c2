"""writers_of: which processes hold a file open for writing, from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.inbox.openfiles import open_for_writing, writers_of

linux_only = pytest.mark.skipif(not Path("/proc/self/fdinfo").is_dir(), reason="needs /proc")


@linux_only
def test_a_file_open_for_writing_names_this_process(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    with path.open("w") as handle:
        handle.write("x")
        handle.flush()
        assert writers_of(path) == [os.getpid()]
    assert writers_of(path) == []


@linux_only
def test_read_only_opens_are_not_writers(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text("x")
    with path.open("rb"):
        assert writers_of(path) == []


@linux_only
def test_read_write_and_append_opens_are_writers(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text("x")
    fd = os.open(path, os.O_RDWR)
    try:
        assert writers_of(path) == [os.getpid()]
    finally:
        os.close(fd)
    with path.open("a"):
        assert writers_of(path) == [os.getpid()]


@linux_only
def test_another_process_writing_is_found(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    code = (
        "import sys, time\n"
        "f = open(sys.argv[1], 'w'); f.write('x'); f.flush()\n"
        "print('open', flush=True); time.sleep(30)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "open"
        assert writers_of(path) == [child.pid]
    finally:
        child.kill()
        child.wait()
        assert child.stdout is not None
        child.stdout.close()
    deadline = time.monotonic() + 5
    while writers_of(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writers_of(path) == []


@linux_only
def test_one_pass_answers_for_several_paths_by_real_path(tmp_path: Path) -> None:
    written, idle = tmp_path / "w.jsonl", tmp_path / "i.jsonl"
    idle.write_text("x")
    alias = tmp_path / "link"
    alias.symlink_to(tmp_path)
    with written.open("w"):
        found = open_for_writing([alias / "w.jsonl", idle])
    assert found == {str(written.resolve()): [os.getpid()]}


def test_without_proc_nobody_writes(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    with path.open("w"):
        assert writers_of(path, proc=tmp_path / "no-proc") == []
        assert open_for_writing([path], proc=tmp_path / "no-proc") == {}
