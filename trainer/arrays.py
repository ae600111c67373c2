"""Streaming writers for the cache's flat arrays (``.npy`` files grown in place)."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

ARRAYS = ("tokens", "mask", "starts", "lengths", "target_counts", "lines")
"""The arrays of a cache entry: flat tokens and mask, then one row per sequence."""


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size < 2**16 else np.uint32)


class ArrayWriters:
    """The entry's six arrays, written as .npy files while tokenization streams."""

    def __init__(self, folder: Path, *, vocab_size: int) -> None:
        dtypes = {
            "tokens": token_dtype(vocab_size),
            "mask": np.uint8,
            "starts": np.int64,
            "lengths": np.int32,
            "target_counts": np.int32,
            "lines": np.int32,
        }
        self._npy = {
            name: NpyWriter(
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

    def __enter__(self) -> ArrayWriters:
        return self

    def __exit__(self, *exc: object) -> None:
        for writer in self._npy.values():
            writer.close()


class NpyWriter:
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
