"""The Kafka adapters on their own: client settings, and dead letters that are always
deliverable (a dead letter the broker refuses would hold the stream behind it). Against the
embedded broker, except the one refusal it cannot produce."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import MessageSizeTooLargeError

from latentwatch.embedded import EmbeddedBroker, free_port
from streams.kafka import (
    DeadLetterProducer,
    KafkaSettingsError,
    KafkaSource,
    check_options,
    make_producer,
    options_for,
)
from streams.messages import PlainMessage, Rejection
from streams.settings import KafkaSettings
from tests.support.cancer_model import Model
from tests.support.stream_harness import read_topic, settings, thread_consumer, wait_until


def test_each_client_gets_the_settings_it_knows_typed_by_its_defaults() -> None:
    extra = {
        "max_poll_interval_ms": "900000",  # consumer only
        "max_request_size": "2097152",  # producer only
        "check_crcs": "false",
        "sasl_plain_password": "12345",  # a password of digits stays text
        "security_protocol": "PLAINTEXT",
    }
    check_options(extra)
    consumer = options_for(KafkaConsumer, extra)
    producer = options_for(KafkaProducer, extra)
    assert consumer["max_poll_interval_ms"] == 900_000
    assert consumer["check_crcs"] is False
    assert consumer["sasl_plain_password"] == "12345"
    assert "max_request_size" not in consumer
    assert producer["max_request_size"] == 2_097_152
    assert "max_poll_interval_ms" not in producer and "check_crcs" not in producer
    assert "max_request_size" not in options_for(KafkaAdminClient, extra)
    assert options_for(KafkaConsumer, {"fetch_min_bytes": 5}) == {"fetch_min_bytes": 5}


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"max_poll_interval": "1"}, "unknown Kafka setting(s) max_poll_interval"),
        ({"check_crcs": "maybe"}, "check_crcs='maybe': expected true or false"),
        ({"max_poll_interval_ms": "5m"}, "max_poll_interval_ms='5m'"),
    ],
)
def test_bad_kafka_settings_fail_at_start_with_their_name(
    extra: dict[str, str], words: str
) -> None:
    with pytest.raises(KafkaSettingsError) as error:
        check_options(extra)
    assert words in str(error.value)


def rejection(topic: str, value: bytes | None, key: bytes | None = None) -> Rejection:
    return Rejection(PlainMessage(topic, 0, 41, 1_790_000_000_000, key, value), "oversized", "x")


@pytest.mark.kafka
def test_a_message_with_neither_key_nor_value_is_dead_lettered(broker: EmbeddedBroker) -> None:
    dead = DeadLetterProducer(make_producer(broker.bootstrap))
    try:
        dead.send([rejection("tombstones", None)])
    finally:
        dead.close()
    [letter] = read_topic(broker.bootstrap, "tombstones.deadletter", expected=1)
    assert letter.value == b"" and letter.key is None
    assert dict(letter.headers)["latentwatch-source-offset"] == b"41"


@pytest.mark.kafka
def test_a_value_beyond_the_producer_limit_is_cut_to_fit(broker: EmbeddedBroker) -> None:
    limit = 16_384
    value = bytes(range(256)) * 200  # 51,200 bytes
    dead = DeadLetterProducer(make_producer(broker.bootstrap, max_request_size=limit))
    try:
        dead.send([rejection("big", value, key=b"k"), rejection("big", b"small")])
    finally:
        dead.close()
    letters = read_topic(broker.bootstrap, "big.deadletter", expected=2)
    cut = next(m for m in letters if m.key == b"k")
    headers = dict(cut.headers)
    assert headers["latentwatch-truncated-from"] == b"51200"
    assert headers["latentwatch-reason"] == b"oversized"
    assert 8_000 < len(cut.value) < limit and value.startswith(cut.value)
    whole = next(m for m in letters if m.key is None)
    assert whole.value == b"small" and "latentwatch-truncated-from" not in dict(whole.headers)


@pytest.mark.kafka
def test_a_key_and_headers_beyond_the_producer_limit_are_cut_to_fit(
    broker: EmbeddedBroker,
) -> None:
    """Key and headers alone over the limit: the original headers are left out (counted),
    the key is cut, and the dead letter is still delivered."""
    limit = 16_384
    headers = [(f"h{i}", b"x" * 1000) for i in range(30)]
    message = PlainMessage("wide", 0, 41, 1_790_000_000_000, b"k" * 20_000, b"v", headers)
    dead = DeadLetterProducer(make_producer(broker.bootstrap, max_request_size=limit))
    try:
        dead.send([Rejection(message, "oversized", "x")])
    finally:
        dead.close()
    [letter] = read_topic(broker.bootstrap, "wide.deadletter", expected=1)
    got = dict(letter.headers)
    assert got["latentwatch-headers-dropped"] == b"30" and "h0" not in got
    assert got["latentwatch-key-truncated-from"] == b"20000"
    assert letter.key is not None and 0 < len(letter.key) < limit
    assert got["latentwatch-source-offset"] == b"41" and letter.value == b"v"


class _RefusingFuture:
    def get(self, timeout: float) -> Any:
        raise MessageSizeTooLargeError("broker: message.max.bytes")


class _BrokerWithSmallLimit:
    """A producer whose broker refuses anything over 64 KiB although the producer allows 1 MiB
    (a topic's max.message.bytes): the embedded broker does not enforce that setting."""

    def __init__(self) -> None:
        self.config = {"max_request_size": 1_048_576}
        self.sent: list[tuple[str, bytes | None, dict[str, bytes]]] = []

    def send(self, topic: str, value: bytes | None, key: bytes | None, headers: Any) -> Any:
        self.sent.append((topic, value, dict(headers)))
        return _RefusingFuture() if value is not None and len(value) > 65_536 else _Accepted()

    def flush(self, timeout: float) -> None:
        pass


class _Accepted:
    def get(self, timeout: float) -> Any:
        return None


def test_a_value_the_broker_refuses_is_sent_again_cut_short() -> None:
    producer = _BrokerWithSmallLimit()
    dead = DeadLetterProducer(producer)  # type: ignore[arg-type]
    dead.send([rejection("t", b"v" * 500_000)])
    (_, first, _), (_, second, headers) = producer.sent
    assert first is not None and len(first) == 500_000
    assert second == b"v" * 65_536
    assert headers["latentwatch-truncated-from"] == b"500000"


@pytest.mark.kafka
def test_the_consumer_creates_its_dead_letter_topic_at_start(
    model: Model, broker: EmbeddedBroker, topic: str, tmp_path: Path
) -> None:
    """With automatic topic creation off (most production clusters) the first rejected record
    would otherwise wait for an operator."""
    s = settings(model.path, broker.bootstrap, topic, f"sqlite:///{tmp_path / 'lw.db'}", "g-dl")
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        assert f"{topic}.deadletter" not in admin.list_topics()
        with thread_consumer(s):
            wait_until(
                lambda: f"{topic}.deadletter" in admin.list_topics(), 20, "the dead-letter topic"
            )
    finally:
        admin.close()


def test_attempts_to_reach_a_broker_that_is_down_leave_no_threads_behind() -> None:
    """kafka-python starts a network thread before it knows a broker answers and does not stop
    it when the constructor fails; over a long outage at start those would pile up."""
    before = {t.ident for t in threading.enumerate()}
    stop = threading.Event()
    timer = threading.Timer(4.0, stop.set)
    timer.start()
    quick = KafkaSettings(
        bootstrap=f"127.0.0.1:{free_port()}",
        topics=("t",),
        extra={"bootstrap_timeout_ms": "300"},
    )
    try:
        source = KafkaSource(quick, stop)
    finally:
        timer.cancel()
    assert not source.connected
    left = [t.name for t in threading.enumerate() if t.ident not in before]
    assert left == []
