"""One tokenizer type for the whole trainer: a thin wrapper over a Hugging Face ``tokenizers``
tokenizer.

The built-in default (``"bytes"``) is itself a standard Hugging Face tokenizer, so every
checkpoint's ``tokenizer.json`` loads in any HF tooling whichever tokenizer a lineage uses.
Its ids 0..255 are exactly the UTF-8 bytes of the text, followed by four special tokens.

User text is always encoded as plain text: a literal ``<|endoftext|>`` typed in a training
file is encoded as its characters, never as the special id, so data cannot forge control
tokens. Special ids only enter a sequence when the trainer puts them there on purpose.

A tokenizer can also come from a Hugging Face folder: its ``tokenizer.json`` plus, when
present, ``tokenizer_config.json`` (special tokens, chat template) and ``chat_template.jinja``.
The config then decides the end-of-text, padding and beginning-of-text tokens, and chat drops
are rendered with the template (``trainer.chat_template``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HfTokenizer

from trainer.tokenizer_files import (
    SPECIAL_TOKEN_KEYS,
    TOKENIZER_CONFIG,
    TOKENIZER_JSON,
    TokenizerError,
    bytes_to_unicode,
    read_config,
    read_text,
    resolved_config,
    token_content,
)

if TYPE_CHECKING:
    from trainer.chat_template import ChatRenderer

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


def build_byte_tokenizer() -> Tokenizer:
    """The built-in tokenizer: 256 byte ids plus ``BYTE_SPECIAL_TOKENS`` (vocabulary 260)."""
    byte_chars = bytes_to_unicode()
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
    """``"bytes"`` for the built-in tokenizer, the path of a ``tokenizer.json``, or a folder.

    A folder (as Hugging Face saves one) needs ``tokenizer.json``; its
    ``tokenizer_config.json`` and ``chat_template.jinja`` are read when present. Raises
    ``TokenizerError`` naming the path when a file is missing or unparseable, when there is
    no end-of-text token, or when the chat template does not compile.
    """
    if spec == "bytes":
        return build_byte_tokenizer()
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_folder(path)
    text = read_text(
        path,
        missing=f"tokenizer file {path} does not exist; give the path of a Hugging Face "
        'tokenizer.json, a folder holding one, or "bytes" for the built-in tokenizer',
    )
    return _checked(path, lambda: Tokenizer.from_json(text))


def _load_folder(folder: Path) -> Tokenizer:
    """A Hugging Face tokenizer folder: tokenizer.json, tokenizer_config.json, template."""
    text = read_text(
        folder / TOKENIZER_JSON,
        missing=f"tokenizer folder {folder} has no {TOKENIZER_JSON}; a tokenizer folder holds "
        f"the Hugging Face {TOKENIZER_JSON} (and optionally {TOKENIZER_CONFIG}), as "
        "save_pretrained writes it",
    )
    raw = read_config(folder)
    return _checked(folder, lambda: Tokenizer.from_json(text, config=raw))


def _checked(path: Path, build: Callable[[], Tokenizer]) -> Tokenizer:
    """``build()``, checked now rather than in the middle of a file: an end-of-text token,
    and a chat template that compiles. Errors name ``path``."""
    try:
        tokenizer = build()
        _ = tokenizer.eos_id
        _ = tokenizer.chat_renderer
    except ValueError as exc:  # TokenizerError, the eos check, ChatTemplateError
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

    def __init__(self, hf: HfTokenizer, *, config: Mapping[str, Any] | None = None) -> None:
        self._hf = hf
        # Split special-token strings found in user text into ordinary tokens: data must not
        # be able to inject control tokens. The flag is not serialized, so set it here.
        self._hf.encode_special_tokens = True
        self.config: dict[str, Any] = resolved_config(config or {})
        """``tokenizer_config.json`` as loaded (``{}`` for none), with the chat template
        resolved to one string under ``"chat_template"`` (absent when there is none)."""

    @classmethod
    def from_json(cls, text: str, *, config: Mapping[str, Any] | None = None) -> Tokenizer:
        """Parse ``tokenizer.json`` text; ``TokenizerError`` if it is not one."""
        try:
            hf = HfTokenizer.from_str(text)
        except Exception as exc:  # tokenizers raises bare Exception on parse errors
            raise TokenizerError(f"not a valid Hugging Face tokenizer.json: {exc}") from exc
        return cls(hf, config=config)

    @classmethod
    def from_files(cls, tokenizer_json: str, config_json: str | None = None) -> Tokenizer:
        """Rebuild from the texts of ``tokenizer.json`` and ``tokenizer_config.json`` (as
        ``to_json`` and ``config_json`` give them, e.g. stored in a checkpoint)."""
        config: Any = {}
        if config_json is not None:
            try:
                config = json.loads(config_json)
            except json.JSONDecodeError as exc:
                raise TokenizerError(f"not a valid {TOKENIZER_CONFIG}: {exc}") from exc
            if not isinstance(config, dict):
                raise TokenizerError(f"{TOKENIZER_CONFIG} must hold a JSON object")
        return cls.from_json(tokenizer_json, config=config)

    def to_json(self) -> str:
        """The ``tokenizer.json`` text (standard Hugging Face format)."""
        return self._hf.to_str()

    def config_json(self) -> str | None:
        """The ``tokenizer_config.json`` text; ``None`` without a config, so the built-in
        tokenizer and plain ``tokenizer.json`` lineages have nothing more to store."""
        if not self.config:
            return None
        return json.dumps(self.config, indent=2, ensure_ascii=False)

    def with_added_tokens(self, tokens: Sequence[str]) -> tuple[Tokenizer, list[str]]:
        """A copy that also knows ``tokens`` (ordinary added tokens, matched whole in text,
        with ids after the current ones), and the tokens that were new to it."""
        known = self._hf.get_vocab(with_added_tokens=True)
        new = [t for t in dict.fromkeys(tokens) if t not in known]
        hf = HfTokenizer.from_str(self.to_json())
        hf.add_tokens([AddedToken(t, normalized=False, special=False) for t in new])
        first = self.vocab_size
        ids = [hf.token_to_id(t) for t in new]
        if ids != list(range(first, first + len(new))):
            raise TokenizerError(f"the new tokens got ids {ids[:5]}..., not {first}.. in order")
        return Tokenizer(hf, config=self.config), new

    def save(self, path: Path | str) -> None:
        """Write ``tokenizer.json`` to ``path`` (plain write; the caller handles atomicity)."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    def save_pretrained(self, folder: Path | str) -> None:
        """Write ``tokenizer.json`` and, with a config, ``tokenizer_config.json`` into
        ``folder`` (created if needed), as ``load_tokenizer`` and transformers read them."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.save(folder / TOKENIZER_JSON)
        config = self.config_json()
        if config is not None:
            (folder / TOKENIZER_CONFIG).write_text(config, encoding="utf-8")

    @cached_property
    def _json_fingerprint(self) -> str:
        """sha256 hex of the canonical ``tokenizer.json`` alone (what lineages always stored)."""
        canonical = json.dumps(
            json.loads(self.to_json()), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @cached_property
    def fingerprint(self) -> str:
        """sha256 hex: equal for tokenizers that encode and render chats identically.

        Without a chat template or named special tokens it is the digest of the canonical
        ``tokenizer.json``, as it always was (lineages and cache keys store it). Otherwise it
        also covers the template and the special tokens, which change the ids of chat drops
        and the end-of-text token; other config keys (e.g. ``model_max_length``) do not.
        """
        rendering = self._rendering_config
        if not rendering:
            return self._json_fingerprint
        material = {"tokenizer.json": self._json_fingerprint, "config": rendering}
        canonical = json.dumps(material, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @cached_property
    def _rendering_config(self) -> dict[str, str]:
        """The config entries that change what the trainer produces."""
        rendering = dict(self.special_tokens)
        if self.chat_template is not None:
            rendering["chat_template"] = self.chat_template
        return rendering

    @cached_property
    def vocab_size(self) -> int:
        """Embedding rows needed: one past the largest id (ids may have holes)."""
        vocab = self._hf.get_vocab(with_added_tokens=True)
        largest = max(vocab.values(), default=-1)
        return max(self._hf.get_vocab_size(with_added_tokens=True), largest + 1)

    @cached_property
    def special_tokens(self) -> dict[str, str]:
        """The config's named special tokens (``SPECIAL_TOKEN_KEYS``) that are set, as strings:
        what a chat template sees as ``bos_token``, ``eos_token``, ..."""
        named = {key: token_content(self.config.get(key)) for key in SPECIAL_TOKEN_KEYS}
        return {key: token for key, token in named.items() if token is not None}

    @property
    def chat_template(self) -> str | None:
        """The chat template chat drops are rendered with; ``None``: traind's ChatML."""
        return self.config.get("chat_template")

    @cached_property
    def eos_id(self) -> int:
        """Id of the end-of-text token: the config's ``eos_token`` when the vocabulary has it
        (e.g. a chat model's end-of-turn token), else the first of ``EOS_CANDIDATES``."""
        configured = self._configured_id("eos_token")
        if configured is not None:
            return configured
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
        """Id used to right-pad inputs (never a target): the config's ``pad_token``, else a
        pad token of ``PAD_CANDIDATES``, else ``eos_id``."""
        configured = self._configured_id("pad_token")
        if configured is not None:
            return configured
        for token in PAD_CANDIDATES:
            token_id = self._hf.token_to_id(token)
            if token_id is not None:
                return token_id
        return self.eos_id

    @property
    def bos_token(self) -> str | None:
        """The config's beginning-of-text token, if it names one."""
        return self.special_tokens.get("bos_token")

    @cached_property
    def bos_id(self) -> int | None:
        """Id of ``bos_token``; ``None`` without one (or when the vocabulary lacks it)."""
        return self._configured_id("bos_token")

    def _configured_id(self, key: str) -> int | None:
        """Id of the config's token ``key``; a token the vocabulary lacks is ignored."""
        token = self.special_tokens.get(key)
        if token is None:
            return None
        token_id = self._hf.token_to_id(token)
        if token_id is None:
            log.warning(
                "%s %r of %s is not in the vocabulary; ignored", key, token, TOKENIZER_CONFIG
            )
        return token_id

    @cached_property
    def control_tokens(self) -> dict[int, str]:
        """Added tokens (special or not) by id: the markers a chat template writes, which
        message contents may not contain. Whitespace-only ones (e.g. runs of spaces some
        vocabularies add) are ordinary text, not markers."""
        added = self._hf.get_added_tokens_decoder()
        return {i: t.content for i, t in sorted(added.items()) if t.content.strip()}

    @cached_property
    def chat_renderer(self) -> ChatRenderer | None:
        """The compiled chat template (compiled once per tokenizer); ``None`` without one."""
        if self.chat_template is None:
            return None
        try:
            # Lazily: jinja2 is only needed by tokenizers that come with a chat template.
            from trainer.chat_template import ChatRenderer
        except ImportError as exc:
            raise TokenizerError(
                f"the tokenizer's chat template needs jinja2 ({exc}); install traind[hf], or "
                f'remove "chat_template" from {TOKENIZER_CONFIG} to use traind\'s ChatML format'
            ) from exc
        return ChatRenderer(self)

    @cached_property
    def _template_hf(self) -> HfTokenizer:
        """A second instance for text a chat template rendered, where the template's special
        tokens must be recognised: ``_hf`` keeps ``encode_special_tokens`` on for user text."""
        hf = HfTokenizer.from_str(self.to_json())
        hf.encode_special_tokens = False
        return hf

    def encode_rendered_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of texts a chat template rendered: special tokens recognised, none added (the
        template writes its own beginning-of-text). Only for template output, whose message
        contents were checked to hold no control token; never for user text."""
        if not texts:
            return []
        encodings = self._template_hf.encode_batch_fast(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    @cached_property
    def _is_builtin_bytes(self) -> bool:
        # The JSON alone: a config does not change how plain text encodes.
        return self._json_fingerprint == _builtin_fingerprint()

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
