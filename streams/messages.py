"""Kafka messages as plain values, and the first check of a message: is it a JSON record?

A message that is not one becomes a :class:`Rejection` with a short reason code (a metric
label) and a human detail (a dead-letter header). Nothing here raises on bad input.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

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

SCHEMA_VERSION_HEADER = "schema-version"
SCHEMA_VERSION_FIELD = "schema_version"

# JSON has no NaN or Infinity; some producers write them anyway (Python's json.dumps does).
_NON_FINITE_TOKEN = re.compile(rb"(?<![\"\w])-?(NaN|Infinity)(?![\"\w])")


class Message(NamedTuple):
    """One consumed Kafka message; ``timestamp_ms`` is -1 when the broker gave none. (A named
    tuple: one is built per consumed record, and it is several times cheaper than a frozen
    dataclass.)"""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = ()

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True)
class Rejection:
    message: Message
    reason: str  # a reason code above
    detail: str


@dataclass(frozen=True)
class DecodePolicy:
    """What a valid record must look like beyond the model's schema."""

    max_bytes: int = 1_048_576
    required_fields: tuple[str, ...] = ()
    # Accepted values of the `schema-version` header / `schema_version` field; empty: any.
    schema_versions: tuple[str, ...] = ()


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
    raw = message.header(SCHEMA_VERSION_HEADER)
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
