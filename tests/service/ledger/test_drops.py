"""Recording drops a batch at a time (``Ledger.record_drops``, ``set_paths``) on a real
SQLite file: one transaction, the same verdicts as one by one, all or nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError

from service.ledger import FileState, Ledger, LineProblem
from service.ledger.drops import NewDrop
from service.ledger.engine import BEGIN_OPTION


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}") as opened:
        yield opened


def sha(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def new(name: str, content: str | None = None, **fields: object) -> NewDrop:
    values: dict = {
        "name": name,
        "path": f"/inbox/{name}",
        "sha256": sha(content or name),
        "size": 10,
        "format": "text",
        "n_examples": 1,
        **fields,
    }
    return NewDrop(**values)


def write_transactions(ledger: Ledger) -> list[int]:
    """A counter of the write transactions begun from now on."""
    count = [0]

    def began(connection: object) -> None:
        options = connection.get_execution_options()  # type: ignore[attr-defined]
        if options.get(BEGIN_OPTION, "IMMEDIATE") != "DEFERRED":
            count[0] += 1

    event.listen(ledger.engine, "begin", began)
    return count


def test_a_batch_is_one_transaction_in_order(ledger: Ledger) -> None:
    writes = write_transactions(ledger)
    records = ledger.record_drops([new(f"d{i}.jsonl") for i in range(50)])
    assert writes == [1]
    assert [r.name for r in records] == [f"d{i}.jsonl" for i in range(50)]
    assert [r.id for r in records] == sorted(r.id for r in records)
    assert {r.state for r in records} == {FileState.QUEUED}
    assert [r.id for r in ledger.queue_order()] == [r.id for r in records]


def test_duplicates_in_a_batch_are_what_one_by_one_would_give(
    ledger: Ledger, tmp_path: Path
) -> None:
    done = ledger.record_file(
        name="old.jsonl", path="/a/old", sha256=sha("old"), size=1, format="text", n_examples=1
    )
    batch = [
        new("a.jsonl", "x"),
        new("b.jsonl", "x"),
        new("c.jsonl", "old"),
        new("r.jsonl", "x", reason="line 1: not JSON"),
        new("d.jsonl", "y"),
    ]
    together = ledger.record_drops(batch)
    with Ledger.open(f"sqlite:///{tmp_path / 'alone.db'}") as alone:
        alone.record_file(
            name="old.jsonl", path="/a/old", sha256=sha("old"), size=1, format="text", n_examples=1
        )
        one_by_one = [alone.record_drops([drop])[0] for drop in batch]
    assert [(r.state, r.duplicate_of, r.error) for r in together] == [
        (r.state, r.duplicate_of, r.error) for r in one_by_one
    ]
    a, b, c, r, d = together
    assert (b.state, b.duplicate_of) == (FileState.DUPLICATE, a.id)
    assert b.error == f"same content as file #{a.id} (a.jsonl), still queued"
    assert (c.duplicate_of, r.state, d.state) == (done.id, FileState.REJECTED, FileState.QUEUED)
    assert b.finished_at is not None and a.finished_at is None


def test_a_rejected_drop_keeps_its_reason_and_lines(ledger: Ledger) -> None:
    problems = (LineProblem(line=3, reason="not JSON"),)
    (record,) = ledger.record_drops(
        [new("bad.jsonl", reason="bad.jsonl line 3: not JSON", n_invalid=1, invalid_lines=problems)]
    )
    assert record.state is FileState.REJECTED
    assert (record.error, record.invalid_lines, record.n_invalid) == (
        "bad.jsonl line 3: not JSON",
        problems,
        1,
    )


def test_a_batch_that_fails_records_nothing(ledger: Ledger) -> None:
    broken = new("broken.jsonl", priority=None)  # NOT NULL: the insert fails
    with pytest.raises(IntegrityError):
        ledger.record_drops([new("a.jsonl"), new("b.jsonl"), broken])
    assert ledger.list_files()[1] == 0


def test_set_paths_notes_every_path_in_one_transaction(ledger: Ledger) -> None:
    records = ledger.record_drops([new(f"d{i}.jsonl") for i in range(5)])
    writes = write_transactions(ledger)
    ledger.set_paths({r.id: f"/inbox/accepted/{r.id:06d}-{r.name}" for r in records})
    assert writes == [1]
    for record in records:
        stored = ledger.get_file(record.id)
        assert stored is not None
        assert stored.path == f"/inbox/accepted/{record.id:06d}-{record.name}"
        assert stored.updated_at >= record.updated_at


def test_files_in_a_folder_and_by_paths(ledger: Ledger) -> None:
    top = ledger.record_drops(
        [
            new("a.jsonl", path="/in_box/a.jsonl"),
            new("b.jsonl", path="/in_box/accepted/000002-b.jsonl"),
            new("c.jsonl", path="/inXbox/c.jsonl"),  # "_" is not a wildcard
            new("d.jsonl", path="/in_box/d.jsonl"),
        ]
    )
    assert [r.name for r in ledger.files_in("/in_box")] == ["a.jsonl", "d.jsonl"]
    found = ledger.find_by_paths(["/in_box/a.jsonl", "/inXbox/c.jsonl", "/nowhere"])
    assert {p: r.id for p, r in found.items()} == {
        "/in_box/a.jsonl": top[0].id,
        "/inXbox/c.jsonl": top[2].id,
    }
