"""kafka-python's fetcher, taught to step over a record batch it cannot decode.

kafka-python 3.0.12 decodes a fetched record batch lazily, while ``poll`` hands out its records.
When that fails (a compression codec whose library is missing, bytes that do not decompress, a
failed CRC), the exception leaves the partition's half-read data in place, and every later
``poll`` loops over it without end: 100 % CPU, no partition consumed, no signal acted on.

Installed on a consumer (:func:`skip_undecodable_batches`), the fetcher reads batch by batch
instead: a batch that fails is reported as an :class:`UndecodableBatch` (its extent, its bytes
as fetched and why) and the partition continues after it, so the consumer can dead-letter it
and commit past it. Data that cannot even be split into batches is dropped from the fetch and
its error raised once, as a ``KafkaError``: that poll fails (the consumer retries it with
backoff) instead of spinning.

This reaches into kafka-python's fetcher (``Fetcher.PartitionRecords``), which is why the
version is pinned; :func:`skip_undecodable_batches` refuses a consumer without it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError, KafkaError

from streams.messages import UndecodableBatch

CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


class _Batches:
    """The ``MemoryRecords`` of one fetch, remembering the batch being read and its bytes as
    fetched (a view into the fetch response: nothing is copied unless the batch fails)."""

    def __init__(self, records: Any) -> None:
        self._records = records
        self.batch: Any = None
        self.raw: memoryview | None = None

    def next_batch(self) -> Any:
        self.batch = self.raw = None
        raw = self._records._next_slice  # the batch next_batch() returns
        batch = self._records.next_batch()
        self.batch, self.raw = batch, raw
        return batch


class _SkippingPartitionRecords(Fetcher.PartitionRecords):
    next_fetch_offset: int  # set by kafka-python: the offset after the last record handed out

    def __init__(
        self, *args: Any, on_undecodable: Callable[[UndecodableBatch], None], **kwargs: Any
    ) -> None:
        self._on_undecodable = on_undecodable
        super().__init__(*args, **kwargs)

    def _unpack_records(
        self, tp: Any, records: Any, key_deserializer: Any, value_deserializer: Any
    ) -> Iterator[Any]:
        batches = _Batches(records)
        while True:
            try:
                yield from super()._unpack_records(
                    tp, batches, key_deserializer, value_deserializer
                )
                return
            except Exception as exc:  # whatever fails to decode is the batch's, not ours
                if batches.batch is None:  # no batch to step over: give the error up once
                    self.drain()
                    if isinstance(exc, KafkaError):
                        raise
                    raise CorruptRecordError(f"{tp}: {type(exc).__name__}: {exc}") from exc
                report = _undecodable(tp, batches, self.next_fetch_offset, exc)
                batches.batch = None
                if report is not None:  # else it lies before the position: nothing to skip
                    self.next_fetch_offset = report.last_offset + 1
                    self._on_undecodable(report)


def _undecodable(
    tp: Any, batches: _Batches, position: int, exc: Exception
) -> UndecodableBatch | None:
    """What is known of the batch that failed (``position``: the first offset not handed out
    yet); None if all of it lies before the position."""
    batch = batches.batch
    if batch.magic >= 2:
        first, last = max(batch.base_offset, position), batch.last_offset
        count = min(batch.records_count, last - first + 1)
        timestamp = batch.first_timestamp
    else:  # a legacy (v0/v1) wrapper message carries the offset of its last inner message
        first, last = position, batch.base_offset
        count, timestamp = last - first + 1, None
    if last < position:
        return None
    return UndecodableBatch(
        topic=tp.topic,
        partition=tp.partition,
        first_offset=first,
        last_offset=last,
        records=max(count, 1),
        timestamp=timestamp,
        compression=CODECS.get(batch.compression_type, str(batch.compression_type)),
        raw=bytes(batches.raw) if batches.raw is not None else b"",
        error=f"{type(exc).__name__}: {exc}",
    )


def skip_undecodable_batches(
    consumer: Any, on_undecodable: Callable[[UndecodableBatch], None]
) -> None:
    """From now on, a batch ``consumer`` cannot decode goes to ``on_undecodable`` (called from
    inside ``poll``) and its partition continues after it."""
    fetcher = getattr(consumer, "_fetcher", None)
    if not isinstance(fetcher, Fetcher):
        raise RuntimeError(
            "this kafka-python has no fetcher latentwatch can guard against undecodable "
            "batches: install the kafka-python version pyproject.toml pins"
        )
    fetcher.PartitionRecords = functools.partial(
        _SkippingPartitionRecords, on_undecodable=on_undecodable
    )
