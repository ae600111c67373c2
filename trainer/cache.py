"""The tokenized cache: each drop file tokenized once, then memory-mapped.

A validated file is tokenized into flat arrays under ``cache_dir/<key>/``, keyed by the
file's content, the tokenizer, the block size and the holdout, and memory-mapped from
then on. Entries are staged folders (``trainer.records.staging``) with ``meta.json``
written last, so a crash never leaves a usable half-written entry, and of concurrent
builders the first to rename wins and the others use its entry.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from trainer.arrays import ARRAYS, ArrayWriters, token_dtype
from trainer.data import TokenizedFile
from trainer.packing import Holdout, tokenize_stream
from trainer.records.formats import (
    MAX_LINE_BYTES,
    DataError,
    ExampleStream,
    LineError,
    ValidationReport,
    file_sha256,
    invalid_lines_error,
)
from trainer.records.staging import STAGING_PREFIX, staged_folder
from trainer.records.storage import as_disk_full, fsync_path, write_durably
from trainer.tokenizer import Tokenizer

log = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when the layout or the tokenization rules change: old entries are then ignored."""
META = "meta.json"
HOLDOUT = "holdout"
"""Subfolder of an entry with the held-out part's arrays."""


def cache_key(
    sha256: str, *, tokenizer: Tokenizer, block_size: int, holdout_fraction: float = 0.0
) -> str:
    """Folder name of a file's entry: content, tokenizer, block size, holdout and layout."""
    material = f"{sha256}:{tokenizer.fingerprint}:{block_size}:{CACHE_VERSION}"
    if holdout_fraction > 0:
        # Only then, so entries built before holdouts existed keep their keys.
        material += f":holdout={holdout_fraction!r}"
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def tokenize_file(
    path: Path | str,
    *,
    tokenizer: Tokenizer,
    block_size: int,
    cache_dir: Path | str,
    allow_invalid: bool = False,
    sha256: str | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    holdout_fraction: float = 0.0,
) -> TokenizedFile:
    """The tokenized form of ``path``, from the cache when an entry exists, else built.

    With ``sha256`` given (e.g. from ``validate_file``) a cache hit reads nothing but the
    entry. Raises ``DataError`` for an untrainable file, including any invalid line unless
    ``allow_invalid`` (then invalid lines are skipped). With ``holdout_fraction`` that share
    of the examples (chosen by content hash) goes to ``.holdout`` instead of training.
    """
    if block_size < 1:
        raise ValueError("block_size must be positive")
    path, cache_dir = Path(path), Path(cache_dir)
    sha256 = sha256 or _hash_source(path)
    key = cache_key(
        sha256, tokenizer=tokenizer, block_size=block_size, holdout_fraction=holdout_fraction
    )
    entry = cache_dir / key
    loaded = _load_entry(entry, path=path, key=key)
    if loaded is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_dead_staging(cache_dir, key)
        loaded = _built_entry(
            path,
            entry=entry,
            key=key,
            sha256=sha256,
            tokenizer=tokenizer,
            block_size=block_size,
            max_line_bytes=max_line_bytes,
            allow_invalid=allow_invalid,
            holdout_fraction=holdout_fraction,
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
    holdout = None
    if meta.get("holdout", {}).get("n_sequences"):
        held = meta["holdout"]
        holdout = TokenizedFile(
            path=path,
            key=key,
            **{**fields, **{k: held[k] for k in _COUNT_FIELDS}},
            **{name: np.load(entry / HOLDOUT / f"{name}.npy", mmap_mode="r") for name in ARRAYS},
        )
    return meta, TokenizedFile(
        path=path,
        key=key,
        **fields,
        **arrays,
        holdout_fraction=meta.get("holdout_fraction", 0.0),
        holdout=holdout,
    )


def load_cached(
    sha256: str,
    *,
    name: str,
    tokenizer: Tokenizer,
    block_size: int,
    cache_dir: Path | str,
    holdout_fraction: float = 0.0,
) -> TokenizedFile | None:
    """A file's cache entry without its source (e.g. for the held-out set on resume)."""
    key = cache_key(
        sha256, tokenizer=tokenizer, block_size=block_size, holdout_fraction=holdout_fraction
    )
    loaded = _load_entry(Path(cache_dir) / key, path=Path(name), key=key)
    return None if loaded is None else loaded[1]


_COUNT_FIELDS = (
    "n_examples",
    "n_sequences",
    "n_tokens",
    "n_targets",
    "n_truncated",
    "n_no_target",
)
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
    for staging in cache_dir.glob(f"{STAGING_PREFIX}{key}-*"):
        try:
            pid = int(staging.name.split("-")[2])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError):
            shutil.rmtree(staging, ignore_errors=True)
        except PermissionError:
            pass  # alive, owned by another user


