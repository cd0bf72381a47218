"""Fixtures for the storage tests: every database test runs on SQLite and on PostgreSQL.

PostgreSQL is the server at 127.0.0.1:5432 (override with LATENTWATCH_TEST_POSTGRES_URL). The
session gets a throwaway database, dropped at the end. If the server is unreachable the
PostgreSQL tests fail (never skip): deselect them explicitly with ``-m "not postgres"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from storage.database import make_engine, session_factory, upgrade
from storage.records import FlaggedRecord, ModelVersion
from tests.support.flagged_records import make_record


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


@pytest.fixture
def record() -> Callable[..., FlaggedRecord]:
    return make_record


MODEL = ModelVersion("3f9a1c2b7d10", {"format": 1, "features": ["amount", "country"]})


@pytest.fixture
def model() -> ModelVersion:
    return MODEL
