"""Topics as real producers write them, sent by the independent client (librdkafka through
confluent-kafka): every compression codec Kafka defines; a record batch that kafka-python
cannot decode, which must be dead-lettered and skipped, never a stall; transactions, read with
--isolation-level read_committed."""

from __future__ import annotations

import signal
import struct
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer as ConfluentProducer
from kafka import KafkaConsumer

import streams.kafka
from latentwatch.embedded import EmbeddedBroker
from streams.kafka import ensure_topics
from tests.support.cancer_model import Model
from tests.support.stream_harness import (
    Outgoing,
    committed_offsets,
    encode,
    process_consumer,
    produce_with_librdkafka,
    read_topic,
    settings,
    stored_rows,
    thread_consumer,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CODECS = ("gzip", "snappy", "lz4", "zstd")


def records(model: Model, prefix: str, normal: int, anomalous: int) -> list[dict[str, object]]:
    """Held-out normal records then anomalies, each with an id of its own."""
    chosen = model.normal[:normal] + model.anomalous[:anomalous]
    return [dict(r, id=f"{prefix}-{i}") for i, r in enumerate(chosen)]


def test_every_compression_codec_is_read(
    model: Model, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    """One partition per codec, each written by librdkafka: every record is scored and every
    flagged one stored."""
    ensure_topics(broker.bootstrap, [topic], partitions=len(CODECS))
    sent: list[dict[str, object]] = []
    for partition, codec in enumerate(CODECS):
        batch = records(model, codec, 60, 10)
        produce_with_librdkafka(
            broker.bootstrap,
            topic,
            [Outgoing(v, partition=partition) for v in encode(batch)],
            compression_type=codec,
        )
        sent += batch
    db = f"sqlite:///{tmp_path / 'latentwatch.db'}"
    s = settings(model.path, broker.bootstrap, topic, db, group=f"g-{topic}")
    with thread_consumer(s) as consumer:
        wait_until(lambda: consumer.consumed >= len(sent), 30, "every compressed record")
        scored = consumer.metric("latentwatch_records_scored_total", topic=topic)
    assert scored == len(sent)
    stored = {str(r["record_id"]) for r in stored_rows(db, topic)}
    assert stored == model.flagged_ids(sent)
    assert {i.split("-")[0] for i in stored} == set(CODECS)


# A consumer process whose kafka-python finds no zstd library: its batches cannot be decoded.
WITHOUT_ZSTD = "import kafka.codec\nkafka.codec.has_zstd = lambda: False"


def test_a_batch_the_client_cannot_decode_is_dead_lettered_and_skipped(
    model: Model, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    """Partition 0 holds a zstd batch between uncompressed records, partition 1 uncompressed
    records only; the consumer cannot decode zstd. The batch goes to dead letters as fetched,
    with its extent and why; both partitions are consumed on either side of it; the offsets
    move past it; SIGTERM stops the process at once."""
    ensure_topics(broker.bootstrap, [topic], partitions=2)
    before, after, other = (records(model, p, 20, 5) for p in ("before", "after", "other"))
    zstd = records(model, "zstd", 30, 5)
    produce_with_librdkafka(
        broker.bootstrap, topic, [Outgoing(v, partition=0) for v in encode(before)]
    )
    produce_with_librdkafka(
        broker.bootstrap,
        topic,
        [Outgoing(v, partition=0) for v in encode(zstd)],
        compression_type="zstd",
        linger_ms=200,  # one batch
    )
    produce_with_librdkafka(
        broker.bootstrap, topic, [Outgoing(v, partition=0) for v in encode(after)]
    )
    produce_with_librdkafka(
        broker.bootstrap, topic, [Outgoing(v, partition=1) for v in encode(other)]
    )

    db = f"sqlite:///{tmp_path / 'latentwatch.db'}"
    s = settings(model.path, broker.bootstrap, topic, db, group=f"g-{topic}")
    log = tmp_path / "consumer.log"
    proc = process_consumer(s, log, preamble=WITHOUT_ZSTD)
    expected = model.flagged_ids(before + after + other)
    try:
        wait_until(
            lambda: len(stored_rows(db, topic)) >= len(expected) or proc.poll() is not None,
            60,
            f"the records around the batch (log: {log})",
        )
        assert proc.poll() is None, log.read_text()[-3000:]
        wait_until(
            lambda: (
                sum(committed_offsets(broker.bootstrap, s.kafka.group, topic).values())
                >= len(before) + len(zstd) + len(after) + len(other)
            ),
            30,
            "the offsets to move past the batch",
        )
        sent_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        stopped_s = time.monotonic() - sent_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert stopped_s < 10, f"SIGTERM took {stopped_s:.1f} s"
    assert {str(r["record_id"]) for r in stored_rows(db, topic)} == expected
    committed = committed_offsets(broker.bootstrap, s.kafka.group, topic)
    assert committed == {0: len(before) + len(zstd) + len(after), 1: len(other)}

    (letter,) = read_topic(broker.bootstrap, f"{topic}.deadletter", expected=1)
    headers = {k: v.decode() for k, v in letter.headers}
    assert headers["latentwatch-reason"] == "undecodable_batch"
    assert headers["latentwatch-source-partition"] == "0"
    assert headers["latentwatch-source-offset"] == str(len(before))
    assert headers["latentwatch-last-offset"] == str(len(before) + len(zstd) - 1)
    assert headers["latentwatch-record-count"] == str(len(zstd))
    assert headers["latentwatch-compression"] == "zstd"
    assert "zstd" in headers["latentwatch-detail"]
    # the value is the record batch as fetched: base offset, then the v2 batch header (magic 2)
    assert struct.unpack_from(">q", letter.value)[0] == len(before)
    assert letter.value[16] == 2
    warnings = [line for line in text.splitlines() if "could not be decoded" in line]
    assert len(warnings) == 1, text[-3000:]


def test_read_committed_reaches_the_client_and_transactions_are_consumed(
    model: Model,
    broker: EmbeddedBroker,
    topic: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--isolation-level read_committed reaches kafka-python's consumer, and the records of an
    idempotent, transactional librdkafka producer's committed transactions are consumed. (The
    embedded broker does not enforce isolation, so what happens to aborted ones is not
    tested here.)"""
    made: list[dict[str, object]] = []

    class Recorded(KafkaConsumer):  # type: ignore[misc]
        def __init__(self, *topics: str, **config: object) -> None:
            super().__init__(*topics, **config)
            made.append(self.config)

    monkeypatch.setattr(streams.kafka, "KafkaConsumer", Recorded)
    ensure_topics(broker.bootstrap, [topic], partitions=2)
    sent = records(model, "tx", 40, 10)
    producer = ConfluentProducer(
        {"bootstrap.servers": broker.bootstrap, "transactional.id": f"tx-{topic}"}
    )
    producer.init_transactions(30)
    for part in (sent[:25], sent[25:]):
        producer.begin_transaction()
        for value in encode(part):
            producer.produce(topic, value=value)
        producer.commit_transaction(30)
    db = f"sqlite:///{tmp_path / 'latentwatch.db'}"
    group = f"g-{topic}"
    s = settings(model.path, broker.bootstrap, topic, db, group, isolation_level="read_committed")
    with thread_consumer(s) as consumer:
        wait_until(lambda: consumer.consumed >= len(sent), 30, "the committed records")
    assert [c["isolation_level"] for c in made] == ["read_committed"]
    assert {str(r["record_id"]) for r in stored_rows(db, topic)} == model.flagged_ids(sent)
