"""Kafka adapters (kafka-python): the consumer-group source, the dead-letter producer, topic
creation. The settings (streams/settings.py): manual commits, a 6 s session (the brokers'
default group.min.session.timeout.ms; a group join then takes ~3 s on Tansu), a short fetch
wait for latency, fast reconnects, and a non-idempotent producer with retries (an idempotent
one dies for good when a broker loses its state). Lag is not read here: the liveness watchdog
looks it up with a client of its own (streams/offsets.py)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain
from typing import Any

from kafka import (
    ConsumerRebalanceListener,
    KafkaAdminClient,
    KafkaConsumer,
    KafkaProducer,
    TopicPartition,
)
from kafka.admin import NewTopic
from kafka.errors import (
    CommitFailedError,
    KafkaConfigurationError,
    KafkaError,
    MessageSizeTooLargeError,
    TopicAlreadyExistsError,
)
from kafka.structs import OffsetAndMetadata

from common.errors import LatentwatchError
from streams.consumer import Offsets, Unavailable
from streams.fetcher import skip_undecodable_batches
from streams.messages import Message, Rejection, UndecodableBatch, timestamp_ms
from streams.retry import Stopped, retry_with_backoff
from streams.settings import KafkaSettings

log = logging.getLogger("latentwatch.kafka")

DEADLETTER_SUFFIX = ".deadletter"
# A commit that cannot reach the coordinator gives up after this; the batch is redelivered.
_COMMIT_TIMEOUT_MS = 10_000
# Start-up waits on Kafka or the database: 1 s doubling to 30 s between attempts (and lines).
STARTUP_RETRY_INITIAL_S = 1.0
STARTUP_RETRY_MAX_S = 30.0
# Without a group coordinator for this long, the consumer says so in its log: kafka-python
# reconnects on its own, and only in log lines of its own that the CLI keeps quiet.
OUTAGE_NOTICE_S = 5.0


class KafkaSettingsError(LatentwatchError):
    """The Kafka client settings are invalid; retrying cannot help."""


_CLIENTS: tuple[type[Any], ...] = (KafkaConsumer, KafkaProducer, KafkaAdminClient)
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def check_options(extra: Mapping[str, Any]) -> None:
    """Refuse a setting that no kafka-python client knows (a typo would otherwise be ignored
    by the clients it does not concern) or whose text does not fit the setting's type."""
    known = set().union(*(c.DEFAULT_CONFIG for c in _CLIENTS))
    unknown = sorted(set(extra) - known)
    if unknown:
        raise KafkaSettingsError(
            f"unknown Kafka setting(s) {', '.join(unknown)}: use kafka-python's names, "
            "e.g. security_protocol, sasl_mechanism, max_poll_interval_ms"
        )
    for client in _CLIENTS:
        options_for(client, extra)


