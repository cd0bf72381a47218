"""Fixtures for the storage tests: every database test runs on SQLite and on PostgreSQL.

PostgreSQL is the server at 127.0.0.1:5432 (override with LATENTWATCH_TEST_POSTGRES_URL). The
session gets a throwaway database, dropped at the end. If the server is unreachable the
PostgreSQL tests fail (never skip): deselect them explicitly with ``-m "not postgres"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from storage.database import make_engine, session_factory, upgrade
from storage.records import FlaggedRecord, ModelVersion

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    """An engine on an empty database (no schema), SQLite file or PostgreSQL."""
    if request.param == "sqlite":
        # A folder that does not exist yet: make_engine creates it.
        engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'latentwatch.db'}")
    else:
        engine = make_engine(request.getfixturevalue("postgres_url"))
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP SCHEMA public CASCADE")
            connection.exec_driver_sql("CREATE SCHEMA public")
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    """A session factory on a database migrated to the newest schema."""
    upgrade(engine)
    return session_factory(engine)


def make_record(offset: int, **changes: Any) -> FlaggedRecord:
    """A plausible flagged record; keyword arguments replace fields."""
    fields: dict[str, Any] = {
        "topic": "payments",
        "partition": 0,
        "offset": offset,
        "kafka_timestamp": 1_793_000_000_000 + offset,
        "key": f"customer-{offset % 7}",
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


@pytest.fixture
def record() -> Callable[..., FlaggedRecord]:
    return make_record


MODEL = ModelVersion("3f9a1c2b7d10", {"format": 1, "features": ["amount", "country"]})


@pytest.fixture
def model() -> ModelVersion:
    return MODEL
