"""The database as the consumer's sink for flagged records (adapter over storage/)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from storage.records import FlaggedRecord, ModelScore, ModelVersion, RunCount, StreamCount
from storage.repository import write_flagged
from streams.consumer import Unavailable

# Stream counts wait at most this long for a batch with flagged records to ride along with;
# then they are written on their own (one small transaction per interval, not per batch).
COUNTS_INTERVAL_S = 10.0
# How often a batch also upserts the model version (its manifest, ``last_seen``): re-sending
# and re-checking the manifest (kilobytes) with every batch would be a large share of a write.
MODEL_SEEN_INTERVAL_S = 60.0


class SqlSink:
    """Writes each batch in one transaction. The model version that scored the records is
    upserted at start-up and then with the first batch of every ``model_seen_interval_s``, so its
    ``last_seen`` is at most that much behind, and a deleted row comes back. Stream counts are
    kept until the next write, or written on their own once ``counts_interval_s`` old."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        model_version: str,
        manifest: Mapping[str, Any],
        *,
        model_seen_interval_s: float = MODEL_SEEN_INTERVAL_S,
        counts_interval_s: float = COUNTS_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = session_factory
        self._model = ModelVersion(model_version, manifest)
        self._interval_s = model_seen_interval_s
        self._counts_interval_s = counts_interval_s
        self._clock = clock
        self._model_written_at: float | None = None
        self._counts: list[StreamCount] = []
        self._counts_since: float | None = None
        self._unavailable = False  # the last write failed on the database
        self._scores: list[ModelScore] = []  # the shadow model's rows, with the next write
        self._run_counts: list[RunCount] = []

    def use_model(self, version: str, manifest: Mapping[str, Any]) -> None:
        """The live model changed (between two batches): the next write records the version."""
        self._model = ModelVersion(version, manifest)
        self._model_written_at = None

    def shadow(self, scores: Sequence[ModelScore], counts: Sequence[RunCount]) -> None:
        """The shadow model's rows and counts of a batch, written in the batch's transaction
        (the counts wait like stream counts when there is nothing else to write)."""
        self._scores.extend(scores)
        if counts and self._counts_since is None:
            self._counts_since = self._clock()
        self._run_counts.extend(counts)

    def register_model(self) -> None:
        """Record the model version at start-up, before any record is flagged."""
        self._write_with_model([])

    def count(self, counts: Sequence[StreamCount]) -> None:
        """Counts of a batch, written with the next write (the loop calls this once a batch,
        before ``write``, which it may retry)."""
        if counts and self._counts_since is None:
            self._counts_since = self._clock()
        self._counts.extend(counts)

    def write(self, records: Sequence[FlaggedRecord]) -> int:
        since = self._counts_since
        counts_due = since is not None and self._clock() - since >= self._counts_interval_s
        if not records and not counts_due and not self._scores:
            return 0  # most batches: no round trip at all
        last = self._model_written_at
        if last is None or self._clock() - last >= self._interval_s:
            return self._write_with_model(records)
        return self._write(records, [])

    def flush(self) -> None:
        """Write the counts still waiting (at shutdown), unless the last write failed: a
        shutdown does not wait on a database that is not answering for counts."""
        if (self._counts or self._run_counts) and not self._unavailable:
            self._write([], [])

    def _write_with_model(self, records: Sequence[FlaggedRecord]) -> int:
        written_at = self._clock()
        stored = self._write(records, [self._model])
        self._model_written_at = written_at  # only once the transaction committed
        return stored

    def _write(self, records: Sequence[FlaggedRecord], models: list[ModelVersion]) -> int:
        try:
            stored = write_flagged(
                self._sessions,
                records,
                models,
                counts=self._counts,
                scores=self._scores,
                run_counts=self._run_counts,
            )
            # only once the transaction committed
            self._counts, self._counts_since = [], None
            self._scores, self._run_counts = [], []
            self._unavailable = False
            return stored
        except (SQLAlchemyError, OSError) as exc:
            self._unavailable = True
            raise Unavailable(
                f"database: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            ) from exc