def _built_entry(path: Path, *, entry: Path, **options: Any) -> tuple[dict, TokenizedFile]:
    """``_build_entry``, with a full disk named as such (the file is not at fault)."""
    try:
        return _build_entry(path, entry=entry, **options)
    except OSError as exc:
        full = as_disk_full(exc, path=entry.parent, what=f"the tokenized cache of {path.name}")
        if full is not None:
            raise full from exc
        raise


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
    holdout_fraction: float = 0.0,
) -> tuple[dict, TokenizedFile]:
    build = functools.partial(
        _tokenize_into,
        path=path,
        tokenizer=tokenizer,
        block_size=block_size,
        max_line_bytes=max_line_bytes,
        allow_invalid=allow_invalid,
    )
    # The pid in the stage's name lets a later builder tell a dead builder's stage.
    unique = f"{os.getpid()}-{secrets.token_hex(4)}"
    with staged_folder(entry, unique=unique, install=_install_or_use_winner) as stage:
        report, counts = build(stage.path, holdout_fraction=holdout_fraction)
        if counts["n_sequences"] == 0 and holdout_fraction > 0:
            # A file so small that every example drew the holdout: train on all of it
            # rather than reject a valid drop. The entry records that none was held out.
            log.warning("%s is too small to hold examples out; training on all of it", path.name)
            shutil.rmtree(stage.path)
            stage.path.mkdir()
            holdout_fraction = 0.0
            report, counts = build(stage.path, holdout_fraction=0.0)
        _check_trainable(report, counts, path=path, sha256=sha256, block_size=block_size)
        meta = _meta(report, counts, key=key, tokenizer=tokenizer, block_size=block_size)
        meta["holdout_fraction"] = holdout_fraction
        stage.write_manifest = functools.partial(_write_meta, meta=meta)
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


def _check_trainable(
    report: ValidationReport,
    counts: dict[str, int],
    *,
    path: Path,
    sha256: str,
    block_size: int,
) -> None:
    """DataError unless the file read is the one hashed and it has something to learn."""
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
    if counts["n_targets"] == 0:
        raise DataError(
            f"{path.name}: no token to learn from: in every example the part trained on "
            f"(completion, assistant turns) falls beyond the model's context of {block_size} "
            "tokens; shorten the prompts or raise model.overrides.block_size",
            path=path,
        )


def _write_meta(folder: Path, *, meta: dict[str, Any]) -> None:
    """``meta.json``, last and durably: the entry is complete from here on."""
    write_durably(folder / META, json.dumps(meta, indent=1).encode())
    if meta.get("holdout"):
        fsync_path(folder / HOLDOUT)
    fsync_path(folder)


def _install_or_use_winner(staging: Path, entry: Path) -> None:
    """Rename the stage into place; if another builder won the race, its entry is
    equivalent and this stage goes."""
    try:
        staging.rename(entry)
    except OSError:
        if not (entry / META).exists():
            raise
        log.info("cache entry %s was built concurrently; using that one", entry.name)


def _tokenize_into(
    staging: Path,
    *,
    path: Path,
    tokenizer: Tokenizer,
    block_size: int,
    max_line_bytes: int,
    allow_invalid: bool,
    holdout_fraction: float,
) -> tuple[ValidationReport, dict[str, Any]]:
    """Tokenize ``path`` into the empty ``staging`` folder (held-out part in its subfolder)."""
    stream = ExampleStream(path, max_line_bytes=max_line_bytes)
    with contextlib.ExitStack() as stack:
        writers = stack.enter_context(ArrayWriters(staging, vocab_size=tokenizer.vocab_size))
        holdout = None
        if holdout_fraction > 0:
            (staging / HOLDOUT).mkdir()
            held = stack.enter_context(
                ArrayWriters(staging / HOLDOUT, vocab_size=tokenizer.vocab_size)
            )
            holdout = Holdout(held, holdout_fraction)
        counts = tokenize_stream(
            stream, writers, tokenizer=tokenizer, block_size=block_size, holdout=holdout
        )
    report = stream.report()
    if not allow_invalid:
        # Strict mode rejects before committing: no entry is kept for a rejected file.
        report.raise_if_invalid()
    return report, counts


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
        "token_dtype": token_dtype(tokenizer.vocab_size).name,
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