def options_for(client: type[Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of ``extra`` that this kafka-python client takes (consumer-only ones are
    not given to the producer, and so on), text converted to the type of the client's default:
    ``"false"`` becomes False for a flag, ``"300000"`` an int for a number, and a password
    stays text."""
    defaults: Mapping[str, Any] = client.DEFAULT_CONFIG
    return {
        name: _typed(name, value, defaults[name])
        for name, value in extra.items()
        if name in defaults
    }


def _typed(name: str, value: Any, default: Any) -> Any:
    if not isinstance(value, str):  # from a TOML config file: already typed
        return value
    text = value.strip()
    try:
        if isinstance(default, bool):
            if text.lower() not in _TRUE | _FALSE:
                raise ValueError("expected true or false")
            return text.lower() in _TRUE
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError as exc:
        raise KafkaSettingsError(f"Kafka setting {name}={value!r}: {exc}") from None
    if isinstance(default, list | tuple):
        return [item.strip() for item in text.split(",")]
    return text


def _consumer_config(s: KafkaSettings) -> dict[str, Any]:
    return {
        "bootstrap_servers": s.bootstrap.split(","),
        "group_id": s.group,
        "client_id": s.client_id,
        "enable_auto_commit": False,
        "auto_offset_reset": s.auto_offset_reset,
        "isolation_level": s.isolation_level,
        "session_timeout_ms": s.session_timeout_ms,
        # a third of the session, at most 1 s (Kafka requires it below the session timeout)
        "heartbeat_interval_ms": max(min(1000, s.session_timeout_ms // 3), 1),
        "fetch_max_wait_ms": s.fetch_max_wait_ms,
        "reconnect_backoff_max_ms": 1000,
        "bootstrap_timeout_ms": 5000,
        "metrics_enabled": False,
        **options_for(KafkaConsumer, s.extra),
    }


class _NetworkClients:
    """Makes the network clients of kafka-python's clients (its ``kafka_client`` setting) and
    remembers them. kafka-python 3.0.12 starts a network thread and opens sockets before it
    knows a broker answers, and a constructor that then fails leaves them behind: a thread and
    four descriptors per attempt, which a long broker outage at start would pile up until the
    process runs out of descriptors. ``close`` ends a failed attempt's own."""

    def __init__(self) -> None:
        self._made: list[Any] = []

    def __call__(self, **config: Any) -> Any:
        client = KafkaConsumer.DEFAULT_CONFIG["kafka_client"](**config)
        self._made.append(client)
        return client

    def close(self) -> None:
        for client in self._made:
            try:
                client.close()
            except Exception:  # best effort, on a client that never worked
                log.debug("closing a failed Kafka client", exc_info=True)


class Unreachable(Exception):  # noqa: N818  (a state, not a programming error)
    """No broker answered a client that was connecting; the message says why."""


class _FoldedErrors(logging.Filter):
    """kafka-python logs every failed connection attempt itself, two lines each, several a
    second while nothing answers. While a client connects, its network modules' warnings and
    errors are kept out of the log and counted here; the most frequent one becomes the
    reason in the consumer's own line, logged once per attempt at a backed-off rate."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: Counter[str] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        self.lines[record.getMessage()] += 1
        return False

    @contextmanager
    def installed(self) -> Iterator[_FoldedErrors]:
        names = [n for n in list(logging.root.manager.loggerDict) if n.startswith("kafka.net")]
        loggers = [logging.getLogger(n) for n in names]
        for logger in loggers:
            logger.addFilter(self)
        try:
            yield self
        finally:
            for logger in loggers:
                logger.removeFilter(self)

    def reason(self, exc: BaseException) -> str:
        if not self.lines:
            return f"{type(exc).__name__}: {exc}"
        line, _ = self.lines.most_common(1)[0]
        total = sum(self.lines.values())
        return f"{line}; {total} kafka-python log lines folded"


def connect(
    factory: Callable[[Any], Any],
    what: str,
    stop: threading.Event,
    *,
    bootstrap: str,
    give_up_at: float | None = None,
) -> Any:
    """Create a client, retrying with backoff while no broker answers (broker down at start),
    one line per failed attempt with kafka-python's own lines folded into it (and, past
    ``give_up_at``, :class:`streams.retry.GaveUp`). ``factory`` receives the ``kafka_client``
    setting to pass on, so that a failed attempt's network client is closed. Returns None if
    ``stop`` is set first. Invalid settings fail at once."""

    def create() -> Any:
        clients = _NetworkClients()
        folded = _FoldedErrors()
        try:
            with folded.installed():
                return factory(clients)
        except KafkaConfigurationError as exc:
            clients.close()
            raise KafkaSettingsError(f"{what}: invalid Kafka settings: {exc}") from None
        except (KafkaError, OSError) as exc:
            clients.close()
            raise Unreachable(folded.reason(exc)) from exc
        except BaseException:
            clients.close()
            raise

    if stop.is_set():
        return None
    try:
        return retry_with_backoff(
            create,
            f"{what}: reaching Kafka at {bootstrap}",
            stop,
            retry_on=(Unreachable,),
            initial_s=STARTUP_RETRY_INITIAL_S,
            max_s=STARTUP_RETRY_MAX_S,
            give_up_at=give_up_at,
        )
    except Stopped:
        return None


class _Rebalance(ConsumerRebalanceListener):
    """Nothing is pending at a revocation: the loop commits each batch before polling again,
    and rebalances only happen inside poll(). So revocation needs only bookkeeping. The
    partitions owned after each change go to ``on_assignment`` (the liveness watchdog)."""

    def __init__(
        self,
        on_revoked: Callable[[], None],
        on_assignment: Callable[[frozenset[tuple[str, int]]], None],
    ) -> None:
        self._on_revoked = on_revoked
        self._on_assignment = on_assignment
        self._owned: frozenset[tuple[str, int]] = frozenset()

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        if revoked:  # the first join "revokes" nothing
            log.info("partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))
            self._owned -= {(tp.topic, tp.partition) for tp in revoked}
            self._on_revoked()
            self._on_assignment(self._owned)

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))
        self._owned |= {(tp.topic, tp.partition) for tp in assigned}
        self._on_assignment(self._owned)


class KafkaSource:
    """A consumer-group member of ``settings.topics`` that commits only what it is told to."""

    def __init__(
        self,
        settings: KafkaSettings,
        stop: threading.Event,
        on_revoked: Callable[[], None] = lambda: None,
        on_assignment: Callable[[frozenset[tuple[str, int]]], None] = lambda owned: None,
        give_up_at: float | None = None,
    ) -> None:
        consumer = connect(
            lambda clients: KafkaConsumer(**_consumer_config(settings), kafka_client=clients),
            f"consumer of {', '.join(settings.topics)}",
            stop,
            bootstrap=settings.bootstrap,
            give_up_at=give_up_at,
        )
        self._consumer: KafkaConsumer | None = consumer
        self._lost_since: float | None = None  # monotonic time the coordinator went missing
        self._outage_noticed = False
        self._undecodable: list[UndecodableBatch] = []
        if consumer is not None:
            skip_undecodable_batches(consumer, self._skipped)
            consumer.subscribe(
                list(settings.topics), listener=_Rebalance(on_revoked, on_assignment)
            )

    @property
    def connected(self) -> bool:
        return self._consumer is not None

    def poll(self, timeout_s: float, max_records: int) -> list[Message]:
        """kafka-python's ConsumerRecords, which are Messages as they come."""
        assert self._consumer is not None
        try:
            polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:  # e.g. not authorised on a topic, a corrupt record
            raise Unavailable(f"polling Kafka: {type(exc).__name__}: {exc}") from exc
        self._watch_coordinator(time.monotonic())
        return list(chain.from_iterable(polled.values()))

    def _skipped(self, batch: UndecodableBatch) -> None:
        hint = " (is the codec's library installed?)" if "Codec" in batch.error else ""
        log.warning(
            "record batch %s[%d] at offsets %d-%d (%d records, compression %s) could not be "
            "decoded: %s%s; it goes to dead letters as fetched and the partition continues",
            batch.topic,
            batch.partition,
            batch.first_offset,
            batch.last_offset,
            batch.records,
            batch.compression,
            batch.error,
            hint,
        )
        self._undecodable.append(batch)

    def undecodable(self) -> list[UndecodableBatch]:
        """The batches the polls since the last call stepped over (streams/fetcher.py)."""
        batches, self._undecodable = self._undecodable, []
        return batches

    def _watch_coordinator(self, now: float) -> None:
        """One warning when the group coordinator has been unknown (the broker is down or
        unreachable) for OUTAGE_NOTICE_S, one line when it is back. Reads kafka-python's
        coordinator id, which its own polls clear on a lost connection and set on recovery
        (no public API tells)."""
        coordinator = getattr(self._consumer, "_coordinator", None)
        if getattr(coordinator, "coordinator_id", 0) is not None:
            if self._outage_noticed and self._lost_since is not None:
                log.info("Kafka reachable again after %.0f s", now - self._lost_since)
            self._lost_since, self._outage_noticed = None, False
        elif self._lost_since is None:
            self._lost_since = now
        elif not self._outage_noticed and now - self._lost_since >= OUTAGE_NOTICE_S:
            self._outage_noticed = True
            log.warning(
                "no Kafka group coordinator for %.0f s (broker down or unreachable?): "
                "reconnecting with backoff; nothing is consumed or committed meanwhile",
                now - self._lost_since,
            )

    def commit(self, offsets: Offsets) -> bool:
        assert self._consumer is not None
        try:
            self._consumer.commit(
                {
                    TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                    for (t, p), o in offsets.items()
                },
                timeout_ms=_COMMIT_TIMEOUT_MS,
            )
        except CommitFailedError as exc:
            log.warning("commit failed: %s", exc)
            return False
        except KafkaError as exc:
            log.warning("commit failed (%s): the batch will be redelivered", exc)
            return False
        return True

    def close(self) -> None:
        """Leave the group cleanly (a fast rebalance for the others); never commit here."""
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None


def make_producer(
    bootstrap: str, extra: Mapping[str, Any] | None = None, **overrides: Any
) -> KafkaProducer:
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap.split(","),
        "client_id": "latentwatch",
        "acks": "all",
        "enable_idempotence": False,
        "retries": 5,
        "linger_ms": 20,
        "batch_size": 262_144,
        "reconnect_backoff_max_ms": 1000,
        "bootstrap_timeout_ms": 5000,
        **options_for(KafkaProducer, extra or {}),
        **overrides,
    }
    return KafkaProducer(**config)


