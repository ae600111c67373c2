"""Reading a Hugging Face tokenizer's files: ``tokenizer.json``, ``tokenizer_config.json``
and ``chat_template.jinja``, and the byte-level alphabet of the built-in tokenizer.

Pure helpers for ``trainer.tokenizer`` (which builds the ``Tokenizer`` from what these
return): no tokenizer object is made here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer.records.checkpoints import TOKENIZER, TOKENIZER_CONFIG

log = logging.getLogger(__name__)

TOKENIZER_JSON = TOKENIZER
"""The same names in a tokenizer folder as in a checkpoint (``trainer.records.checkpoints``)."""
CHAT_TEMPLATE_FILE = "chat_template.jinja"
"""Where transformers 5 saves a chat template; it wins over the config's ``chat_template``."""

SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
"""The named special tokens of ``tokenizer_config.json``; transformers passes each one that is
set to the chat template as a variable of that name."""


class TokenizerError(ValueError):
    """A tokenizer spec that cannot be loaded or used; the message names the file."""


def bytes_to_unicode() -> dict[int, str]:
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


def read_text(path: Path, *, missing: str) -> str:
    """The text of ``path``; ``TokenizerError`` with ``missing`` or the OS error otherwise."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise TokenizerError(missing) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"cannot read tokenizer file {path}: {exc}") from exc


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's ``tokenizer_config.json`` (``{}`` without one), its ``chat_template``
    replaced by ``chat_template.jinja`` where that exists (transformers 5 keeps it there,
    and so lets it win over the config's)."""
    config_path = folder / TOKENIZER_CONFIG
    raw: Any = {}
    if config_path.exists():
        try:
            raw = json.loads(read_text(config_path, missing=f"{config_path} vanished"))
        except json.JSONDecodeError as exc:
            raise TokenizerError(f"{config_path} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise TokenizerError(f"{config_path} must hold a JSON object")
    template_path = folder / CHAT_TEMPLATE_FILE
    if template_path.exists():
        template = read_text(template_path, missing=f"{template_path} vanished")
        raw = {**raw, "chat_template": template}
    return raw


def resolved_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON copy of ``raw`` with its chat template as one string, or without one.

    transformers accepts a string, a list of ``{"name", "template"}`` or a dict by name; the
    one named ``"default"`` is what ``apply_chat_template`` uses without a name.
    """
    try:
        # A deep copy that config_json can always write back.
        config = json.loads(json.dumps(dict(raw)))
    except (TypeError, ValueError) as exc:
        raise TokenizerError(f"{TOKENIZER_CONFIG} must hold JSON data only: {exc}") from exc
    template = config.pop("chat_template", None)
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = default_template(named)
    elif isinstance(template, dict):
        template = default_template(template)
    if template is not None and not isinstance(template, str):
        raise TokenizerError(f'"chat_template" must be a string, got {type(template).__name__}')
    if template is not None and template.strip():
        config["chat_template"] = template
    return config


def default_template(named: Mapping[Any, Any]) -> Any:
    if "default" not in named:
        log.warning(
            'the tokenizer\'s chat templates (%s) have none named "default"; chat drops use '
            "traind's ChatML format",
            ", ".join(map(str, named)),
        )
    return named.get("default")


def token_content(value: Any) -> str | None:
    """A special token's string: the config gives a string or an ``AddedToken``-like dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None
