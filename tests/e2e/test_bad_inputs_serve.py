"""The whole bad-input corpus dropped into a real ``traind serve`` while it trains: every
bad drop ends rejected with its specific reason and is kept, every good drop trains, and
the service keeps running throughout."""

import os

from conftest import wait_for

from service.ledger import FileState
from tests.badcorpus import BAD, GOOD, IN_PLACE_GOOD, MAX_FILE_BYTES, MAX_LINE_BYTES, drop
from tests.corpus import make_drops


def test_every_bad_drop_ends_rejected_and_good_files_still_train(tmp_path, service_factory):
    service = service_factory(
        TRAIND_WATCHER__MAX_LINE_BYTES=str(MAX_LINE_BYTES),
        TRAIND_WATCHER__MAX_FILE_BYTES=str(MAX_FILE_BYTES),
    ).start()
    staging = tmp_path / "staging"
    staging.mkdir()
    good_drops = make_drops(tmp_path / "drops")
    service.drop(good_drops[0])  # training is under way while the corpus lands
    wait_for(
        lambda: (service.status() or {}).get("state") == "training",
        timeout=30,
        what="training",
    )
    for bad in BAD:
        drop(
            staging,
            service.inbox,
            bad.name,
            data=bad.data,
            make=bad.make,
            in_place=bad.in_place,
        )
    for name, data in GOOD.items():
        drop(
            staging,
            service.inbox,
            name,
            data=data,
            make=None,
            in_place=name in IN_PLACE_GOOD,
        )
    service.drop(good_drops[1])
    expected = len(BAD) + len(GOOD) + 2

    def settled():
        files = service.files()
        busy = [f for f in files if f.state in (FileState.QUEUED, FileState.TRAINING)]
        return files if len(files) == expected and not busy else None

    files = {
        f.name: f for f in wait_for(settled, timeout=180, what="every drop to settle", every=0.3)
    }
    for bad in BAD:
        record = files[bad.recorded_name]
        assert record.state is FileState.REJECTED, (bad.kind, record.state, record.error)
        assert bad.reason in record.error and bad.recorded_name in record.error, bad.kind
        if bad.line is not None:
            assert f"line {bad.line}" in record.error, bad.kind
        assert os.path.lexists(record.path) and "/rejected/" in record.path, bad.kind
    for name in [*GOOD, good_drops[0].name, good_drops[1].name]:
        assert files[name].state is FileState.DONE, (name, files[name].error)
    # Only traind's folders remain: a folder and a name that is not UTF-8 were taken too.
    assert sorted(p.name for p in service.inbox.iterdir()) == [
        "accepted",
        "duplicates",
        "rejected",
    ]
    status = service.status()
    assert status["state"] == "idle" and status["queue"]["rejected"] == len(BAD)
    assert status["queue"]["done"] == len(GOOD) + 2
    assert service.proc.poll() is None
    assert len(service.events("training_start")) == 1  # the worker never went down
    assert service.terminate() == 0
