"""Tokenized cache of drop files and the batches the training loop draws from it.

A validated file is tokenized once into flat arrays under ``cache_dir/<key>/``, keyed by the
file's content, the tokenizer and the block size, and memory-mapped from then on. Entries are
built in a staging folder and renamed into place with ``meta.json`` written last, so a crash
never leaves a usable half-written entry and concurrent builders agree on one winner.

Sequences are rows ``tokens[start : start + length]``; ``mask`` marks the positions that are
prediction targets. Text files are one packed stream cut into overlapping windows of
``block_size + 1`` tokens; prompt/completion and chat files give one sequence per example.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain, islice
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from trainer.formats import (
    MAX_LINE_BYTES,
    DataError,
    Example,
    ExampleStream,
    Format,
    LineError,
    ValidationReport,
    file_sha256,
    invalid_lines_error,
    validate_file,
)
from trainer.tokenizer import Tokenizer

log = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when the layout or the tokenization rules change: old entries are then ignored."""
META = "meta.json"
ARRAYS = ("tokens", "mask", "starts", "lengths", "target_counts", "lines")
_ENCODE_BATCH = 2048
_STAGING = ".staging-"


@dataclass(frozen=True, eq=False)
class TokenizedFile:
    """A tokenized drop file: counts plus memory-mapped arrays, one row per sequence."""

    path: Path
    """The source file (it may be gone once the entry exists)."""
    sha256: str
    """sha256 hex of the source file's bytes."""
    format: Format
    """Format of the source file."""
    key: str
    """Cache key: names the folder under ``cache_dir``."""
    block_size: int
    """Longest model input; sequences hold at most ``block_size + 1`` tokens."""
    pad_id: int
    """Id used to right-pad ``x`` in ``batch`` (never a target)."""
    n_examples: int
    """Valid examples tokenized."""
    n_invalid: int
    """Invalid lines skipped (non-zero only with ``allow_invalid=True``)."""
    n_sequences: int
    """Rows in ``starts``/``lengths``."""
    n_tokens: int
    """Tokens stored."""
    n_targets: int
    """Prediction targets over all sequences (sum of ``target_counts``)."""
    n_truncated: int
    """Examples cut to fit ``block_size + 1`` tokens."""
    n_no_target: int
    """Examples giving no target: kept as zero-loss rows, or dropped if under 2 tokens."""
    tokens: np.ndarray
    """All token ids (uint16, or uint32 for vocabularies of 65536 and more)."""
    mask: np.ndarray
    """uint8 per token: 1 where the token is a prediction target."""
    starts: np.ndarray
    """int64 per sequence: offset of its first token in ``tokens``."""
    lengths: np.ndarray
    """int32 per sequence: tokens in it (2 to ``block_size + 1``)."""
    target_counts: np.ndarray
    """int32 per sequence: targets among positions 1..length-1 (the ``y`` side)."""
    lines: np.ndarray
    """int32 [n_sequences, 2]: first and last source line of each sequence."""

    def batch(self, indices: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Inputs ``x`` and targets ``y`` (int64 [B, T], -1 = no target) for these rows."""
        idx = np.asarray(indices, dtype=np.int64)
        starts = self.starts[idx]
        lengths = self.lengths[idx].astype(np.int64)
        width = int(lengths.max())
        offsets = starts[:, None] + np.arange(width, dtype=np.int64)
        if (lengths == width).all():
            tokens = self.tokens[offsets].astype(np.int64)
            targets = self.mask[offsets[:, 1:]].astype(bool)
            x = np.ascontiguousarray(tokens[:, :-1])
        else:
            # Column j of x and y is real while j + 1 < length.
            real = np.arange(1, width) < lengths[:, None]
            # Clamp so padding positions gather a real (ignored) token, not out of bounds.
            np.minimum(offsets, self.n_tokens - 1, out=offsets)
            tokens = self.tokens[offsets].astype(np.int64)
            targets = self.mask[offsets[:, 1:]].astype(bool) & real
            x = np.where(real, tokens[:, :-1], self.pad_id)
        y = np.where(targets, tokens[:, 1:], -1)
        return x, y

    def lines_of(self, indices: np.ndarray | Sequence[int]) -> list[tuple[int, int]]:
        """Source line range (first, last) of each of these rows, for error messages."""
        rows = self.lines[np.asarray(indices, dtype=np.int64)]
        return [(int(first), int(last)) for first, last in rows]

    def targets_of(self, indices: np.ndarray | Sequence[int]) -> int:
        """Prediction targets in these rows (the loss normaliser)."""
        return int(self.target_counts[np.asarray(indices, dtype=np.int64)].sum())


def cache_key(sha256: str, *, tokenizer: Tokenizer, block_size: int) -> str:
    """Folder name of a file's entry: content, tokenizer, block size and layout version."""
    material = f"{sha256}:{tokenizer.fingerprint}:{block_size}:{CACHE_VERSION}"
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def sequence_order(n: int, *, seed: int, sha256: str, epoch: int) -> np.ndarray:
    """Permutation of ``range(n)`` fixed by (seed, file, epoch), equal in every process."""
    if seed < 0 or epoch < 0:
        raise ValueError("seed and epoch must be non-negative")
    entropy = np.random.SeedSequence([seed, int(sha256, 16), epoch])
    return np.random.Generator(np.random.PCG64(entropy)).permutation(n)


def tokenize_file(
    path: Path | str,
    *,
    tokenizer: Tokenizer,
    block_size: int,
    cache_dir: Path | str,
    allow_invalid: bool = False,
    sha256: str | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> TokenizedFile:
    """The tokenized form of ``path``, from the cache when an entry exists, else built.

    With ``sha256`` given (e.g. from ``validate_file``) a cache hit reads nothing but the
    entry. Raises ``DataError`` for an untrainable file, including any invalid line unless
    ``allow_invalid`` (then invalid lines are skipped).
    """
    if block_size < 1:
        raise ValueError("block_size must be positive")
    path, cache_dir = Path(path), Path(cache_dir)
    sha256 = sha256 or _hash_source(path)
    key = cache_key(sha256, tokenizer=tokenizer, block_size=block_size)
    entry = cache_dir / key
    loaded = _load_entry(entry, path=path, key=key)
    if loaded is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_dead_staging(cache_dir, key)
        loaded = _build_entry(
            path,
            entry=entry,
            key=key,
            sha256=sha256,
            tokenizer=tokenizer,
            block_size=block_size,
            max_line_bytes=max_line_bytes,
            allow_invalid=allow_invalid,
        )
    meta, tokenized = loaded
    if meta["n_invalid"] and not allow_invalid:
        errors = tuple(LineError(**error) for error in meta["invalid_lines"])
        raise invalid_lines_error(path, errors, n_invalid=meta["n_invalid"])
    return tokenized


def _hash_source(path: Path) -> str:
    try:
        return file_sha256(path)
    except FileNotFoundError as exc:
        raise DataError(f"{path.name}: file not found", path=path) from exc


def _load_entry(entry: Path, *, path: Path, key: str) -> tuple[dict, TokenizedFile] | None:
    """A complete entry, or ``None`` (a folder without a readable meta.json is incomplete)."""
    try:
        meta = json.loads((entry / META).read_text(encoding="utf-8"))
        if meta["cache_version"] != CACHE_VERSION or meta["key"] != key:
            raise ValueError("entry written by another cache version")
        arrays = {name: np.load(entry / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
        fields = {name: meta[name] for name in _META_FIELDS}
        expected = {"tokens": meta["n_tokens"], "mask": meta["n_tokens"]}
        expected.update(dict.fromkeys(ARRAYS[2:], meta["n_sequences"]))
        if any(len(arrays[name]) != rows for name, rows in expected.items()):
            raise ValueError("array sizes disagree with meta.json")
    except FileNotFoundError:
        if entry.exists():
            log.warning("ignoring incomplete cache entry %s; rebuilding it", entry)
            shutil.rmtree(entry, ignore_errors=True)
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable cache entry %s (%s); rebuilding it", entry, exc)
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return meta, TokenizedFile(path=path, key=key, **fields, **arrays)


_META_FIELDS = (
    "sha256",
    "format",
    "block_size",
    "pad_id",
    "n_examples",
    "n_invalid",
    "n_sequences",
    "n_tokens",
    "n_targets",
    "n_truncated",
    "n_no_target",
)


def _remove_dead_staging(cache_dir: Path, key: str) -> None:
    """Delete staging folders of this key left by builders that died (same host)."""
    for staging in cache_dir.glob(f"{_STAGING}{key}-*"):
        try:
            pid = int(staging.name.split("-")[2])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            shutil.rmtree(staging, ignore_errors=True)
        except PermissionError:
            pass  # alive, owned by another user


def _build_entry(
    path: Path,
    *,
    entry: Path,
    key: str,
    sha256: str,
    tokenizer: Tokenizer,
    block_size: int,
    max_line_bytes: int,
    allow_invalid: bool,
) -> tuple[dict, TokenizedFile]:
    staging = entry.with_name(f"{_STAGING}{key}-{os.getpid()}-{secrets.token_hex(4)}")
    staging.mkdir()
    try:
        stream = ExampleStream(path, max_line_bytes=max_line_bytes)
        writers = _Writers(staging, vocab_size=tokenizer.vocab_size)
        with writers:
            counts = _tokenize_stream(stream, writers, tokenizer=tokenizer, block_size=block_size)
        report = stream.report()
        if not allow_invalid:
            # Strict mode rejects before committing: no entry is kept for a rejected file.
            report.raise_if_invalid()
        if report.sha256 != sha256:
            raise DataError(
                f"{path.name} changed while it was being read; drop files complete, "
                "e.g. write them elsewhere and move them into the inbox",
                path=path,
            )
        if counts["n_sequences"] == 0:
            raise DataError(
                f"{path.name}: no example is long enough to train on (each needs 2 tokens)",
                path=path,
            )
        meta = _meta(report, counts, key=key, tokenizer=tokenizer, block_size=block_size)
        _write_durably(staging / META, json.dumps(meta, indent=1).encode())
        _fsync_dir(staging)
        try:
            staging.rename(entry)
        except OSError:
            # Another builder won the race; its entry is equivalent, use it.
            if not (entry / META).exists():
                raise
            log.info("cache entry %s was built concurrently; using that one", key)
        _fsync_dir(entry.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    loaded = _load_entry(entry, path=path, key=key)
    if loaded is None:
        raise RuntimeError(f"cache entry {entry} vanished right after being written")
    log.info(
        "tokenized %s: %d examples -> %d sequences, %d tokens, %d targets",
        path.name,
        counts["n_examples"],
        counts["n_sequences"],
        counts["n_tokens"],
        counts["n_targets"],
    )
    return loaded


def _meta(
    report: ValidationReport,
    counts: dict[str, int],
    *,
    key: str,
    tokenizer: Tokenizer,
    block_size: int,
) -> dict[str, Any]:
    return {
        "cache_version": CACHE_VERSION,
        "key": key,
        "source_name": report.path.name,
        "sha256": report.sha256,
        "size": report.size,
        "format": report.format,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "vocab_size": tokenizer.vocab_size,
        "token_dtype": _token_dtype(tokenizer.vocab_size).name,
        "block_size": block_size,
        "eos_id": tokenizer.eos_id,
        "pad_id": tokenizer.pad_id,
        **counts,
        "n_invalid": report.n_invalid,
        "n_empty_lines": report.n_empty_lines,
        "invalid_lines": [
            {"line": e.line, "reason": e.reason, "message": e.message} for e in report.errors
        ],
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size < 2**16 else np.uint32)


def _tokenize_stream(
    stream: ExampleStream, writers: _Writers, *, tokenizer: Tokenizer, block_size: int
) -> dict[str, int]:
    examples = iter(stream)
    counts = {"n_examples": 0, "n_truncated": 0, "n_no_target": 0}
    packer: _TextPacker | None = None
    for chunk in iter(lambda: list(islice(examples, _ENCODE_BATCH)), []):
        counts["n_examples"] += len(chunk)
        if stream.format == "text":
            packer = packer or _TextPacker(writers, block_size)
            packer.add([e.value for e in chunk], [e.line for e in chunk], tokenizer=tokenizer)
        else:
            render = _render_prompt if stream.format == "prompt_completion" else _render_chat
            _add_sequences(writers, render(chunk, tokenizer, block_size + 1), counts)
    if packer is not None:
        packer.finish()
    counts.update(writers.totals())
    return counts


class _TextPacker:
    """Concatenates ``text + eos`` examples and cuts windows of ``block_size + 1`` tokens."""

    def __init__(self, writers: _Writers, block_size: int) -> None:
        self._w = writers
        self._bs = block_size
        self._n_tokens = 0
        self._next = 0  # index of the next window to emit
        # Start offset and line of the examples the next windows may still overlap.
        self._ex_starts = np.zeros(0, dtype=np.int64)
        self._ex_lines = np.zeros(0, dtype=np.int32)

    def add(self, texts: list[str], lines: list[int], *, tokenizer: Tokenizer) -> None:
        encoded = tokenizer.encode_batch(texts)
        eos = [tokenizer.eos_id]
        sizes = np.fromiter((len(ids) + 1 for ids in encoded), np.int64, len(encoded))
        total = int(sizes.sum())
        flat = np.fromiter(chain.from_iterable(ids + eos for ids in encoded), np.int64, total)
        offsets = self._n_tokens + np.concatenate(([0], np.cumsum(sizes)[:-1]))
        self._ex_starts = np.concatenate((self._ex_starts, offsets))
        self._ex_lines = np.concatenate((self._ex_lines, np.asarray(lines, dtype=np.int32)))
        self._w.append_tokens(flat, np.ones(total, dtype=np.uint8))
        self._n_tokens += total
        full = (self._n_tokens - 1) // self._bs if self._n_tokens > self._bs else 0
        self._emit(np.arange(self._next, full, dtype=np.int64), self._bs + 1)

    def finish(self) -> None:
        # Window i exists while it holds at least 2 tokens: i * bs < n_tokens - 1.
        count = -(-(self._n_tokens - 1) // self._bs) if self._n_tokens > 1 else 0
        if count > self._next:
            last = np.arange(self._next, count, dtype=np.int64)
            self._emit(last, self._n_tokens - last * self._bs)

    def _emit(self, windows: np.ndarray, lengths: np.ndarray | int) -> None:
        if not len(windows):
            return
        starts = windows * self._bs
        lengths = np.broadcast_to(np.asarray(lengths, dtype=np.int64), starts.shape)
        first = np.searchsorted(self._ex_starts, starts, side="right") - 1
        last = np.searchsorted(self._ex_starts, starts + lengths - 1, side="right") - 1
        lines = np.stack((self._ex_lines[first], self._ex_lines[last]), axis=1)
        self._w.append_sequences(starts, lengths, lengths - 1, lines)
        self._next = int(windows[-1]) + 1
        # Forget examples that end before the next window starts.
        keep = max(int(np.searchsorted(self._ex_starts, self._next * self._bs, "right")) - 1, 0)
        self._ex_starts, self._ex_lines = self._ex_starts[keep:], self._ex_lines[keep:]


def _render_prompt(
    chunk: list[Example], tokenizer: Tokenizer, cap: int
) -> Iterator[tuple[list[int], list[int], int, bool]]:
    """``prompt + completion + eos``, targets on completion and eos, trimmed to ``cap``."""
    encoded = tokenizer.encode_batch([t for e in chunk for t in e.value])
    eos = [tokenizer.eos_id]
    for i, example in enumerate(chunk):
        prompt, completion = encoded[2 * i], encoded[2 * i + 1]
        truncated = len(prompt) + len(completion) + 1 > cap
        if not truncated:
            ids = prompt + completion + eos
        elif len(completion) + 1 <= cap:
            # Keep the end of the prompt: the part nearest the completion matters most.
            prompt = prompt[len(prompt) - (cap - len(completion) - 1) :]
            ids = prompt + completion + eos
        else:
            # The completion alone does not fit: no eos, the text did not end here.
            prompt, ids = [], completion[:cap]
        yield ids, [0] * len(prompt) + [1] * (len(ids) - len(prompt)), example.line, truncated


def _render_chat(
    chunk: list[Example], tokenizer: Tokenizer, cap: int
) -> Iterator[tuple[list[int], list[int], int, bool]]:
    """ChatML turns; targets on assistant content and its end marker; cut right at ``cap``."""
    marks = tokenizer.chat_ids
    end, newline = list(marks.end), list(marks.newline)
    contents = iter(tokenizer.encode_batch([c for e in chunk for _, c in e.value]))
    for example in chunk:
        ids: list[int] = []
        mask: list[int] = []
        for role, _ in example.value:
            header, content = list(marks.headers[role]), next(contents)
            target = int(role == "assistant")
            ids += header + content + end + newline
            mask += [0] * len(header) + [target] * (len(content) + len(end)) + [0] * len(newline)
        truncated = len(ids) > cap
        yield ids[:cap], mask[:cap], example.line, truncated


def _add_sequences(
    writers: _Writers,
    rendered: Iterator[tuple[list[int], list[int], int, bool]],
    counts: dict[str, int],
) -> None:
    """Append one row per rendered example (rows under 2 tokens are dropped)."""
    all_ids: list[int] = []
    all_mask: list[int] = []
    lengths: list[int] = []
    targets: list[int] = []
    lines: list[int] = []
    for ids, mask, line, truncated in rendered:
        counts["n_truncated"] += truncated
        n_targets = sum(mask) - mask[0] if mask else 0
        counts["n_no_target"] += n_targets == 0
        if len(ids) < 2:
            continue
        all_ids += ids
        all_mask += mask
        lengths.append(len(ids))
        targets.append(n_targets)
        lines.append(line)
    if not lengths:
        return
    sizes = np.asarray(lengths, dtype=np.int64)
    starts = writers.n_tokens + np.concatenate(([0], np.cumsum(sizes)[:-1]))
    writers.append_tokens(np.asarray(all_ids, np.int64), np.asarray(all_mask, np.uint8))
    line_pairs = np.repeat(np.asarray(lines, dtype=np.int32)[:, None], 2, axis=1)
    writers.append_sequences(starts, sizes, np.asarray(targets), line_pairs)


class _Writers:
    """The entry's six arrays, written as .npy files while tokenization streams."""

    def __init__(self, folder: Path, *, vocab_size: int) -> None:
        dtypes = {
            "tokens": _token_dtype(vocab_size),
            "mask": np.uint8,
            "starts": np.int64,
            "lengths": np.int32,
            "target_counts": np.int32,
            "lines": np.int32,
        }
        self._npy = {
            name: _NpyWriter(
                folder / f"{name}.npy", np.dtype(dtypes[name]), (2,) * (name == "lines")
            )
            for name in ARRAYS
        }
        self._vocab_size = vocab_size
        self.n_tokens = 0
        self._n_sequences = 0
        self._n_targets = 0

    def append_tokens(self, ids: np.ndarray, mask: np.ndarray) -> None:
        if len(ids) and (ids.min() < 0 or ids.max() >= self._vocab_size):
            raise ValueError("the tokenizer produced an id outside its vocabulary")
        self._npy["tokens"].append(ids)
        self._npy["mask"].append(mask)
        self.n_tokens += len(ids)

    def append_sequences(
        self, starts: np.ndarray, lengths: np.ndarray, targets: np.ndarray, lines: np.ndarray
    ) -> None:
        self._npy["starts"].append(starts)
        self._npy["lengths"].append(lengths)
        self._npy["target_counts"].append(targets)
        self._npy["lines"].append(lines)
        self._n_sequences += len(starts)
        self._n_targets += int(np.sum(targets))

    def totals(self) -> dict[str, int]:
        return {
            "n_sequences": self._n_sequences,
            "n_tokens": self.n_tokens,
            "n_targets": self._n_targets,
        }

    def __enter__(self) -> _Writers:
        return self

    def __exit__(self, *exc: object) -> None:
        for writer in self._npy.values():
            writer.close()


class _NpyWriter:
    """Appends rows to a .npy file; the header is rewritten in place with the final shape."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...]) -> None:
        self._file: BinaryIO = path.open("wb")
        self._dtype = dtype
        self._row_shape = row_shape
        self._rows = 0
        # numpy pads headers so the first axis can grow in place; reserve that size now.
        self._header_size = len(self._header(0))
        self._file.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        buffer = io.BytesIO()
        header = {
            "descr": np.lib.format.dtype_to_descr(self._dtype),
            "fortran_order": False,
            "shape": (rows, *self._row_shape),
        }
        np.lib.format.write_array_header_1_0(buffer, header)
        return buffer.getvalue()

    def append(self, rows: np.ndarray) -> None:
        array = np.ascontiguousarray(rows, dtype=self._dtype)
        if array.shape[1:] != self._row_shape:
            raise ValueError(f"rows of shape {array.shape[1:]}, expected {self._row_shape}")
        self._file.write(array.tobytes())
        self._rows += len(array)

    def close(self) -> None:
        if self._file.closed:
            return
        with contextlib.closing(self._file):
            header = self._header(self._rows)
            if len(header) != self._header_size:
                raise RuntimeError("numpy .npy header size changed; cannot finalize in place")
            self._file.seek(0)
            self._file.write(header)
            self._file.flush()
            os.fsync(self._file.fileno())


def _write_durably(path: Path, content: bytes) -> None:
    with path.open("wb") as file:
        file.write(content)
        file.flush()
        os.fsync(file.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = [
    "CACHE_VERSION",
    "DataError",
    "LineError",
    "TokenizedFile",
    "ValidationReport",
    "cache_key",
    "file_sha256",
    "sequence_order",
    "tokenize_file",
    "validate_file",
]
