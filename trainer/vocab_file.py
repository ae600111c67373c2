"""The tokens file of a vocabulary extension (``model.new_tokens``, ``traind extend-vocab
--tokens FILE``): UTF-8 text, one token per line, taken as written (spaces included; only
the line break is removed). Empty lines are skipped; a line seen twice counts once."""

from __future__ import annotations

from pathlib import Path

MAX_TOKEN_CHARS = 256
"""Longest token accepted: anything longer is a paste gone wrong, not a token."""


class TokensFileError(ValueError):
    """A tokens file that cannot be used; the message names the file and line."""


def read_tokens_file(path: Path) -> list[str]:
    """The tokens of ``path`` in file order, each once."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TokensFileError(f"{path} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise TokensFileError(f"{path} cannot be read: {exc}") from None
    tokens: dict[str, None] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(line) > MAX_TOKEN_CHARS:
            raise TokensFileError(
                f"{path}, line {number}: {len(line)} characters; a token has at most "
                f"{MAX_TOKEN_CHARS} (one token per line)"
            )
        tokens.setdefault(line)
    if not tokens:
        raise TokensFileError(f"{path} holds no tokens (one token per line)")
    return list(tokens)
