"""``traind extend-vocab --tokens FILE`` on a lineage trained by a real ``traind train``:
it adds the tokens, the next ``traind train`` continues on the same step count with them,
``traind inspect`` shows the extension; it refuses a bad tokens file and a lineage another
process (a daemon) holds, with exit status 2 and what to do. (No lineage at all, and tokens
the tokenizer has already: ``tests/trainer/test_vocab.py``.)"""

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.corpus import make_drops, traind_env
from trainer.records.checkpoints import step_folders

REPO = Path(__file__).resolve().parents[3]


def traind(args: list[str], *, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "api.cli.main", *args],
        env={**traind_env(root, TRAIND_EVAL__PROMPTS="[]"), "PYTHONPATH": str(REPO)},
        cwd=root,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_extend_vocab_then_train_then_inspect(tmp_path: Path) -> None:
    drops = make_drops(tmp_path / "drops")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("<lang:xx>\n<lang:yy>\n", encoding="utf-8")
    assert traind(["train", str(drops[0])], root=tmp_path).returncode == 0
    step = step_folders(tmp_path / "checkpoints")[0][0]
    fd = os.open(tmp_path / "checkpoints" / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a running daemon holds it
        locked = traind(["extend-vocab", "--tokens", str(tokens)], root=tmp_path)
    finally:
        os.close(fd)
    assert locked.returncode == 2 and "stop it first" in locked.stderr, locked.stderr
    result = traind(["extend-vocab", "--tokens", str(tokens)], root=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"added 2 token(s) at step {step}" in result.stdout

    drop = tmp_path / "new.jsonl"
    drop.write_text(
        "".join(json.dumps({"text": f"<lang:xx> word {i} <lang:yy>"}) + "\n" for i in range(40))
    )
    assert traind(["train", str(drop)], root=tmp_path).returncode == 0
    events = [
        json.loads(line) for line in (tmp_path / "state" / "events.jsonl").read_text().splitlines()
    ]
    extended = [e for e in events if e["event"] == "vocab_extended"]
    assert len(extended) == 1 and extended[0]["step"] == step
    done = [e for e in events if e["event"] == "file_complete"]
    assert done[-1]["start_step"] == step  # the same step count goes on

    shown = traind(["inspect", str(tmp_path / "checkpoints")], root=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "vocabulary" in shown.stdout and "'<lang:xx>'" in shown.stdout


@pytest.mark.parametrize(
    ("content", "expected"),
    [("", "holds no tokens"), ("a" * 300 + "\n", "line 1: 300 characters")],
)
def test_a_bad_tokens_file_is_refused_before_anything_opens(
    tmp_path: Path, content: str, expected: str
) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(content, encoding="utf-8")
    result = traind(["extend-vocab", "--tokens", str(tokens)], root=tmp_path)
    assert result.returncode == 2 and expected in result.stderr, result.stderr
