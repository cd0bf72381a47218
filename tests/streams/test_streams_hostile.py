"""No poison pill, by construction: messages with generated metadata (keys binary or text or
large, headers large or null, any 64-bit timestamp, null values, garbage, oversized values),
sent by the independent client (librdkafka) through the real broker to one consumer that runs
for the whole test, storing in PostgreSQL. After each generated batch: the consumer is alive,
every message was scored or dead-lettered exactly once (with the reason it should have), the
flagged ones are stored with their exact key and timestamp, and the offsets moved past all."""

from __future__ import annotations

import itertools
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from latentwatch.embedded import EmbeddedBroker
from latentwatch.service import BackgroundConsumer
from streams.kafka import ensure_topics
from tests.support.cancer_model import Model
from tests.support.stream_harness import (
    Outgoing,
    committed_offsets,
    produce_with_librdkafka,
    thread_consumer,
    wait_until,
)
from tests.support.stream_harness import settings as consume_settings

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

PARTITIONS = 3
MAX_MESSAGE_BYTES = 8_192  # the consumer's limit: larger values are rejected as oversized
MAX_REQUEST_BYTES = 65_536  # the dead-letter producer's: larger dead letters are cut to fit


class Spec(NamedTuple):
    """A generated message; ``value`` says what to send: a record (index into the model's
    records), none, garbage bytes, or a record padded beyond the size limit."""

    value: tuple[str, Any]
    key: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp_ms: int | None
    partition: int


header_names = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12)
header_values = st.one_of(
    st.none(), st.binary(max_size=24), st.binary(min_size=20_000, max_size=40_000)
)
keys = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1).map(lambda n: struct.pack(">q", n)),  # Java's Long
    st.integers(-(2**31), 2**31 - 1).map(lambda n: struct.pack(">i", n)),  # Java's Integer
    st.binary(min_size=16, max_size=16),  # a UUID's bytes
    st.binary(max_size=24),
    st.text(max_size=12).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(min_size=30_000, max_size=50_000),
)
timestamps = st.one_of(
    st.none(),  # librdkafka's clock
    st.sampled_from([1, -5, 253_402_300_800_000, 2**62, 2**63 - 1]),
    st.integers(1, 2**63 - 1),
)
values = st.one_of(
    st.tuples(st.just("record"), st.integers(0, 10_000)),
    st.tuples(st.just("none"), st.none()),
    st.tuples(st.just("garbage"), st.binary(max_size=64)),
    st.tuples(st.just("oversized"), st.integers(0, 10_000)),
)
specs = st.builds(
    Spec,
    value=values,
    key=keys,
    headers=st.lists(st.tuples(header_names, header_values), max_size=3),
    timestamp_ms=timestamps,
    partition=st.integers(0, PARTITIONS - 1),
)


@dataclass
class Stream:
    model: Model
    bootstrap: str
    topic: str
    db: str
    consumer: BackgroundConsumer
    dead_letters: KafkaConsumer
    ids: Iterator[int] = field(default_factory=itertools.count)
    sent: int = 0
    ends: dict[int, int] = field(default_factory=dict)  # partition -> offset after the last

    def record(self, index: int, **extra: object) -> dict[str, object]:
        pool = self.model.normal + self.model.anomalous
        return dict(pool[index % len(pool)], id=f"h{next(self.ids)}", **extra)


@pytest.fixture(scope="module")
def stream(model: Model, broker: EmbeddedBroker, new_postgres_database: Any) -> Iterator[Stream]:
    topic = "hostile"
    ensure_topics(broker.bootstrap, [topic, f"{topic}.deadletter"], partitions=PARTITIONS)
    db = new_postgres_database("lw_hostile")
    s = consume_settings(
        model.path,
        broker.bootstrap,
        topic,
        db,
        group="g-hostile",
        max_message_bytes=MAX_MESSAGE_BYTES,
        kafka_options={"max_request_size": str(MAX_REQUEST_BYTES)},
    )
    dead_letters = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    dead_letters.assign([TopicPartition(f"{topic}.deadletter", p) for p in range(PARTITIONS)])
    dead_letters.seek_to_beginning()
    with thread_consumer(s) as consumer:
        yield Stream(model, broker.bootstrap, topic, db, consumer, dead_letters)
    dead_letters.close()


