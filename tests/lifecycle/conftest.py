"""Fixtures of the lifecycle tests: the registry's database on SQLite and PostgreSQL, and the
extra model versions (built once per session from the cancer model)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from storage.database import ensure_schema, make_engine, session_factory
from tests.support.cancer_model import Model
from tests.support.lifecycle_models import damaged, other_fields, recalibrated


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: a SQLite file or a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lw.db'}"
    new: Callable[[str], str] = request.getfixturevalue("new_postgres_database")
    return new("lifecycle")


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    ensure_schema(engine, auto_upgrade=True)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def loose_model(cancer_model: Model, tmp_path_factory: pytest.TempPathFactory) -> Model:
    """The cancer model calibrated to a 20 % false-alarm rate: flags far more."""
    return recalibrated(cancer_model, tmp_path_factory.mktemp("loose"), 0.2)


@pytest.fixture(scope="session")
def misfit_model(cancer_model: Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return other_fields(cancer_model, tmp_path_factory.mktemp("misfit"))


@pytest.fixture(scope="session")
def damaged_model(cancer_model: Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return damaged(cancer_model, tmp_path_factory.mktemp("damaged"))
