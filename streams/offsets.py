"""The liveness watchdog's own view of a consumer group's offsets (kafka-python's admin client):
end offsets with ListOffsets, committed offsets with OffsetFetch. The consumer loop's
KafkaConsumer is not thread-safe, and it is the one that hangs when the loop hangs, so the
watchdog never touches it; this client belongs to the watchdog's thread and joins no group.

End offsets: ListOffsets(LATEST) is the log end on Kafka (the last stable offset with
``isolation_level=read_committed``). The embedded broker used by the tests (Tansu) answers it
with the base offset of the newest record batch + 1, short of the end by the rest of that batch
(as the tests observe); lag there is low by less than one producer batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kafka import KafkaAdminClient, TopicPartition
from kafka.protocol.consumer import IsolationLevel, OffsetSpec

from streams.kafka import options_for

Partition = tuple[str, int]


class KafkaOffsets:
    """End and start offsets of a group's partitions, each look-up bounded by ``timeout_s``.
    ``kafka_client``: kafka-python's network-client factory (what :func:`streams.kafka.connect`
    passes, so that a failed start leaves nothing open)."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        *,
        auto_offset_reset: str = "earliest",
        extra: Mapping[str, Any] | None = None,
        timeout_s: float = 5.0,
        kafka_client: Any = None,
    ) -> None:
        options = dict(extra or {})
        committed_only = options.get("isolation_level") == "read_committed"
        timeout_ms = int(timeout_s * 1000)
        config: dict[str, Any] = {
            "client_id": "latentwatch-liveness",
            "request_timeout_ms": timeout_ms,
            "bootstrap_timeout_ms": timeout_ms,
            "reconnect_backoff_max_ms": 1000,
            **options_for(KafkaAdminClient, options),  # the user's settings win
            "bootstrap_servers": bootstrap.split(","),
        }
        if kafka_client is not None:
            config["kafka_client"] = kafka_client
        self._admin = KafkaAdminClient(**config)
        self._group = group
        self._timeout_ms = timeout_ms
        self._isolation = (
            IsolationLevel.READ_COMMITTED if committed_only else IsolationLevel.READ_UNCOMMITTED
        )
        self._reset = OffsetSpec.EARLIEST if auto_offset_reset == "earliest" else OffsetSpec.LATEST

    def _list(self, partitions: Sequence[Partition], spec: OffsetSpec) -> dict[Partition, int]:
        answer = self._admin.list_partition_offsets(
            {TopicPartition(t, p): spec for t, p in partitions},
            isolation_level=self._isolation,
            timeout_ms=self._timeout_ms,
        )
        return {(tp.topic, tp.partition): int(o.offset) for tp, o in answer.items()}

    def end_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        return self._list(partitions, OffsetSpec.LATEST)

    def start_offsets(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        """The group's committed offset, or, where it has none, where its reset policy starts."""
        tps = [TopicPartition(t, p) for t, p in partitions]
        answer = self._admin.list_group_offsets({self._group: tps}).get(self._group, {})
        starts = {
            (tp.topic, tp.partition): int(o.offset) for tp, o in answer.items() if o.offset >= 0
        }
        never = [p for p in partitions if p not in starts]
        if never:
            starts.update(self._list(never, self._reset))
        return starts

    def close(self) -> None:
        self._admin.close()
