"""One tokenizer type for the whole trainer: a thin wrapper over a Hugging Face ``tokenizers``
tokenizer.

The built-in default (``"bytes"``) is itself a standard Hugging Face tokenizer, so every
checkpoint's ``tokenizer.json`` loads in any HF tooling whichever tokenizer a lineage uses.
Its ids 0..255 are exactly the UTF-8 bytes of the text, followed by four special tokens.

User text is always encoded as plain text: a literal ``<|endoftext|>`` typed in a training
file is encoded as its characters, never as the special id, so data cannot forge control
tokens. Special ids only enter a sequence when the trainer puts them there on purpose.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HfTokenizer

log = logging.getLogger(__name__)

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|pad|>"

BYTE_SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, PAD)
"""Special tokens of the built-in tokenizer, with ids 256, 257, 258 and 259."""

EOS_CANDIDATES = (ENDOFTEXT, "</s>", "<eos>", IM_END)
"""End-of-text tokens looked for, in this order of preference."""

PAD_CANDIDATES = (PAD, "<pad>", "[PAD]")
"""Padding tokens looked for, in this order; the end-of-text token is the fallback."""

CHAT_ROLES = ("system", "user", "assistant")


class TokenizerError(ValueError):
    """A tokenizer spec that cannot be loaded or used; the message names the file."""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (what ByteLevel expects)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars, strict=True)}


def build_byte_tokenizer() -> Tokenizer:
    """The built-in tokenizer: 256 byte ids plus ``BYTE_SPECIAL_TOKENS`` (vocabulary 260)."""
    byte_chars = _bytes_to_unicode()
    # A BPE without merges over the ByteLevel alphabet maps each byte to its own id; giving
    # byte b the id b keeps token ids readable and identical to ``text.encode("utf-8")``.
    vocab = {byte_chars[byte]: byte for byte in range(256)}
    hf = HfTokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    # No regex split: with no merges it would only cost time, ids are the same.
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in BYTE_SPECIAL_TOKENS]
    )
    return Tokenizer(hf)


def load_tokenizer(spec: str) -> Tokenizer:
    """``"bytes"`` for the built-in tokenizer, otherwise the path of a ``tokenizer.json``.

    Raises ``TokenizerError`` naming the path when the file is missing, unparseable or has
    no end-of-text token.
    """
    if spec == "bytes":
        return build_byte_tokenizer()
    path = Path(spec).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise TokenizerError(
            f"tokenizer file {path} does not exist; give the path of a Hugging Face "
            f'tokenizer.json or "bytes" for the built-in tokenizer'
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"cannot read tokenizer file {path}: {exc}") from exc
    try:
        tokenizer = Tokenizer.from_json(text)
    except TokenizerError as exc:
        raise TokenizerError(f"{path}: {exc}") from exc
    try:
        _ = tokenizer.eos_id  # fail at load time, not in the middle of a file
    except ValueError as exc:
        raise TokenizerError(f"{path}: {exc}") from exc
    return tokenizer


@cache
def _builtin_fingerprint() -> str:
    return build_byte_tokenizer().fingerprint


@dataclass(frozen=True)
class ChatIds:
    """Token ids of the fixed pieces of ``<|im_start|>{role}\\n{content}<|im_end|>\\n``."""

    headers: dict[str, tuple[int, ...]]
    """Per role: the start marker followed by ``"{role}\\n"``."""
    end: tuple[int, ...]
    """The end marker (a target after assistant content)."""
    newline: tuple[int, ...]
    """The ``"\\n"`` after the end marker (never a target)."""


class Tokenizer:
    """A Hugging Face tokenizer plus the few facts the trainer needs about it."""

    def __init__(self, hf: HfTokenizer) -> None:
        self._hf = hf
        # Split special-token strings found in user text into ordinary tokens: data must not
        # be able to inject control tokens. The flag is not serialized, so set it here.
        self._hf.encode_special_tokens = True

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        """Parse ``tokenizer.json`` text; ``TokenizerError`` if it is not one."""
        try:
            return cls(HfTokenizer.from_str(text))
        except Exception as exc:  # tokenizers raises bare Exception on parse errors
            raise TokenizerError(f"not a valid Hugging Face tokenizer.json: {exc}") from exc

    def to_json(self) -> str:
        """The ``tokenizer.json`` text (standard Hugging Face format)."""
        return self._hf.to_str()

    def save(self, path: Path | str) -> None:
        """Write ``tokenizer.json`` to ``path`` (plain write; the caller handles atomicity)."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @cached_property
    def fingerprint(self) -> str:
        """sha256 hex of the canonical JSON: equal for tokenizers that encode identically."""
        canonical = json.dumps(
            json.loads(self.to_json()), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @cached_property
    def vocab_size(self) -> int:
        """Embedding rows needed: one past the largest id (ids may have holes)."""
        vocab = self._hf.get_vocab(with_added_tokens=True)
        largest = max(vocab.values(), default=-1)
        return max(self._hf.get_vocab_size(with_added_tokens=True), largest + 1)

    @cached_property
    def eos_id(self) -> int:
        """Id of the end-of-text token (first of ``EOS_CANDIDATES`` present)."""
        for token in EOS_CANDIDATES:
            token_id = self._hf.token_to_id(token)
            if token_id is not None:
                return token_id
        raise ValueError(
            "the tokenizer needs an end-of-text token (one of "
            + ", ".join(EOS_CANDIDATES)
            + ") to separate documents; add one as a special token"
        )

    @cached_property
    def pad_id(self) -> int:
        """Id used to right-pad inputs (never a target): a pad token, else ``eos_id``."""
        for token in PAD_CANDIDATES:
            token_id = self._hf.token_to_id(token)
            if token_id is not None:
                return token_id
        return self.eos_id

    @cached_property
    def _is_builtin_bytes(self) -> bool:
        return self.fingerprint == _builtin_fingerprint()

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` as plain text: no special tokens added, none recognised."""
        if self._is_builtin_bytes:
            return list(text.encode("utf-8"))
        return self._hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` over many texts at once (parallel, no offsets computed)."""
        if self._is_builtin_bytes:
            # Same ids as the HF pipeline (tests check it), several times faster.
            return [list(text.encode("utf-8")) for text in texts]
        if not texts:
            return []
        encodings = self._hf.encode_batch_fast(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; special tokens are kept unless asked otherwise."""
        return self._hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def marker_ids(self, marker: str) -> list[int]:
        """A chat marker as its special id when the vocabulary has it, else as plain text."""
        token_id = self._hf.token_to_id(marker)
        return [token_id] if token_id is not None else self.encode(marker)

    @cached_property
    def chat_ids(self) -> ChatIds:
        """The fixed pieces of the chat rendering, encoded once."""
        start = self.marker_ids(IM_START)
        return ChatIds(
            headers={role: tuple(start + self.encode(f"{role}\n")) for role in CHAT_ROLES},
            end=tuple(self.marker_ids(IM_END)),
            newline=tuple(self.encode("\n")),
        )

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, fingerprint={self.fingerprint[:12]})"
