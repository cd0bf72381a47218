"""Send records to a topic as JSON, optionally at a steady rate: for testing a pipeline, and
for the demo. Each record is one message; a failed send is retried, never silently lost."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from kafka import KafkaProducer
from kafka.errors import KafkaError

from common.errors import LatentwatchError
from streams.kafka import make_producer

_RESEND_ROUNDS = 3
_FLUSH_TIMEOUT_S = 60.0


class ReplayError(LatentwatchError):
    """Replay cannot start (no broker answers, invalid settings)."""


@dataclass(frozen=True)
class ReplayReport:
    sent: int
    failed: int
    seconds: float


def encode_record(record: Mapping[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def replay(
    records: Iterable[Mapping[str, Any] | bytes],
    producer: KafkaProducer,
    topic: str,
    *,
    rate: float | None = None,
    key_field: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplayReport:
    """Produce every record (a mapping, or raw bytes sent as they are) to ``topic``;
    ``rate`` is records per second (None: as fast as the producer goes)."""
    start = clock()
    failed: list[tuple[bytes, bytes | None]] = []
    acknowledged = [0]  # by the producer's I/O thread, one callback at a time
    total = 0

    def acked(_metadata: object) -> None:
        acknowledged[0] += 1

    def send(value: bytes, key: bytes | None) -> None:
        try:
            future = producer.send(topic, value=value, key=key)
        except KafkaError:  # refused at once (too large, no metadata in time): resent below
            failed.append((value, key))
            return
        future.add_callback(acked)
        future.add_errback(lambda _exc: failed.append((value, key)))

    def flush() -> None:
        # A timeout leaves records unacknowledged: they count as failed unless acked later.
        with contextlib.suppress(KafkaError):
            producer.flush(timeout=_FLUSH_TIMEOUT_S)

    for i, record in enumerate(records):
        if rate:
            ahead = start + i / rate - clock()
            if ahead > 0:
                sleep(ahead)
        if isinstance(record, bytes):
            send(record, None)
        else:
            key = record.get(key_field) if key_field else None
            send(encode_record(record), None if key is None else str(key).encode())
        total += 1
    flush()
    for _ in range(_RESEND_ROUNDS):
        if not failed:
            break
        retry, failed[:] = list(failed), []
        for value, key in retry:
            send(value, key)
        flush()
    sent = acknowledged[0]
    return ReplayReport(sent=sent, failed=total - sent, seconds=clock() - start)


def replay_to(
    bootstrap: str,
    records: Iterable[Mapping[str, Any] | bytes],
    topic: str,
    *,
    rate: float | None = None,
    key_field: str | None = None,
    kafka_options: Mapping[str, Any] | None = None,
    **producer_settings: Any,
) -> ReplayReport:
    """:func:`replay` with a producer of its own, closed afterwards."""
    try:
        producer = make_producer(bootstrap, kafka_options, **producer_settings)
    except KafkaError as exc:
        raise ReplayError(f"cannot reach Kafka at {bootstrap}: {exc}") from None
    try:
        return replay(records, producer, topic, rate=rate, key_field=key_field)
    finally:
        producer.close(timeout=10)
