"""Backfill runs: a named re-scoring of a topic's time range by one model. Each batch's rows,
counts and the partitions' next offsets are saved in one transaction, so a run killed at any
point resumes where its last batch was saved, and stores and counts nothing twice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from common.errors import LatentwatchError
from storage.models import BackfillRunRow
from storage.records import ModelScore, RunCount
from storage.repository import add_run_counts, add_scores

DONE = -1  # a partition's position once it is read to the end of the range


class BackfillError(LatentwatchError):
    """A run name reused for another model, topic or time range."""


@dataclass(frozen=True)
class BackfillRun:
    name: str
    model_version: str
    topic: str
    time_from: datetime
    time_to: datetime  # the end of the range: given, or the time the run started
    positions: dict[int, int]  # partition -> next offset to read, or DONE
    finished_at: datetime | None = None


def _run(row: BackfillRunRow) -> BackfillRun:
    return BackfillRun(
        row.name,
        row.model_version,
        row.topic,
        row.time_from,
        row.time_to or row.started_at,
        {int(p): int(o) for p, o in row.positions.items()},
        row.finished_at,
    )


def start_or_resume(
    sessions: sessionmaker[Session], run: BackfillRun, now: datetime
) -> BackfillRun:
    """The stored run of that name (to resume, with its stored range: a range given as an age,
    ``--from 24h``, moves between two invocations), or ``run`` stored as new. A stored run of
    another model or topic is refused: a name means one backfill."""
    with sessions() as session, session.begin():
        row = session.get(BackfillRunRow, run.name)
        if row is None:
            session.add(
                BackfillRunRow(
                    name=run.name,
                    model_version=run.model_version,
                    topic=run.topic,
                    time_from=run.time_from,
                    time_to=run.time_to,
                    ends={},
                    positions={str(p): o for p, o in run.positions.items()},
                    started_at=now,
                    finished_at=None,
                )
            )
            return run
        stored = _run(row)
    if (stored.model_version, stored.topic) != (run.model_version, run.topic):
        raise BackfillError(
            f"backfill run {run.name!r} exists for model {stored.model_version}, topic "
            f"{stored.topic}, from {stored.time_from.isoformat()}: choose another --name"
        )
    return stored


def save_batch(
    sessions: sessionmaker[Session],
    name: str,
    scores: Sequence[ModelScore],
    counts: Sequence[RunCount],
    positions: Mapping[int, int],
    *,
    finished_at: datetime | None = None,
) -> None:
    """A batch's rows and counts with the positions after it, in one transaction."""
    with sessions() as session, session.begin():
        row = session.get(BackfillRunRow, name, with_for_update=True)
        if row is None:
            raise BackfillError(f"backfill run {name!r} is not stored")
        if scores:
            add_scores(session, scores)
        counted = [c for c in counts if c.scored]
        if counted:
            add_run_counts(session, counted)
        row.positions = {**row.positions, **{str(p): o for p, o in positions.items()}}
        if finished_at is not None:
            row.finished_at = finished_at
