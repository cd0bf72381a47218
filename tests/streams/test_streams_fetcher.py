"""The fetcher hook on record batches built in memory (kafka-python's own builder): a batch that
cannot be decoded is reported with its extent and bytes and stepped over; the batches around
it are read; data that is not even a batch fails once and leaves nothing to spin on."""

from __future__ import annotations

import pytest
from kafka import TopicPartition
from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder

from streams.fetcher import _SkippingPartitionRecords
from streams.messages import UndecodableBatch

NONE, GZIP, LZ4, ZSTD = 0, 1, 3, 4
T0 = 1_790_000_000_000


def batch(offset: int, count: int, codec: int = NONE, magic: int = 2) -> bytes:
    builder = MemoryRecordsBuilder(magic, codec, batch_size=1 << 20, offset=offset)
    for i in range(count):
        builder.append(T0 + offset + i, None, b'{"n": %d}' % (offset + i), [])
    builder.close()
    data = bytes(builder.buffer())
    if magic < 2 and codec != NONE:  # as a broker stores it: the offset of the last inner one
        data = (offset + count - 1).to_bytes(8, "big") + data[8:]
    return data


def read(data: bytes, fetch_offset: int = 0) -> tuple[list[int], list[UndecodableBatch], int]:
    """Offsets handed out, batches reported, where the partition continues."""
    reported: list[UndecodableBatch] = []
    part = _SkippingPartitionRecords(
        fetch_offset, TopicPartition("t", 3), MemoryRecords(data), on_undecodable=reported.append
    )
    offsets = [r.offset for r in part.take()]
    assert not part  # drained: kafka-python moves on to the next fetch
    return offsets, reported, part.next_fetch_offset


def without(codec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """kafka-python finds no library for ``codec`` (from now on: build batches first)."""
    monkeypatch.setattr(f"kafka.codec.has_{codec}", lambda: False)


def test_decodable_batches_are_read_as_kafka_python_reads_them() -> None:
    data = batch(0, 3) + batch(3, 5, ZSTD) + batch(8, 2, GZIP)
    assert read(data) == (list(range(10)), [], 10)
    plain = Fetcher.PartitionRecords(0, TopicPartition("t", 3), MemoryRecords(data))
    assert [r.offset for r in plain.take()] == list(range(10))


def test_a_batch_without_its_codec_is_reported_and_stepped_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    middle = batch(3, 5, ZSTD)
    data = batch(0, 3) + middle + batch(8, 2)
    without("zstd", monkeypatch)
    offsets, (reported,), resume = read(data)
    assert offsets == [0, 1, 2, 8, 9] and resume == 10
    assert (reported.topic, reported.partition) == ("t", 3)
    assert (reported.first_offset, reported.last_offset, reported.records) == (3, 7, 5)
    assert reported.compression == "zstd" and reported.timestamp == T0 + 3
    assert reported.raw == middle
    assert reported.error.startswith("UnsupportedCodecError")


def test_a_fetch_that_starts_inside_the_batch_reports_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = batch(3, 5, ZSTD) + batch(8, 1)
    without("zstd", monkeypatch)
    offsets, (reported,), resume = read(data, fetch_offset=5)
    assert offsets == [8] and resume == 9
    assert (reported.first_offset, reported.last_offset, reported.records) == (5, 7, 3)


def test_a_batch_that_does_not_decompress_is_reported() -> None:
    broken = bytearray(batch(0, 4, GZIP))
    broken[-8:] = b"\x00" * 8  # the end of the gzip stream (its CRC and length)
    offsets, (reported,), resume = read(bytes(broken) + batch(4, 1))
    assert offsets == [4] and resume == 5
    assert reported.compression == "gzip" and reported.records == 4


def test_a_legacy_wrapper_message_is_stepped_over_to_its_last_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In message formats v0/v1 a compressed set is one wrapper message carrying the offset
    of its last inner message."""
    data = batch(0, 2, magic=1) + batch(2, 4, LZ4, magic=1)
    without("lz4", monkeypatch)
    offsets, (reported,), resume = read(data)
    assert offsets == [0, 1] and resume == 6
    assert (reported.first_offset, reported.last_offset, reported.records) == (2, 5, 4)
    assert reported.compression == "lz4" and reported.timestamp is None


def test_bytes_that_are_not_a_batch_fail_once_and_leave_nothing_to_spin_on() -> None:
    # framed like a batch (offset, length), but shorter than any record can be
    data = batch(0, 2) + b"\x00" * 8 + (10).to_bytes(4, "big") + b"\x00" * 10
    reported: list[UndecodableBatch] = []
    part = _SkippingPartitionRecords(
        0, TopicPartition("t", 0), MemoryRecords(data), on_undecodable=reported.append
    )
    assert [r.offset for r in part.take()] == [0, 1]  # the error waits for the next take
    with pytest.raises(CorruptRecordError):
        part.take()
    assert not part and not reported  # kafka-python fetches again instead of looping here
