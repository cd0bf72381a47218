"""Kafka messages as plain values, and the first check of a message: is it a JSON record?

A message that is not one becomes a :class:`Rejection` with a short reason code (a metric
label) and a human detail (a dead-letter header). Nothing here raises on bad input.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import orjson

# Reason codes; also the values of the `reason` label of latentwatch_records_rejected_total.
NOT_UTF8 = "not_utf8"
NOT_JSON = "not_json"
NON_FINITE = "non_finite_number"
NOT_AN_OBJECT = "not_an_object"
WRONG_TYPE = "wrong_type"
MISSING_REQUIRED = "missing_required"
OVERSIZED = "oversized"
UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
UNSTORABLE = "unstorable"
# A record batch the Kafka client could not decode (a codec it lacks, corrupt bytes): the batch
# is dead-lettered whole, as fetched, and skipped (streams/fetcher.py).
UNDECODABLE_BATCH = "undecodable_batch"
SCORING_FAILED = "scoring_failed"
# every reason code: the values of the metric's reason label (streams.metrics adds "other")
REJECT_REASONS: tuple[str, ...] = (NOT_UTF8, NOT_JSON, NON_FINITE, NOT_AN_OBJECT, WRONG_TYPE)
REJECT_REASONS += (MISSING_REQUIRED, OVERSIZED, UNKNOWN_SCHEMA_VERSION, UNSTORABLE)
REJECT_REASONS += (UNDECODABLE_BATCH, SCORING_FAILED)

SCHEMA_VERSION_HEADER = "schema-version"
SCHEMA_VERSION_FIELD = "schema_version"

# JSON has no NaN or Infinity; some producers write them anyway (Python's json.dumps does).
_NON_FINITE_TOKEN = re.compile(rb"(?<![\"\w])-?(NaN|Infinity)(?![\"\w])")


class Message(Protocol):
    """One consumed Kafka message. kafka-python's ``ConsumerRecord`` is one as it comes: the
    consumer passes records through instead of copying each (a copy per message would be a
    noticeable share of the consumer's time). ``timestamp`` is in ms since the epoch; see
    :func:`timestamp_ms`."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int | None: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]]: ...


class PlainMessage(NamedTuple):
    """A :class:`Message` made by hand: in tests, and to dead-letter a record that was decoded
    already."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = ()


def timestamp_ms(message: Message) -> int:
    """The message's timestamp, -1 when the broker gave none (old message formats)."""
    ts = message.timestamp
    return -1 if ts is None else ts


def header(message: Message, name: str) -> bytes | None:
    for key, value in message.headers or ():
        if key == name:
            return value
    return None


@dataclass(frozen=True)
class Rejection:
    message: Message
    reason: str  # a reason code above
    detail: str


@dataclass(frozen=True)
class UndecodableBatch:
    """A run of messages the Kafka client fetched but could not decode: where it is, what it
    is, and its bytes as fetched. ``records`` comes from the batch header (an upper bound when
    decoding failed part-way)."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    records: int
    timestamp: int | None  # ms since the epoch, the batch's first; None if unknown
    compression: str  # none, gzip, snappy, lz4, zstd
    raw: bytes
    error: str

    def rejection(self) -> Rejection:
        """The dead letter: the raw batch as its value, its extent in headers."""
        headers = [
            ("latentwatch-last-offset", str(self.last_offset).encode()),
            ("latentwatch-record-count", str(self.records).encode()),
            ("latentwatch-compression", self.compression.encode()),
        ]
        message = PlainMessage(
            self.topic, self.partition, self.first_offset, self.timestamp, None, self.raw, headers
        )
        detail = (
            f"record batch at offsets {self.first_offset}-{self.last_offset} ({self.records} "
            f"records, compression {self.compression}) could not be decoded: {self.error}; "
            "the value is the batch as fetched"
        )
        return Rejection(message, UNDECODABLE_BATCH, detail)


@dataclass(frozen=True)
class DecodePolicy:
    """What a valid record must look like beyond the model's schema."""

    max_bytes: int = 1_048_576
    required_fields: tuple[str, ...] = ()
    # Accepted values of the `schema-version` header / `schema_version` field; empty: any.
    schema_versions: tuple[str, ...] = ()

    @property
    def plain(self) -> bool:
        """Only the size limit applies: a JSON object within it is a record."""
        return not self.required_fields and not self.schema_versions


def decode(message: Message, policy: DecodePolicy) -> dict[str, Any] | Rejection:  # noqa: PLR0911
    """The message's JSON object, or why it is not a usable record."""
    value = message.value
    if value is None:
        return Rejection(message, NOT_JSON, "message has no value (a tombstone?)")
    if len(value) > policy.max_bytes:
        return Rejection(
            message, OVERSIZED, f"{len(value)} bytes, more than the limit of {policy.max_bytes}"
        )
    try:
        record = orjson.loads(value)  # also rejects text that is not UTF-8
    except orjson.JSONDecodeError as exc:
        return _why_not_json(message, value, exc)
    if not isinstance(record, dict):
        return Rejection(
            message, NOT_AN_OBJECT, f"a record must be a JSON object, got {type(record).__name__}"
        )
    missing = [name for name in policy.required_fields if record.get(name) is None]
    if missing:
        return Rejection(
            message, MISSING_REQUIRED, f"missing required field(s): {', '.join(missing)}"
        )
    if policy.schema_versions:
        rejection = _check_schema_version(message, record, policy.schema_versions)
        if rejection is not None:
            return rejection
    return record


class Decoded(NamedTuple):
    records: list[dict[str, Any]]
    messages: list[Message]  # the messages the records came from, in the same order
    rejections: list[Rejection]


def decode_all(messages: Sequence[Message], policy: DecodePolicy) -> Decoded:
    """Decode a micro-batch with :func:`decode`. The consumer's fast path is the typed decoder
    (streams/typed.py); this is the reference it is tested against, and what judges the batches
    it declines."""
    out = Decoded([], [], [])
    for message in messages:
        result = decode(message, policy)
        if isinstance(result, Rejection):
            out.rejections.append(result)
        else:
            out.records.append(result)
            out.messages.append(message)
    return out


def _why_not_json(message: Message, value: bytes, exc: orjson.JSONDecodeError) -> Rejection:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as bad:
        return Rejection(message, NOT_UTF8, f"not UTF-8: {bad.reason} at byte {bad.start}")
    if _NON_FINITE_TOKEN.search(value):
        return Rejection(message, NON_FINITE, "NaN or Infinity is not valid JSON")
    return Rejection(message, NOT_JSON, f"not valid JSON: {exc}")


def _check_schema_version(
    message: Message, record: dict[str, Any], accepted: tuple[str, ...]
) -> Rejection | None:
    raw = header(message, SCHEMA_VERSION_HEADER)
    version: object = (
        raw.decode("utf-8", "replace") if raw is not None else record.get(SCHEMA_VERSION_FIELD)
    )
    if version is None or str(version) in accepted:
        return None
    return Rejection(
        message,
        UNKNOWN_SCHEMA_VERSION,
        f"schema version {version!s:.64} is not one of {', '.join(accepted)}",
    )
