"""Stream helpers of the lifecycle tests: a record stream with unique ids, producing it, and
reading what the consumers stored. (The stream tests keep their own in tests/streams.)"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from streams.kafka import make_producer
from tests.support.cancer_model import Model

SESSION_TIMEOUT_MS = 1000


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


def stream_of(model: Model, n: int, seed: int) -> list[dict[str, Any]]:
    """Held-out normal records with a tenth anomalous ones mixed in, each with a unique id."""
    rng = random.Random(seed)
    pool = model.normal * 9 + model.anomalous
    return [dict(r, id=f"{r['id']}-{i}") for i, r in enumerate(rng.choices(pool, k=n))]


def produce(bootstrap: str, topic: str, records: Sequence[dict[str, Any]], rate: float) -> None:
    p = make_producer(bootstrap, linger_ms=5)
    try:
        start = time.monotonic()
        futures = []
        for i, record in enumerate(records):
            ahead = start + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            futures.append(p.send(topic, value=orjson.dumps(record)))
        p.flush(timeout=30)
        for f in futures:
            f.get(timeout=30)
    finally:
        p.close(timeout=5)


def query(db_url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(text(sql), params)]
    finally:
        engine.dispose()


def flagged_rows(db_url: str, topic: str) -> list[dict[str, Any]]:
    return query(
        db_url,
        "SELECT record_id, model_version, kafka_partition, kafka_offset FROM flagged_records "
        "WHERE topic = :topic",
        topic=topic,
    )