def _text(value: object) -> bytes:
    return str(value).encode("utf-8", "replace")


# Room left in a dead letter for the record batch's own overhead besides key, value, headers.
_RECORD_OVERHEAD_BYTES = 1024
_HEADER_OVERHEAD_BYTES = 10  # per header: its length varints
# What is kept of a value the broker refuses even though the producer's limit allowed it (the
# broker's or the topic's max.message.bytes is smaller).
_FALLBACK_VALUE_BYTES = 64 * 1024


def _size(headers: Sequence[tuple[str, bytes]]) -> int:
    return sum(len(k.encode()) + len(v) + _HEADER_OVERHEAD_BYTES for k, v in headers)


class DeadLetterProducer:
    """Publishes rejected messages: original key and bytes, the reason and source position in
    headers. ``send`` returns only when the broker acknowledged every one.

    A dead letter must always be deliverable, or the stream would stop behind it: a value too
    large to publish (an oversized message) is cut to fit, with its original size in the
    ``latentwatch-truncated-from`` header; original headers that leave no room are left out
    (``latentwatch-headers-dropped``: how many) and a key too large is cut
    (``latentwatch-key-truncated-from``). The whole message stays in the source topic, at the
    position the headers give. A message with neither key nor value is sent with an empty
    value."""

    def __init__(
        self, producer: KafkaProducer, topic: str | None = None, timeout_s: float = 10.0
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._timeout_s = timeout_s
        self._max_request_bytes = int(producer.config["max_request_size"])

    def topic_for(self, source_topic: str) -> str:
        return self._topic or source_topic + DEADLETTER_SUFFIX

    def send(self, rejections: Sequence[Rejection]) -> None:
        try:
            pending = [(r, self._publish(r, None)) for r in rejections]
            self._producer.flush(timeout=self._timeout_s)
            for rejection, future in pending:
                try:
                    future.get(timeout=self._timeout_s)
                except MessageSizeTooLargeError:  # the broker's limit is below the producer's
                    self._publish(rejection, _FALLBACK_VALUE_BYTES).get(timeout=self._timeout_s)
        except (KafkaError, OSError) as exc:
            raise Unavailable(f"dead-letter topic: {type(exc).__name__}: {exc}") from exc

    def _publish(self, r: Rejection, max_value_bytes: int | None) -> Any:
        m = r.message
        ours = [
            ("latentwatch-reason", _text(r.reason)),
            ("latentwatch-detail", _text(r.detail[:1000])),
            ("latentwatch-source-topic", _text(m.topic)),
            ("latentwatch-source-partition", _text(m.partition)),
            ("latentwatch-source-offset", _text(m.offset)),
            ("latentwatch-source-timestamp", _text(timestamp_ms(m))),
        ]
        original = [(k, v) for k, v in m.headers or () if v is not None]
        key, value = m.key, m.value
        room = self._max_request_bytes - _RECORD_OVERHEAD_BYTES
        if max_value_bytes is not None:  # the broker refused it once: what surely fits
            room = min(room, 2 * max_value_bytes)
        if _size([*ours, *original]) + len(key or b"") > room // 2:  # half for the value
            ours.append(("latentwatch-headers-dropped", _text(len(original))))
            original = []
            if key is not None and len(key) + _size(ours) > room // 2:
                ours.append(("latentwatch-key-truncated-from", _text(len(key))))
                key = key[: max(room // 2 - _size(ours), 0)]
        headers = [*original, *ours]
        if max_value_bytes is None:
            max_value_bytes = max(room - _size(headers) - len(key or b""), 0)
        if value is not None and len(value) > max_value_bytes:
            headers.append(("latentwatch-truncated-from", _text(len(value))))
            value = value[:max_value_bytes]
        if key is None and value is None:  # kafka-python sends no record without either
            value = b""
        return self._producer.send(self.topic_for(m.topic), value=value, key=key, headers=headers)

    def close(self) -> None:
        self._producer.close(timeout=5)


def ensure_topics(
    bootstrap: str,
    topics: Sequence[str],
    partitions: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet, with ``partitions`` (None: the broker's
    default) and the broker's default replication factor; return the ones created."""
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap.split(","),
        client_id="latentwatch",
        **options_for(KafkaAdminClient, extra or {}),
    )
    created: list[str] = []
    try:
        existing = set(admin.list_topics())
        count = -1 if partitions is None else partitions  # -1: the broker's default
        new = [NewTopic(t, count, -1) for t in topics if t not in existing]
        for topic in new:
            try:
                admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
    return created
