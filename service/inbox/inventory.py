"""Taking stock of the inbox folders at start: the ledger must know every file in them.

Each checked drop lives in ``accepted/``, ``rejected/`` or ``duplicates/`` under the name
``<id:06d>-<name>``, its ledger id. When the ledger is lost, replaced by an empty one, or
restored from a backup older than the folders, files there have no record: an
``accepted/`` file would never be trained, and a new drop would get an id that an old
file already carries. So before the watcher starts:

* new ids are made larger than every id in the folders (names never collide);
* each file without a record is recorded again under its own id: an accepted file as
  ``done`` if the lineage's newest checkpoint has trained it (with its steps), else
  ``queued``; a rejected one with the reason from its ``.reason.txt``; a duplicate with
  the file it duplicates. A ``ledger_rebuilt`` event and a warning list what was done.

Torch-free (it runs in the service's main process): the lineage is read from the
newest checkpoint's ``training_state.json``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from service.inbox.layout import InboxLayout, reason_path
from service.inbox.names import REASON_SUFFIX
from service.ledger import ACTIVE_STATES, FileState, Ledger
from trainer.records.events import EventLog
from trainer.records.formats import DataError, validate_file
from trainer.records.state import newest_training_state
from trainer.records.storage import file_sha256

log = logging.getLogger(__name__)

_FILED = re.compile(r"^(\d{6,})-(.+)$")


@dataclass
class Inventory:
    """What taking stock found and did."""

    largest_id: int = 0
    """The largest id among the files in the folders."""
    restored: dict[str, list[str]] = field(default_factory=dict)
    """Names recorded again, by the state they were given."""


def take_inventory(
    layout: InboxLayout,
    ledger: Ledger,
    *,
    checkpoints: Path,
    events: EventLog,
    max_line_bytes: int,
) -> Inventory:
    """Make the ledger know every file in the inbox folders (see the module docstring)."""
    inventory = Inventory()
    filed = []
    for folder, state in (
        (layout.accepted, FileState.QUEUED),
        (layout.rejected, FileState.REJECTED),
        (layout.duplicates, FileState.DUPLICATE),
    ):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            match = _FILED.match(path.name)
            if match is None or path.name.endswith(REASON_SUFFIX):
                continue
            filed.append((int(match.group(1)), match.group(2), state, path))
    if not filed:
        _note_lineage_without_ledger(ledger, checkpoints)
        return inventory
    inventory.largest_id = max(file_id for file_id, *_ in filed)
    ledger.ensure_ids_above(inventory.largest_id)
    orphans = [f for f in sorted(filed) if ledger.get_file(f[0]) is None]
    if not orphans:
        return inventory
    lineage = newest_training_state(checkpoints) or {}
    trained = {f.get("sha256"): f for f in lineage.get("files_completed") or ()}
    for file_id, name, state, path in orphans:
        given = _restore(
            ledger,
            file_id=file_id,
            name=name,
            state=state,
            path=path,
            trained=trained,
            lineage_id=lineage.get("lineage_id"),
            max_line_bytes=max_line_bytes,
        )
        inventory.restored.setdefault(given.value, []).append(f"#{file_id} {name}")
    _report(inventory, events)
    return inventory


def _restore(
    ledger: Ledger,
    *,
    file_id: int,
    name: str,
    state: FileState,
    path: Path,
    trained: dict,
    lineage_id: str | None,
    max_line_bytes: int,
) -> FileState:
    """Record one file again; the state it was given."""
    common = {"file_id": file_id, "name": name, "path": str(path), "size": path.stat().st_size}
    if state is FileState.REJECTED:
        ledger.restore_file(
            state=state, error=_reason(path), sha256=None, format=None, n_examples=0, **common
        )
        return state
    try:
        report = validate_file(path, max_line_bytes=max_line_bytes)
    except DataError as exc:
        ledger.restore_file(
            state=FileState.FAILED,
            error=f"{exc} (found in {path.parent.name}/ when the ledger was rebuilt)",
            sha256=file_sha256(path),
            format=None,
            n_examples=0,
            **common,
        )
        return FileState.FAILED
    found = {"sha256": report.sha256, "format": report.format, "n_examples": report.n_examples}
    twin = next((r for r in ledger.find_by_sha(report.sha256) if r.state in ACTIVE_STATES), None)
    done = trained.get(report.sha256)
    if state is FileState.DUPLICATE or twin is not None:
        ledger.restore_file(
            state=FileState.DUPLICATE,
            error=f"same content as file #{twin.id} ({twin.name})" if twin else "a duplicate",
            duplicate_of=twin.id if twin else None,
            **found,
            **common,
        )
        return FileState.DUPLICATE
    if done is not None:
        ledger.restore_file(
            state=FileState.DONE,
            start_step=done.get("start_step"),
            end_step=done.get("end_step"),
            lineage_id=lineage_id,
            **found,
            **common,
        )
        return FileState.DONE
    ledger.restore_file(state=FileState.QUEUED, **found, **common)
    return FileState.QUEUED


def _note_lineage_without_ledger(ledger: Ledger, checkpoints: Path) -> None:
    """An empty ledger beside a lineage that trained files: nothing to rebuild from (no
    inbox folders), but worth a warning, since it is not what a running service leaves."""
    if any(ledger.counts_by_state().values()):
        return
    trained = (newest_training_state(checkpoints) or {}).get("files_completed") or ()
    if trained:
        log.warning(
            "the ledger records no file, but the lineage in %s has trained %d (the ledger "
            "was lost with its inbox folders, or the files were trained with traind train); "
            "a drop of one of them again is recorded done without training it twice",
            checkpoints,
            len(trained),
        )


def _reason(path: Path) -> str:
    """The reason line of a rejected file's ``.reason.txt``."""
    try:
        text = reason_path(path).read_text(encoding="utf-8")
    except OSError:
        return "rejected before the ledger was rebuilt (its .reason.txt is missing)"
    for line in text.splitlines():
        if line.startswith("reason: "):
            return line.removeprefix("reason: ")
    return "rejected before the ledger was rebuilt"


def _report(inventory: Inventory, events: EventLog) -> None:
    restored = inventory.restored
    log.warning(
        "the ledger did not know %d file(s) of the inbox folders (a lost, empty or older "
        "ledger); recorded them again under their ids: %s",
        sum(len(v) for v in restored.values()),
        "; ".join(f"{state}: {', '.join(names)}" for state, names in restored.items()),
    )
    if restored.get(FileState.QUEUED.value):
        log.warning(
            "queued to train: %s (files the lineage has not trained; cancel any you do not "
            "want trained with `traind cancel ID`)",
            ", ".join(restored[FileState.QUEUED.value]),
        )
    events.emit("ledger_rebuilt", restored=restored, largest_id=inventory.largest_id)
