"""Checks shared by the SQLite and PostgreSQL ledger tests."""

import threading
from collections.abc import Callable


def assert_claims_never_shared(
    ledgers: list, *, drop: Callable, rounds: int, per_round: int
) -> None:
    """Workers on separate Ledger objects claim a fresh queue at once, ``rounds`` times:
    every file is claimed exactly once."""
    workers = len(ledgers)
    for round_ in range(rounds):
        ids = {drop(ledgers[0], f"r{round_}-{i}.jsonl").id for i in range(per_round)}
        claimed: list[list[int]] = [[] for _ in range(workers)]
        barrier = threading.Barrier(workers)

        def work(index: int, claimed=claimed, barrier=barrier, round_=round_) -> None:
            barrier.wait()
            while (
                record := ledgers[index].claim_next(worker_id=f"w{index}-{round_}", lease_s=60)
            ) is not None:
                claimed[index].append(record.id)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        every = [file_id for ids_ in claimed for file_id in ids_]
        assert sorted(every) == sorted(ids), f"round {round_}: {claimed}"
