"""A plausible flagged record, for the tests that store records (storage, the database sink, the
db commands), and what a test reads back: how many are stored, which model versions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from storage.models import FlaggedRecordRow, ModelVersionRow
from storage.records import FlaggedRecord

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def make_record(offset: int, **changes: Any) -> FlaggedRecord:
    """A plausible flagged record; keyword arguments replace fields."""
    fields: dict[str, Any] = {
        "topic": "payments",
        "partition": 0,
        "offset": offset,
        "kafka_timestamp": 1_793_000_000_000 + offset,
        "key": f"customer-{offset % 7}".encode(),
        "record_id": f"tx-{offset}",
        "event_time": T0,
        "scored_time": T0,
        "model_version": "3f9a1c2b7d10",
        "score": 17.5 + offset,
        "severity": 97.25,
        "p_value": 0.0004,
        "density": 12.0,
        "density_p_value": 0.001,
        "reconstruction": 5.5,
        "reconstruction_p_value": 0.02,
        "cluster": offset % 3,
        "cluster_distance": 4.75,
        "top_feature": "amount",
        "explanation": {
            "features": [
                {"name": "amount", "actual": 9100.0, "expected": 42.0, "contribution": 3.9}
            ],
            "latent": [0.1, -2.3],
            "latent_2d": [0.5, 1.5],
        },
        "record": {"id": f"tx-{offset}", "amount": 9100.0, "country": "NZ"},
    }
    fields.update(changes)
    return FlaggedRecord(**fields)


def count_flagged(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(FlaggedRecordRow)) or 0


def stored_model_versions(sessions: sessionmaker[Session]) -> list[ModelVersionRow]:
    """Every model version that has written to this database, oldest first."""
    with sessions() as session:
        order = (ModelVersionRow.first_seen, ModelVersionRow.version)
        return list(session.scalars(select(ModelVersionRow).order_by(*order)))
