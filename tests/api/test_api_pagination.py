"""Keyset pages under concurrent writes: paging through 10,000 records while another thread
keeps inserting returns every record that existed at the start exactly once. The new records
land among the old ones in both orders (their scored times and scores are spread over the
existing range), which is exactly what breaks OFFSET paging."""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from storage.models import FlaggedRecordRow
from storage.repository import write_flagged
from tests.support.api_data import T0, flagged, seed

EXISTING = 10_000
PAGE = 500
BATCH = 100
MAX_BATCHES = 10


class Inserter(threading.Thread):
    """Writes a batch of new records each time a page was read (``page_read``), at most
    MAX_BATCHES, so that writes overlap the next page's read and the total stays bounded;
    ``first_batch`` is set after the first."""

    def __init__(self, sessions: sessionmaker[Session], first_offset: int) -> None:
        super().__init__(name="inserter", daemon=True)
        self.sessions = sessions
        self.first_offset = first_offset
        self.page_read = threading.Semaphore(0)
        self.stop = threading.Event()
        self.first_batch = threading.Event()
        self.inserted = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(7)
        next_offset = self.first_offset
        try:
            for _ in range(MAX_BATCHES):
                while not self.page_read.acquire(timeout=0.1):
                    if self.stop.is_set():
                        return
                batch = []
                for offset in range(next_offset, next_offset + BATCH):
                    spread = timedelta(seconds=rng.uniform(0, 37 * EXISTING))
                    batch.append(
                        flagged(offset, scored_time=T0 + spread, score=rng.uniform(10, 40))
                    )
                self.inserted += write_flagged(self.sessions, batch)
                next_offset += BATCH
                self.first_batch.set()
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc
            self.first_batch.set()


def page_through(
    client: TestClient, sessions: sessionmaker[Session], sort: str, desc: str
) -> list[int]:
    """Ids of every page of a query, read while an Inserter writes new records."""
    inserter = Inserter(sessions, first_offset=EXISTING + (sort == "score") * MAX_BATCHES * BATCH)
    inserter.start()
    seen: list[int] = []
    cursor = None
    try:
        while True:
            params = {"sort": sort, "desc": desc, "limit": PAGE}
            if cursor is not None:
                params["cursor"] = cursor
            response = client.get("/api/flagged", params=params)
            assert response.status_code == 200, response.text
            body = response.json()
            seen += [record["id"] for record in body["records"]]
            inserter.page_read.release()
            inserter.first_batch.wait()  # new rows exist before the second page is read
            cursor = body["next_cursor"]
            if cursor is None:
                break
    finally:
        inserter.stop.set()
        inserter.join()
    assert inserter.error is None, inserter.error
    assert inserter.inserted >= BATCH
    return seen


def test_paging_while_rows_arrive_neither_skips_nor_repeats(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    seed(sessions, EXISTING, batch=2_500)
    with sessions() as session:
        existing = set(session.scalars(select(FlaggedRecordRow.id)))
    assert len(existing) == EXISTING

    for sort, desc in [("time", "true"), ("score", "false")]:
        seen = page_through(client, sessions, sort, desc)
        repeated = [i for i, n in Counter(seen).items() if n > 1]
        assert repeated == [], (sort, desc)
        assert existing - set(seen) == set(), (sort, desc)  # every record of the start, once
