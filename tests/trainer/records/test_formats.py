"""The wording of a drop's JSON errors: where the line breaks, said once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.records.formats import json_problem, validate_file

GOOD = '{"text": "a fine line"}'


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ('{"text": "abcdef\tx"}', "is not valid JSON (Invalid control character at column 17)"),
        ('{"text" "x"}', "is not valid JSON (Expecting ':' delimiter at column 9)"),
        ("not json", "is not valid JSON (Expecting value at column 1)"),
    ],
)
def test_a_json_error_names_its_column_once(tmp_path: Path, bad: str, reason: str) -> None:
    path = tmp_path / "drop.jsonl"
    path.write_text(f"{GOOD}\n{bad}\n{GOOD}\n", encoding="utf-8")
    (error,) = validate_file(path).errors
    assert error.reason == reason
    assert error.message == f"drop.jsonl line 2: {reason}; fix or remove the line"


def test_a_message_that_ends_in_at_gets_only_the_column() -> None:
    with pytest.raises(json.JSONDecodeError) as caught:
        json.loads('{"text": "cut')
    assert json_problem(caught.value) == "Unterminated string starting at column 10"
