"""Helpers for the stream tests against the real broker and real databases: run a consumer (as
a thread or as a process that can be SIGKILLed), produce records, read what was stored and what
was dead-lettered, and cut a database connection with a TCP proxy."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import orjson
from confluent_kafka import Producer as ConfluentProducer
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from latentwatch.service import BackgroundConsumer
from latentwatch.settings import ConsumeSettings
from streams.kafka import make_producer
from streams.messages import DecodePolicy
from streams.settings import KafkaSettings, LoopSettings

# Tansu completes a group join after about session_timeout / 2: keep it short in tests.
SESSION_TIMEOUT_MS = 1000


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


# the settings a test changes by name, and the layer's settings each belongs to
_KAFKA = {"session_timeout_ms": "session_timeout_ms", "isolation_level": "isolation_level"}
_KAFKA |= {"kafka_options": "extra"}
_LOOP = {"max_records", "poll_timeout_s", "typed_decoding", "explained_features"}
_LOOP |= {"nearest_normal"}
_POLICY = {"max_message_bytes": "max_bytes", "required_fields": "required_fields"}
_POLICY |= {"schema_versions": "schema_versions"}


def settings(
    model: Path | None, bootstrap: str, topic: str, db: str, group: str, **changes: Any
) -> ConsumeSettings:
    """A consumer's settings for a test: small batches, a short session, no metrics endpoint;
    ``changes`` by the name of the setting (kafka_options, max_message_bytes, liveness...)."""
    changes = {"session_timeout_ms": SESSION_TIMEOUT_MS, "max_records": 500} | changes
    changes = {"poll_timeout_s": 0.2, "metrics_port": None} | changes
    kafka = {_KAFKA[k]: changes.pop(k) for k in list(changes) if k in _KAFKA}
    policy = {_POLICY[k]: changes.pop(k) for k in list(changes) if k in _POLICY}
    loop = {k: changes.pop(k) for k in list(changes) if k in _LOOP}
    return ConsumeSettings(
        model=model,
        db=db,
        kafka=KafkaSettings(bootstrap, group, (topic,), **kafka),
        loop=LoopSettings(policy=DecodePolicy(**policy), **loop),
        **changes,
    )


def thread_consumer(s: ConsumeSettings) -> BackgroundConsumer:
    """A consumer in a thread of this process, with its own metrics registry (a context
    manager)."""
    return BackgroundConsumer(s)


def process_consumer(
    s: ConsumeSettings, log: Path, *extra: str, preamble: str | None = None
) -> subprocess.Popen[bytes]:
    """`latentwatch consume` as a child process (so that it can be killed like a crash).
    ``preamble``: Python run in the process before the command (to inject a fault)."""
    start = ["-m", "latentwatch"]
    if preamble is not None:
        start = ["-c", f"{preamble}\nfrom latentwatch.cli import main\nmain()"]
    argv = [
        sys.executable,
        *start,
        "consume",
        "--model",
        str(s.model),
        "--bootstrap",
        s.kafka.bootstrap,
        "--db",
        s.db,
        "--group",
        s.kafka.group,
        "--metrics-port",
        "-1",
        "--session-timeout-ms",
        str(s.kafka.session_timeout_ms),
        "--max-records",
        str(s.loop.max_records),
        "--log-level",
        "info",
    ]
    for topic in s.kafka.topics:
        argv += ["--topic", topic]
    return subprocess.Popen([*argv, *extra], stdout=subprocess.DEVNULL, stderr=log.open("ab"))


def producer(bootstrap: str) -> KafkaProducer:
    return make_producer(bootstrap, linger_ms=5)


def produce(
    bootstrap: str, topic: str, values: Sequence[bytes], rate: float | None = None
) -> list[tuple[int, int]]:
    """Send and wait for every ack; (partition, offset) of each value, in order."""
    p = producer(bootstrap)
    try:
        futures = []
        start = time.monotonic()
        for i, value in enumerate(values):
            if rate:
                ahead = start + i / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            futures.append(p.send(topic, value=value))
        p.flush(timeout=30)
        metadata = [f.get(timeout=30) for f in futures]
    finally:
        p.close(timeout=5)
    return [(m.partition, m.offset) for m in metadata]


class Outgoing(NamedTuple):
    """One message for the independent client to send; None fields are left to it."""

    value: bytes | None
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes | None]] = ()
    timestamp_ms: int | None = None
    partition: int | None = None


def produce_with_librdkafka(
    bootstrap: str, topic: str, messages: Sequence[Outgoing], **config: Any
) -> list[tuple[int, int]]:
    """Send with librdkafka (confluent-kafka), the independent client, and wait for every
    delivery report; (partition, offset) of each message, in order. ``config`` takes
    librdkafka's settings with ``_`` for ``.`` (``compression_type="zstd"``)."""
    settings = {"bootstrap.servers": bootstrap, "linger.ms": 5}
    settings.update({name.replace("_", "."): value for name, value in config.items()})
    producer = ConfluentProducer(settings)
    positions: list[tuple[int, int] | None] = [None] * len(messages)
    errors: list[str] = []

    def delivered(i: int) -> Callable[[Any, Any], None]:
        def report(error: Any, message: Any) -> None:
            if error is not None:
                errors.append(str(error))
            else:
                positions[i] = (message.partition(), message.offset())

        return report

    for i, m in enumerate(messages):
        extra: dict[str, Any] = {}
        if m.timestamp_ms is not None:
            extra["timestamp"] = m.timestamp_ms
        if m.partition is not None:
            extra["partition"] = m.partition
        producer.produce(
            topic,
            value=m.value,
            key=m.key,
            headers=list(m.headers) or None,
            on_delivery=delivered(i),
            **extra,
        )
        producer.poll(0)
    left = producer.flush(30)
    assert left == 0 and not errors, f"librdkafka: {left} undelivered, errors {errors[:3]}"
    return [p for p in positions if p is not None]


def encode(records: Sequence[dict[str, object]]) -> list[bytes]:
    return [orjson.dumps(r) for r in records]


def stored_explanations(db_url: str, topic: str) -> list[dict[str, Any]]:
    """The explanation JSON of every flagged record of ``topic``."""
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT explanation FROM flagged_records WHERE topic = :topic"),
                {"topic": topic},
            )
            return [r[0] if isinstance(r[0], dict) else json.loads(r[0]) for r in rows]
    finally:
        engine.dispose()


def stored_rows(db_url: str, topic: str) -> list[dict[str, Any]]:
    """The stored rows of ``topic``; none while the consumer has not created its schema (any
    other error is raised, so a broken query never reads as "nothing stored")."""
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("flagged_records"):
                return []
            rows = connection.execute(
                text(
                    "SELECT record_id, kafka_partition, kafka_offset, kafka_timestamp "
                    "FROM flagged_records WHERE topic = :topic"
                ),
                {"topic": topic},
            )
            return [dict(r._mapping) for r in rows]
    finally:
        engine.dispose()


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 20.0) -> list[Any]:
    """Every message of a topic (e.g. the dead letters), waiting until ``expected`` arrived."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=500,
    )
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            out.extend(consumer)
    finally:
        consumer.close()
    return out


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets (the next offset to read), by partition."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


class TcpProxy:
    """A loopback TCP forwarder that can cut every connection and refuse new ones (a database
    that went away), then come back on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        sockets = [a, b]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 1.0)
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    (b if s is a else a).sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()

    def cut(self) -> None:
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            pairs, self._pairs = self._pairs, []
        # shutdown() only: each pump thread sees the end of its stream and closes its own
        # sockets; closing them here would pull the descriptors out from under its select()
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.cut()
