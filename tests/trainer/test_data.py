"""Tests of trainer.records.formats (validation), trainer.cache (tokenized cache) and
trainer.data (batches, order)."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import special_id
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HfTokenizer
from tokenizers import models, pre_tokenizers, trainers

from trainer import cache
from trainer.cache import cache_key, tokenize_file
from trainer.data import TokenizedFile, sequence_order
from trainer.records.formats import DataError, file_sha256, validate_file
from trainer.tokenizer import Tokenizer, build_byte_tokenizer, load_tokenizer

BYTES = build_byte_tokenizer()
EOS = BYTES.eos_id
TEXT = {"text": "hello"}
PC = {"prompt": "Q", "completion": "A"}
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def write_lines(path: Path, lines: list[Any], *, newline_at_end: bool = True) -> Path:
    """Write ``lines`` (objects are JSON-encoded, str/bytes written as is)."""
    parts = []
    for line in lines:
        if isinstance(line, bytes):
            parts.append(line)
        elif isinstance(line, str):
            parts.append(line.encode())
        else:
            parts.append(json.dumps(line).encode())
    content = b"\n".join(parts) + (b"\n" if newline_at_end else b"")
    path.write_bytes(gzip.compress(content) if path.name.endswith(".gz") else content)
    return path


def tokenize(path: Path, tmp_path: Path, **kwargs: Any) -> TokenizedFile:
    kwargs.setdefault("tokenizer", BYTES)
    kwargs.setdefault("block_size", 64)
    return tokenize_file(path, cache_dir=tmp_path / "cache", **kwargs)


def targets(tf: TokenizedFile, row: int) -> list[int]:
    _, y = tf.batch([row])
    return [int(t) for t in y[0] if t >= 0]


def sequence(tf: TokenizedFile, row: int) -> list[int]:
    start, length = int(tf.starts[row]), int(tf.lengths[row])
    return [int(t) for t in tf.tokens[start : start + length]]


# --- validation: one bad line per case -------------------------------------------------------

BAD_LINES = [
    pytest.param(TEXT, "{not json", "is not valid JSON", id="not-json"),
    pytest.param(TEXT, "[1, 2]", "is a JSON list, not an object", id="array"),
    pytest.param(TEXT, '"just a string"', "is a JSON string, not an object", id="string"),
    pytest.param(TEXT, "42", "is a JSON number, not an object", id="number"),
    pytest.param(TEXT, {"body": "x", "id": 1}, 'no "text", "prompt"/"completion"', id="no-keys"),
    pytest.param(TEXT, {"text": 5}, '"text" must be a string, got number', id="text-number"),
    pytest.param(TEXT, {"text": None}, '"text" must be a string, got null', id="text-null"),
    pytest.param(TEXT, {"text": ""}, '"text" is empty', id="text-empty"),
    pytest.param(TEXT, {"text": " \n\t"}, '"text" is empty', id="text-blank"),
    pytest.param(TEXT, {"text": "a", "prompt": "b"}, "keys of several formats", id="two-formats"),
    pytest.param(PC, {"prompt": "Q"}, 'is missing "completion"', id="pc-missing"),
    pytest.param(PC, {"completion": "A"}, 'is missing "prompt"', id="pc-missing-prompt"),
    pytest.param(PC, {"prompt": "Q", "completion": ""}, '"completion" is empty', id="pc-empty"),
    pytest.param(
        PC,
        {"prompt": ["Q"], "completion": "A"},
        '"prompt" must be a string, got list',
        id="pc-list",
    ),
    pytest.param(CHAT, {"messages": []}, "non-empty list, got empty list", id="msgs-empty"),
    pytest.param(CHAT, {"messages": "hi"}, "non-empty list, got string", id="msgs-string"),
    pytest.param(
        CHAT,
        {"messages": [{"role": "bot", "content": "x"}]},
        'message 1 has unknown role "bot"',
        id="msgs-role",
    ),
    pytest.param(
        CHAT,
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None}]},
        'message 2 "content" must be a string, got null',
        id="msgs-content",
    ),
    pytest.param(CHAT, {"messages": ["hi"]}, "message 1 must be an object", id="msgs-item"),
    pytest.param(
        CHAT,
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]},
        'has no "assistant" message, so there is nothing to train on',
        id="msgs-no-assistant",
    ),
    pytest.param(
        CHAT,
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]},
        'every "assistant" message is empty, so there is nothing to train on',
        id="msgs-assistant-empty",
    ),
    pytest.param(
        CHAT,
        {
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": " \n"},
                {"role": "user", "content": "y"},
                {"role": "assistant", "content": ""},
            ]
        },
        'every "assistant" message is empty',
        id="msgs-assistant-blank",
    ),
    pytest.param(
        CHAT, {"messages": [{"content": "x"}]}, 'message 1 needs "role" and "content"', id="no-role"
    ),
    pytest.param(TEXT, PC, "this file is in text format (from line 1); line 2 is", id="mixed"),
    pytest.param(CHAT, TEXT, "is in messages format (from line 1); line 2 is text", id="mixed2"),
    pytest.param(TEXT, b'{"text": "caf\xe9"}', "is not valid UTF-8 (byte 0xe9", id="latin-1"),
    pytest.param(TEXT, '{"text": "\\ud800"}', "lone surrogate", id="surrogate"),
    pytest.param(TEXT, "[" * 100_000 + "]" * 100_000, "nested too deeply", id="deep"),
    pytest.param(TEXT, '\ufeff{"text": "x"}', "is not valid JSON", id="bom-not-line-1"),
]


@pytest.mark.parametrize(("good", "bad", "reason"), BAD_LINES)
def test_bad_line_is_reported_with_file_and_line(
    tmp_path: Path, good: dict, bad: Any, reason: str
) -> None:
    path = write_lines(tmp_path / "drop.jsonl", [good, bad, good])
    report = validate_file(path)
    assert (report.n_examples, report.n_invalid, report.ok) == (2, 1, False)
    (error,) = report.errors
    assert error.line == 2
    assert reason in error.reason
    assert error.message.startswith("drop.jsonl line 2: ")
    assert reason in error.message
    with pytest.raises(DataError) as err:
        report.raise_if_invalid()
    assert err.value.line == 2
    assert err.value.path == path
    assert "drop.jsonl line 2:" in str(err.value)


def test_exact_wording_of_a_type_error(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", [PC] * 16 + [{"prompt": "Q", "completion": 3}])
    (error,) = validate_file(path).errors
    assert error.message == (
        'a.jsonl line 17: "completion" must be a string, got number; fix or remove the line'
    )


def test_line_over_the_limit_is_skipped_and_reading_goes_on(tmp_path: Path) -> None:
    long_line = {"text": "x" * 5000}
    path = write_lines(tmp_path / "a.jsonl", [TEXT, long_line, TEXT, {"text": 3}])
    report = validate_file(path, max_line_bytes=1000)
    assert [e.line for e in report.errors] == [2, 4]
    assert "longer than the limit of 1000 bytes" in report.errors[0].message
    assert report.n_examples == 2


def test_truncated_last_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", [TEXT, '{"text": "cut he'], newline_at_end=False)
    (error,) = validate_file(path).errors
    assert error.line == 2
    assert "truncated" in error.message
    # A complete last line without newline is fine.
    path = write_lines(tmp_path / "b.jsonl", [TEXT, TEXT], newline_at_end=False)
    assert validate_file(path).n_examples == 2


def test_bom_blank_lines_and_extra_keys(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"text": "one", "id": 1, "source": "web"}\n\n   \r\n{"text": "two"}\r\n\n'
    )
    report = validate_file(path)
    assert (report.format, report.n_examples, report.n_invalid) == ("text", 2, 0)
    assert report.n_empty_lines == 3
    assert report.ok
    chat = {
        "messages": [
            {"role": "user", "content": "x", "name": "bob"},
            {"role": "assistant", "content": "y", "weight": 1},
        ],
        "id": "a",
    }
    assert validate_file(write_lines(tmp_path / "c.jsonl", [chat])).format == "messages"


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", [TEXT, "", "", "oops"])
    assert validate_file(path).errors[0].line == 4


def test_first_valid_line_decides_the_format(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", ["nope", PC, TEXT])
    report = validate_file(path)
    assert report.format == "prompt_completion"
    assert [e.line for e in report.errors] == [1, 3]
    assert (
        "prompt_completion format (from line 2); line 3 is text format" in report.errors[1].reason
    )


def test_errors_are_capped_but_all_counted(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", [TEXT] + ["bad"] * 30)
    report = validate_file(path)
    assert report.n_invalid == 30
    assert len(report.errors) == 20
    assert len(validate_file(path, max_errors=3).errors) == 3


def test_report_hash_and_size(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", [TEXT, TEXT])
    report = validate_file(path)
    raw = path.read_bytes()
    assert report.sha256 == hashlib.sha256(raw).hexdigest() == file_sha256(path)
    assert report.size == len(raw)
    gz = write_lines(tmp_path / "a.jsonl.gz", [TEXT, TEXT])
    gz_report = validate_file(gz)
    assert gz_report.sha256 == hashlib.sha256(gz.read_bytes()).hexdigest()
    assert (gz_report.size, gz_report.n_examples) == (gz.stat().st_size, 2)


# --- validation: whole-file problems ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        pytest.param("a.jsonl", b"", "the file is empty", id="empty"),
        pytest.param("a.jsonl", b"\n\n  \n", "the file is empty", id="blank"),
        pytest.param("a.jsonl", b"\xef\xbb\xbf", "the file is empty", id="bom-only"),
        pytest.param("a.jsonl.gz", b'{"text": "x"}\n', "is not gzip-compressed", id="not-gzip"),
        pytest.param("a.json", b'{"text": "x"}\n', "unsupported file name", id="bad-name"),
        pytest.param("a.txt", b"hello\n", "must end in .jsonl or .jsonl.gz", id="txt"),
    ],
)
def test_whole_file_problems(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=reason) as err:
        validate_file(path)
    assert str(err.value).startswith(f"{name}: ")
    assert err.value.line is None


def test_exact_wording_of_a_conversation_without_a_reply(tmp_path: Path) -> None:
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}
    path = write_lines(tmp_path / "a.jsonl", [CHAT, row])
    (error,) = validate_file(path).errors
    assert error.message == (
        'a.jsonl line 2: every "assistant" message is empty, so there is nothing to train on '
        "(only assistant turns are trained on); add the assistant's reply or remove the line"
    )


def test_a_file_of_conversations_without_replies_is_rejected_naming_the_lines(
    tmp_path: Path,
) -> None:
    # Accepted, it would be "trained" for its step budget on zero target tokens.
    rows = [
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "?"}]},
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]},
    ]
    path = write_lines(tmp_path / "a.jsonl", rows)
    with pytest.raises(DataError, match="no valid example") as err:
        validate_file(path)
    assert [e.line for e in err.value.errors] == [1, 2, 3]
    assert str(err.value).startswith('a.jsonl line 1: has no "assistant" message')
    assert "add the assistant's reply" in str(err.value)


def test_file_with_only_invalid_lines(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", ["bad", {"text": 1}])
    with pytest.raises(DataError, match="no valid example") as err:
        validate_file(path)
    assert err.value.line == 1
    assert [e.line for e in err.value.errors] == [1, 2]
    assert "a.jsonl line 1:" in str(err.value)


def test_corrupt_gzip(tmp_path: Path) -> None:
    content = gzip.compress(
        b"".join(json.dumps({"text": f"line {i} " * 50}).encode() + b"\n" for i in range(2000))
    )
    path = tmp_path / "a.jsonl.gz"
    broken = bytearray(content)
    for i in range(len(broken) // 2, len(broken) // 2 + 64):
        broken[i] ^= 0xFF
    path.write_bytes(bytes(broken))
    with pytest.raises(DataError, match="corrupt") as err:
        validate_file(path)
    assert "a.jsonl.gz" in str(err.value)


def test_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "x"}\n' * 1000)[:-20])
    with pytest.raises(DataError, match="gzip data ends abruptly"):
        validate_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        validate_file(tmp_path / "gone.jsonl")
    with pytest.raises(DataError, match="file not found"):
        tokenize(tmp_path / "gone.jsonl", tmp_path)


# --- tokenization: text ----------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 2, 3, 7, 16, 1000])
@pytest.mark.parametrize("sizes", [[1], [5], [3, 9, 1, 20, 4], [15] * 7, [1] * 50])
def test_text_packing_arithmetic(tmp_path: Path, block_size: int, sizes: list[int]) -> None:
    texts = ["".join(chr(97 + (i + j) % 26) for j in range(n)) for i, n in enumerate(sizes)]
    path = write_lines(tmp_path / "a.jsonl", [{"text": t} for t in texts])
    tf = tokenize(path, tmp_path, block_size=block_size)
    stream = [t for text in texts for t in [*text.encode(), EOS]]
    n = len(stream)
    assert tf.n_tokens == n
    assert tf.tokens.tolist() == stream
    assert tf.n_sequences == math.ceil((n - 1) / block_size)
    assert tf.starts.tolist() == [i * block_size for i in range(tf.n_sequences)]
    assert all(2 <= length <= block_size + 1 for length in tf.lengths.tolist())
    # Every position but the first is a target exactly once across all windows.
    seen = np.zeros(n, dtype=int)
    for row in range(tf.n_sequences):
        s, length = int(tf.starts[row]), int(tf.lengths[row])
        seen[s + 1 : s + length] += 1
        assert targets(tf, row) == stream[s + 1 : s + length]
    assert seen[0] == 0 and (seen[1:] == 1).all()
    assert tf.n_targets == n - 1 == int(tf.target_counts.sum())
    # Source lines of each window: first and last example it touches.
    line_of = [i + 1 for i, text in enumerate(texts) for _ in range(len(text) + 1)]
    for row, (first, last) in enumerate(tf.lines_of(np.arange(tf.n_sequences))):
        s, length = int(tf.starts[row]), int(tf.lengths[row])
        assert (first, last) == (line_of[s], line_of[s + length - 1])


def test_text_lines_follow_blank_and_invalid_lines(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", [{"text": "aaaa"}, "", "bad", {"text": "bbbb"}])
    tf = tokenize(path, tmp_path, block_size=4, allow_invalid=True)
    assert tf.n_invalid == 1
    assert tf.lines_of([0, 1]) == [(1, 1), (1, 4)]


def test_batch_shapes_padding_and_fast_path(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", [{"text": "abcdefghij"}])  # 11 tokens
    tf = tokenize(path, tmp_path, block_size=4)  # windows of 5, 5, 3
    assert tf.lengths.tolist() == [5, 5, 3]
    x, y = tf.batch(np.array([0, 1]))
    assert x.dtype == y.dtype == np.int64
    assert type(x) is np.ndarray and x.flags.c_contiguous
    assert x.tolist() == [list(b"abcd"), list(b"efgh")]
    assert y.tolist() == [list(b"bcde"), list(b"fghi")]
    x, y = tf.batch([2, 0])
    assert x.shape == y.shape == (2, 4)
    assert x[0].tolist() == [*b"ij", BYTES.pad_id, BYTES.pad_id]
    assert y[0].tolist() == [ord("j"), EOS, -1, -1]
    assert tf.targets_of([0, 1, 2]) == 10
    assert tf.targets_of(np.array([2])) == 2


def test_sequences_under_two_tokens_are_dropped(tmp_path: Path) -> None:
    tok = train_wordlevel()  # whitespace encodes to nothing: the row is just [eos]
    short = {"prompt": "", "completion": " "}
    path = write_lines(tmp_path / "a.jsonl", [short, {"prompt": "hello", "completion": "cat"}])
    tf = tokenize(path, tmp_path, tokenizer=tok)
    assert (tf.n_examples, tf.n_sequences, tf.n_no_target) == (2, 1, 1)
    assert tf.lines_of([0]) == [(2, 2)]
    only_short = write_lines(tmp_path / "b.jsonl", [short])
    with pytest.raises(DataError, match="no example is long enough"):
        tokenize(only_short, tmp_path, tokenizer=tok)


# --- tokenization: prompt/completion ---------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    prompt=st.text(min_size=1, max_size=30),
    completion=st.text(min_size=1, max_size=30).filter(str.strip),
)
def test_prompt_completion_targets(prompt: str, completion: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_lines(Path(tmp) / "a.jsonl", [{"prompt": prompt, "completion": completion}])
        tf = tokenize(path, Path(tmp), block_size=256)
    p, c = list(prompt.encode()), list(completion.encode())
    assert sequence(tf, 0) == p + c + [EOS]
    assert targets(tf, 0) == [*c, EOS]
    assert tf.n_targets == len(c) + 1
    assert tf.mask.tolist() == [0] * len(p) + [1] * (len(c) + 1)
    assert tf.n_truncated == 0


def test_prompt_completion_truncation(tmp_path: Path) -> None:
    rows = [
        {"prompt": "0123456789", "completion": "abc"},  # fits: 14 tokens
        {"prompt": "0123456789", "completion": "abcdef"},  # prompt cut from the left
        {"prompt": "0123456789", "completion": "abcdefghijklmnopqrstu"},  # completion cut
        {"prompt": "", "completion": "xyz"},  # no prompt: the first token is not predicted
    ]
    path = write_lines(tmp_path / "a.jsonl", rows)
    tf = tokenize(path, tmp_path, block_size=15)  # at most 16 tokens per sequence
    assert tf.n_truncated == 2
    assert sequence(tf, 0) == [*b"0123456789abc", EOS]
    assert sequence(tf, 1) == [*b"123456789abcdef", EOS]
    assert targets(tf, 1) == [*b"abcdef", EOS]
    assert sequence(tf, 2) == list(b"abcdefghijklmnop")  # no eos: the text did not end
    assert targets(tf, 2) == list(b"bcdefghijklmnop")
    assert targets(tf, 3) == [*b"yz", EOS]
    assert tf.lines_of([0, 3]) == [(1, 1), (4, 4)]
    assert tf.target_counts.tolist() == [4, 7, 15, 3]
    assert tf.n_targets == 29


# --- tokenization: messages ------------------------------------------------------------------


def chat(*turns: tuple[str, str]) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def test_messages_targets_only_assistant_turns(tmp_path: Path) -> None:
    row = chat(
        ("system", "be nice"),
        ("user", "hi"),
        ("assistant", "yo"),
        ("user", "?"),
        ("assistant", "ok!"),
    )
    path = write_lines(tmp_path / "a.jsonl", [row])
    tf = tokenize(path, tmp_path, block_size=512)
    rendered = (
        "<|im_start|>system\nbe nice<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>user\n?<|im_end|>\n"
        "<|im_start|>assistant\nok!<|im_end|>\n"
    )
    assert BYTES.decode(sequence(tf, 0)) == rendered
    assert sequence(tf, 0).count(257) == 5  # markers are special ids, not text
    assert targets(tf, 0) == [*b"yo", 258, *b"ok!", 258]
    assert (tf.n_targets, tf.n_no_target, tf.n_truncated) == (7, 0, 0)


def test_messages_truncated_from_the_right(tmp_path: Path) -> None:
    row = chat(("user", "hello there"), ("assistant", "a long answer"))
    # A short second line keeps something to learn in the file as a whole.
    path = write_lines(tmp_path / "a.jsonl", [row, chat(("assistant", "ok"))])
    tf = tokenize(path, tmp_path, block_size=20)
    assert tf.n_truncated == 1
    assert tf.lengths.tolist() == [21, 15]
    prefix = [257, *b"user\nhello there", 258, 10, 257, *b"a"]
    assert sequence(tf, 0) == prefix
    assert tf.n_no_target == 1  # the cut removed the only assistant turn
    tf = tokenize(path, tmp_path, block_size=33)
    assert targets(tf, 0) == list(b"a lo")


def test_a_conversation_without_a_reply_is_never_a_zero_target_sequence(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", [chat(("user", "hi")), CHAT])
    with pytest.raises(DataError, match='line 1: has no "assistant" message'):
        tokenize(path, tmp_path)
    tf = tokenize(path, tmp_path, allow_invalid=True)
    assert tf.n_sequences == 1
    assert tf.n_no_target == 0
    assert tf.target_counts.tolist() == [3]


def test_messages_with_a_tokenizer_without_chat_markers(tmp_path: Path) -> None:
    tok = train_bpe()
    path = write_lines(tmp_path / "a.jsonl", [chat(("user", "hello"), ("assistant", "cat"))])
    tf = tokenize(path, tmp_path, tokenizer=tok)
    text = tok.decode(sequence(tf, 0))
    assert text == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\ncat<|im_end|>\n"
    assert tok.decode(targets(tf, 0)) == "cat<|im_end|>"


# --- user tokenizers, gzip, dtypes -----------------------------------------------------------


def train_bpe() -> Tokenizer:
    hf = HfTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    from tokenizers import decoders

    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(["hello world", "the cat sat", "hello cat"] * 3, trainer)
    return Tokenizer.from_json(hf.to_str())


def train_wordlevel() -> Tokenizer:
    hf = HfTokenizer(models.WordLevel(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=["<unk>", "</s>"], show_progress=False)
    hf.train_from_iterator(["hello world", "the cat sat"], trainer)
    return Tokenizer.from_json(hf.to_str())


def test_user_tokenizer_file_end_to_end(tmp_path: Path) -> None:
    tok_path = tmp_path / "tokenizer.json"
    train_bpe().save(tok_path)
    tok = load_tokenizer(str(tok_path))
    texts = ["hello world", "the cat sat on the mat", "hello"]
    path = write_lines(tmp_path / "a.jsonl", [{"text": t} for t in texts])
    tf = tokenize(path, tmp_path, tokenizer=tok, block_size=4)
    stream = [t for text in texts for t in [*tok.encode(text), tok.eos_id]]
    assert tf.tokens.tolist() == stream
    assert tok.decode(stream) == "hello world</s>the cat sat on the mat</s>hello</s>"
    assert tf.n_sequences == math.ceil((len(stream) - 1) / 4)
    x, _ = tf.batch([tf.n_sequences - 1, 0])
    if tf.lengths[-1] < 5:
        assert x[0, -1] == tok.pad_id == special_id(tok, "<pad>")
    pc = write_lines(tmp_path / "b.jsonl", [{"prompt": "hello", "completion": " cat"}])
    tf = tokenize(pc, tmp_path, tokenizer=tok)
    assert tok.decode(targets(tf, 0)) == " cat</s>"


def test_wordlevel_tokenizer_and_pad_fallback(tmp_path: Path) -> None:
    tok = train_wordlevel()
    path = write_lines(
        tmp_path / "a.jsonl",
        [{"prompt": "hello", "completion": "cat sat"}] * 2
        + [{"prompt": "the", "completion": "world"}],
    )
    tf = tokenize(path, tmp_path, tokenizer=tok)
    x, y = tf.batch([2, 0])
    the, world = special_id(tok, "the"), special_id(tok, "world")
    assert x[0].tolist() == [the, world, tok.eos_id]  # padded with eos: no pad token
    assert y[0].tolist() == [world, tok.eos_id, -1]


def test_gzip_file_tokenizes_like_plain(tmp_path: Path) -> None:
    rows = [{"text": f"row {i}"} for i in range(100)]
    plain = tokenize(write_lines(tmp_path / "a.jsonl", rows), tmp_path)
    packed = tokenize(write_lines(tmp_path / "a.jsonl.gz", rows), tmp_path)
    assert packed.key != plain.key
    assert packed.tokens.tolist() == plain.tokens.tolist()
    assert packed.lines.tolist() == plain.lines.tolist()


def test_large_vocabulary_uses_uint32(tmp_path: Path) -> None:
    vocab = {f"w{i}": i for i in range(70_000)}
    vocab["</s>"] = 70_000
    hf = HfTokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = Tokenizer.from_json(hf.to_str())
    path = write_lines(tmp_path / "a.jsonl", [{"text": "w69999 w5 w65536"}])
    tf = tokenize(path, tmp_path, tokenizer=tok)
    assert tf.tokens.dtype == np.uint32
    assert tf.tokens.tolist() == [69999, 5, 65536, 70_000]
    assert tokenize(write_lines(tmp_path / "b.jsonl", [TEXT]), tmp_path).tokens.dtype == np.uint16


# --- strictness ------------------------------------------------------------------------------


def test_strict_by_default_and_allow_invalid(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", [TEXT, "oops", TEXT, {"text": 3}])
    with pytest.raises(DataError, match=r"a\.jsonl line 2: is not valid JSON") as err:
        tokenize(path, tmp_path)
    assert [e.line for e in err.value.errors] == [2, 4]
    assert "and 1 more invalid lines" in str(err.value)
    assert not list((tmp_path / "cache").iterdir())  # rejected: nothing kept
    tf = tokenize(path, tmp_path, allow_invalid=True)
    assert (tf.n_examples, tf.n_invalid) == (2, 1 + 1)
    # The entry built leniently does not make a strict call succeed.
    with pytest.raises(DataError, match="line 2"):
        tokenize(path, tmp_path)


# --- cache -----------------------------------------------------------------------------------


def test_cache_hit_reads_only_the_entry(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", [{"text": f"row {i}"} for i in range(50)])
    sha = validate_file(path).sha256
    first = tokenize(path, tmp_path, sha256=sha)
    entry = tmp_path / "cache" / first.key
    assert sorted(p.name for p in entry.iterdir()) == sorted(
        [f"{name}.npy" for name in cache.ARRAYS] + ["meta.json"]
    )
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["sha256"] == sha and meta["n_sequences"] == first.n_sequences
    path.unlink()  # a hit must not need the source
    second = tokenize(path, tmp_path, sha256=sha)
    assert isinstance(second.tokens, np.memmap)
    assert second.key == first.key == cache_key(sha, tokenizer=BYTES, block_size=64)
    assert second.tokens.tolist() == first.tokens.tolist()
    assert second.n_targets == first.n_targets


def test_cache_key_depends_on_tokenizer_and_block_size(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", [TEXT])
    keys = {
        tokenize(path, tmp_path, block_size=8).key,
        tokenize(path, tmp_path, block_size=9).key,
        tokenize(path, tmp_path, block_size=8, tokenizer=train_bpe()).key,
    }
    assert len(keys) == 3
    assert len(list((tmp_path / "cache").iterdir())) == 3


def test_changed_sha_is_rejected(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", [TEXT])
    with pytest.raises(DataError, match="changed while it was being read"):
        tokenize(path, tmp_path, sha256="0" * 64)


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


def test_incomplete_entries_are_ignored_and_rebuilt(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", [TEXT, TEXT])
    key = cache_key(file_sha256(path), tokenizer=BYTES, block_size=64)
    cache = tmp_path / "cache"
    staging = cache / f".staging-{key}-{dead_pid()}-abcd"
    staging.mkdir(parents=True)
    (staging / "tokens.npy").write_bytes(b"half")
    entry = cache / key
    entry.mkdir()
    (entry / "tokens.npy").write_bytes(b"half")  # as if meta.json was never written
    tf = tokenize(path, tmp_path)
    assert tf.tokens.tolist() == [*b"hello", EOS] * 2
    assert (entry / "meta.json").exists()
    assert not staging.exists()


def test_corrupt_entry_is_rebuilt(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", [TEXT])
    tf = tokenize(path, tmp_path)
    key, lengths = tf.key, tf.lengths.tolist()
    del tf  # drop the memory map before damaging its file
    (tmp_path / "cache" / key / "lengths.npy").write_bytes(b"garbage")
    again = tokenize(path, tmp_path)
    assert again.lengths.tolist() == lengths == [6]


def test_crash_mid_write_leaves_no_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_lines(tmp_path / "a.jsonl", [TEXT])

    def crash(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(cache, "write_durably", crash)
    with pytest.raises(OSError, match="disk full"):
        tokenize(path, tmp_path)
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.undo()
    assert tokenize(path, tmp_path).n_tokens == 6


def test_losing_the_rename_race_uses_the_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_lines(tmp_path / "a.jsonl", [TEXT])
    winner = tokenize(path, tmp_path)
    real = cache._load_entry
    calls = []

    def miss_first(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return None if len(calls) == 1 else real(*args, **kwargs)

    monkeypatch.setattr(cache, "_load_entry", miss_first)
    loser = tokenize(path, tmp_path)  # builds, finds the entry taken, uses it
    assert loser.key == winner.key
    assert loser.tokens.tolist() == winner.tokens.tolist()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [winner.key]


# --- order -----------------------------------------------------------------------------------


def test_sequence_order_is_deterministic() -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    order = sequence_order(100, seed=1337, sha256=sha, epoch=0)
    assert sorted(order.tolist()) == list(range(100))
    assert order.tolist() == sequence_order(100, seed=1337, sha256=sha, epoch=0).tolist()
    assert order.tolist() != sequence_order(100, seed=1337, sha256=sha, epoch=1).tolist()
    assert order.tolist() != sequence_order(100, seed=1338, sha256=sha, epoch=0).tolist()
    other = hashlib.sha256(b"y").hexdigest()
    assert order.tolist() != sequence_order(100, seed=1337, sha256=other, epoch=0).tolist()
    code = (
        "from trainer.data import sequence_order; "
        f"print(sequence_order(100, seed=1337, sha256='{sha}', epoch=0).tolist())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    assert json.loads(proc.stdout) == order.tolist()
    assert sequence_order(0, seed=1, sha256=sha, epoch=0).tolist() == []
