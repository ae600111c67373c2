"""What migrating the ledger logs: the migrations it applies, not alembic's chatter."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from service.ledger import migrate

REPO = Path(__file__).resolve().parents[3]

# A fresh process: alembic announces its plugins when first imported, which a test
# process has long done.
FRESH_START = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s: %(message)s")
from service.ledger.migrate import upgrade
upgrade(sys.argv[1])
print("--- again")
upgrade(sys.argv[1])
"""


def test_a_start_logs_no_plugin_setup_and_shows_the_migrations_it_runs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    result = subprocess.run(
        [sys.executable, "-c", FRESH_START, url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    first, again = result.stdout.split("--- again\n")
    assert "setup plugin" not in result.stdout + result.stderr
    assert "Running upgrade  -> 0001_initial" in first
    assert "ledger migrated from an empty database to" in first
    assert "Context impl" not in first
    assert again == ""  # up to date: nothing to say


def test_an_up_to_date_ledger_migrates_in_silence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    caplog.set_level(logging.INFO)
    migrate.upgrade(url)
    assert caplog.records == []
