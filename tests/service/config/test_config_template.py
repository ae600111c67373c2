"""The default traind.toml is complete, commented and loads back as exactly the defaults."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from service.config.settings import Settings, load_settings
from service.config.template import render_default_config

pytestmark = pytest.mark.usefixtures("clean_env")


def test_rendered_file_loads_as_exactly_the_defaults(tmp_path: Path) -> None:
    config = tmp_path / "traind.toml"
    config.write_text(render_default_config(), encoding="utf-8")
    from_file = load_settings(config)
    config.unlink()
    # Same folder as the working directory, so the default paths resolve alike.
    assert load_settings().model_dump() == from_file.model_dump()
    assert from_file.model_dump() == Settings().model_dump()


def test_every_section_and_key_is_listed_with_a_comment() -> None:
    text = render_default_config()
    lines = text.splitlines()
    parsed = tomllib.loads(text)
    for section, field in Settings.model_fields.items():
        assert f"[{section}]" in lines
        model = field.annotation
        assert isinstance(model, type)
        for name, info in model.model_fields.items():  # type: ignore[attr-defined]
            if (info.json_schema_extra or {}).get("deprecated"):
                assert f"{name} = " not in text, f"deprecated {section}.{name} is offered"
                continue
            key = info.alias or name
            # Set keys parse; unset (None) ones are shown commented out.
            matches = [
                i for i, line in enumerate(lines) if line.startswith((f"{key} = ", f"# {key} = "))
            ]
            assert matches, f"{section}.{key} missing"
            assert lines[matches[0] - 1].startswith("# "), f"{section}.{key} has no comment"
            default = info.default
            if default is None:
                assert key not in parsed[section]
            else:
                assert key in parsed[section]


def test_header_explains_env_overrides_and_relative_paths() -> None:
    text = render_default_config()
    assert "TRAIND_<SECTION>__<KEY>" in text
    assert "TRAIND_CONFIG" in text
    assert "relative to the folder this file is in" in text
