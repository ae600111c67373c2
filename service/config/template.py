"""The commented default ``traind.toml``, rendered from the settings model so it cannot drift.

``traind init`` writes it; to print it: ``python -m service.config.template``.
Every key is written with its default value, after a comment taken from the field's
description; keys whose default is "unset" (None, which TOML cannot spell) are written
commented out with an example value.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel

from service.config.settings import CONFIG_ENV, ENV_DELIMITER, ENV_PREFIX, Settings

_WIDTH = 92
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

_HEADER = f"""\
# traind configuration. Every key is listed with its default value.
#
# Any key can be overridden by an environment variable
# {ENV_PREFIX}<SECTION>{ENV_DELIMITER}<KEY>, e.g. {ENV_PREFIX}TRAIN{ENV_DELIMITER}LEARNING_RATE=1e-3.
# traind reads the file given by --config, else ${CONFIG_ENV}, else ./traind.toml.
# Relative paths in this file are relative to the folder this file is in.
# Unknown keys are an error, so a typo cannot silently keep a default."""


def render_default_config() -> str:
    """The full default ``traind.toml``: every section and key, each with a comment."""
    lines = [_HEADER]
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel), section
        lines += ["", *_comment(model.__doc__ or ""), f"[{section}]"]
        for name, info in model.model_fields.items():
            key = info.alias or name
            if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get(
                "deprecated"
            ):
                continue
            lines += _comment(info.description or "")
            default = info.get_default(call_default_factory=True)
            if default is None:
                # TOML has no null: show the key commented out, with an example to copy.
                if not info.examples:
                    raise ValueError(f"{section}.{key} defaults to None but has no example")
                lines.append(f"# {key} = {_toml_value(info.examples[0])}")
            else:
                lines.append(f"{key} = {_toml_value(default)}")
    return "\n".join(lines) + "\n"


def _comment(text: str) -> list[str]:
    text = " ".join(text.split())
    return [f"# {line}" for line in textwrap.wrap(text, _WIDTH - 2)]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        # repr round-trips floats exactly and its spelling (1e-05, 0.0003) is valid TOML.
        return repr(value)
    if isinstance(value, str | PurePath):
        # A JSON string is a valid TOML basic string (same escapes).
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = (f"{_toml_key(key)} = {_toml_value(item)}" for key, item in value.items())
        return "{ " + ", ".join(items) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key, ensure_ascii=False)


if __name__ == "__main__":
    sys.stdout.write(render_default_config())