def stored(db: str, record_ids: list[str]) -> dict[str, tuple[bytes | None, int]]:
    engine = create_engine(db, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT record_id, key, kafka_timestamp FROM flagged_records "
                    "WHERE record_id = ANY(:ids)"
                ),
                {"ids": record_ids},
            )
            return {r: (None if k is None else bytes(k), t) for r, k, t in rows}
    finally:
        engine.dispose()


@settings(
    max_examples=8,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=st.lists(specs, min_size=1, max_size=20))
def test_every_generated_message_is_scored_or_dead_lettered_exactly_once(
    stream: Stream, batch: list[Spec]
) -> None:
    records: dict[int, dict[str, object]] = {}  # position in batch -> the record sent
    outgoing, dead_reason = [], {}
    for i, spec in enumerate(batch):
        kind, arg = spec.value
        if kind == "record":
            records[i] = stream.record(arg)
            value: bytes | None = orjson.dumps(records[i])
        elif kind == "oversized":
            value = orjson.dumps(stream.record(arg, pad="x" * MAX_MESSAGE_BYTES))
            dead_reason[i] = "oversized"
        else:
            value = arg
            dead_reason[i] = "not_json" if kind == "none" else "?"
        outgoing.append(Outgoing(value, spec.key, spec.headers, spec.timestamp_ms, spec.partition))

    scored_before = sum(r.scored for r in stream.consumer.reports)
    positions = produce_with_librdkafka(stream.bootstrap, stream.topic, outgoing)
    stream.sent += len(batch)
    for partition, offset in positions:
        stream.ends[partition] = max(stream.ends.get(partition, 0), offset + 1)
    consumer = stream.consumer
    wait_until(
        lambda: consumer.consumed >= stream.sent or consumer.error is not None,
        30,
        "the consumer to take the batch",
    )
    assert consumer.error is None and consumer.consumed == stream.sent

    # dead letters: exactly the messages that should be, once each, with their reason
    expected_dead = {positions[i]: reason for i, reason in dead_reason.items()}
    letters: dict[tuple[int, int], str] = {}
    deadline = time.monotonic() + 20
    while len(letters) < len(expected_dead) and time.monotonic() < deadline:
        for messages in stream.dead_letters.poll(timeout_ms=200).values():
            for m in messages:
                h = {k: v.decode() for k, v in m.headers if k.startswith("latentwatch-source")}
                position = (
                    int(h["latentwatch-source-partition"]),
                    int(h["latentwatch-source-offset"]),
                )
                assert position not in letters, f"dead-lettered twice: {position}"
                letters[position] = dict(m.headers)["latentwatch-reason"].decode()
    assert letters.keys() == expected_dead.keys()
    for position, reason in expected_dead.items():
        assert reason in (letters[position], "?"), (position, letters[position])
    assert sum(r.scored for r in consumer.reports) - scored_before == len(records)

    # flagged records: stored with the exact key and timestamp they were sent with
    flagged = stream.model.flagged_ids(list(records.values()))
    rows = stored(stream.db, [str(r["id"]) for r in records.values()])
    assert set(rows) == flagged
    for i, record in records.items():
        if record["id"] in flagged:
            key, timestamp = rows[str(record["id"])]
            assert key == batch[i].key
            if batch[i].timestamp_ms is not None:
                assert timestamp == batch[i].timestamp_ms

    # the offsets moved past everything sent
    wait_until(
        lambda: committed_offsets(stream.bootstrap, "g-hostile", stream.topic) == stream.ends,
        20,
        f"offsets {stream.ends} to be committed",
    )
