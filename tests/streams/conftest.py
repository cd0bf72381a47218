"""Fixtures for the stream tests: the session's model trained on real data (tests/conftest.py:
``cancer_model``), database URLs for both engines, and a fresh topic name per test."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.cancer_model import Model


@pytest.fixture(scope="session")
def model(cancer_model: Model) -> Model:
    return cancer_model


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each engine: SQLite without a schema (the consumer migrates it),
    PostgreSQL migrated (as `latentwatch db upgrade` does in production)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'latentwatch.db'}"
    new_database: Callable[[str], str] = request.getfixturevalue("new_postgres_database")
    return new_database("lw_stream")


@pytest.fixture
def topic() -> str:
    return f"records-{uuid.uuid4().hex[:8]}"
