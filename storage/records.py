"""What the stream consumer hands to storage: flagged records, the model versions that
scored them, and per-minute counts of what it consumed. Storage owns these input types so that
the consumer depends on storage, never the other way round."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from common.errors import LatentwatchError

# Float fields that must be numbers: SQLite stores NaN as NULL (violating NOT NULL) while
# PostgreSQL accepts it, so a NaN would behave differently per engine. Infinity is allowed.
_NUMBER_FIELDS = (
    "score",
    "severity",
    "p_value",
    "density",
    "density_p_value",
    "reconstruction",
    "reconstruction_p_value",
    "cluster_distance",
)


def readable_key(key: bytes) -> str:
    """A Kafka key as text: itself when it is UTF-8 without NUL bytes (which PostgreSQL text
    cannot hold), else its hex digits. Binary keys are common: Java's Integer and Long
    serializers, 16-byte UUIDs.

    >>> readable_key(b"customer-7"), readable_key((42).to_bytes(8, "big"))
    ('customer-7', '000000000000002a')
    """
    if b"\x00" not in key:
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return key.hex()


class UnstorableRecordError(LatentwatchError, ValueError):
    """A record (or model manifest, ``record`` None) that no database would accept. Retrying
    cannot help: the consumer sets ``record`` aside (dead letters) and writes the rest."""

    def __init__(self, message: str, record: FlaggedRecord | None = None) -> None:
        super().__init__(message)
        self.record = record


@dataclass(frozen=True)
class Flag:
    """What the detector said of one record it flagged: which Kafka message, which model, the
    scores and why; what a stored flag and the record handed to storage share. Scores follow the
    project convention: higher = more anomalous; ``score``, ``density`` and ``reconstruction``
    are in nats."""

    topic: str
    partition: int
    offset: int
    # Kafka message timestamp (ms since the epoch, -1 if none). Part of the identity because a
    # topic that was deleted and recreated (or a broker that lost its log) reuses offsets: the
    # same offset with another timestamp is another record, not a redelivery.
    kafka_timestamp: int
    key: bytes | None  # Kafka message key, its exact bytes (None if absent)
    record_id: str | None  # value of the model's id column, if any
    event_time: datetime | None  # timezone-aware (record timestamp)
    scored_time: datetime  # timezone-aware
    model_version: str  # content-hash version id of the model, e.g. "3f9a1c2b7d10"
    score: float  # combined anomaly score, nats
    severity: float  # 0..100
    p_value: float
    density: float  # latent negative log-density, nats
    density_p_value: float
    reconstruction: float  # reconstruction error, nats
    reconstruction_p_value: float
    cluster: int  # nearest reference cluster
    cluster_distance: float  # Mahalanobis distance to that cluster's centre
    top_feature: str | None  # name of the feature contributing most (for filtering)
    # JSON-able, plain Python types only (no numpy scalars, no NaN):
    # {"features": [{"name", "actual", "expected", "contribution"}...], "latent": [...],
    #  "latent_2d": [x, y]}
    explanation: Mapping[str, Any]


@dataclass(frozen=True)
class FlaggedRecord(Flag):
    """One record the detector flagged, as the consumer hands it to storage. (topic, partition,
    offset, kafka_timestamp) identifies it: writing the same record twice (a Kafka redelivery)
    stores it once."""

    record: Mapping[str, Any]  # the original record as JSON

    @property
    def key_text(self) -> str | None:
        """The key as people read it (:func:`readable_key`), stored beside its bytes."""
        return None if self.key is None else readable_key(self.key)

    def __post_init__(self) -> None:
        if self.key is not None and not isinstance(self.key, bytes):
            raise TypeError(
                f"FlaggedRecord.key must be bytes or None, got {type(self.key).__name__}: "
                "pass the Kafka key as it came (e.g. text.encode())"
            )
        # A naive time cannot be compared with stored UTC times; fail where the bug is made.
        for name in ("event_time", "scored_time"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise ValueError(
                    f"FlaggedRecord.{name} is a naive datetime ({value.isoformat()}): "
                    "pass a timezone-aware one, e.g. datetime.now(UTC)"
                )
        for name in _NUMBER_FIELDS:
            if math.isnan(getattr(self, name)):
                raise ValueError(
                    f"FlaggedRecord.{name} is NaN for {self.topic}[{self.partition}]"
                    f"@{self.offset}: storage accepts numbers (or infinity) only"
                )


@dataclass(frozen=True)
class ModelVersion:
    """A model the consumer scored with. ``version`` is the content hash of the model, so the
    manifest of a version never changes; storage records when the version was first/last seen."""

    version: str
    manifest: Mapping[str, Any]


@dataclass(frozen=True)
class StreamCount:
    """What a consumer did with one topic's records in one minute (``minute``: its start, UTC,
    of the scoring time). Counts add up: consumers write increments, the table sums them, so
    the flagged share of consumed records can be read from SQL. They are approximate across a
    crash: a redelivered batch is counted again, and a few seconds of unwritten counts are
    lost."""

    topic: str
    minute: datetime
    consumed: int
    scored: int
    flagged: int
    rejected: int

    def __post_init__(self) -> None:
        if self.minute.utcoffset() is None or self.minute.second or self.minute.microsecond:
            raise ValueError(f"StreamCount.minute must be an aware whole minute, got {self.minute}")


@dataclass(frozen=True)
class ModelScore:
    """A record as a model that is not the live one scored it (``run``: 'shadow', or a backfill
    run's name), with the live model's verdict when there was one. Never a live flag. The same
    (run, model_version, topic, partition, offset, kafka_timestamp) is stored once."""

    run: str
    model_version: str
    topic: str
    partition: int
    offset: int
    kafka_timestamp: int
    record_id: str | None
    scored_time: datetime
    score: float
    severity: float
    p_value: float
    flagged: bool
    live_version: str | None = None
    live_score: float | None = None
    live_flagged: bool | None = None
    record: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class RunCount:
    """Records a non-live model scored and flagged in one minute of one topic, and how many of
    them the live model flagged (0 for a backfill run): added up like :class:`StreamCount`."""

    run: str
    model_version: str
    topic: str
    minute: datetime
    scored: int
    flagged: int
    live_flagged: int = 0
