"""Fixtures for the API tests: a migrated, empty database of each engine (a copy of a migrated
SQLite file; a PostgreSQL database migrated once per session and emptied for each test), its
session factory, and an HTTP client on an app built by the factory.

PostgreSQL tests fail (never skip) when the server is unreachable (see tests/conftest.py);
deselect them with -m 'not postgres'.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from api.app import create_app
from api.settings import ApiSettings
from storage.database import make_engine, session_factory, upgrade
from storage.models import Base
from tests.support.api_client import local_client

TABLES = [table.name for table in Base.metadata.sorted_tables]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies (faster than migrating each time)."""
    path = tmp_path_factory.mktemp("template") / "latentwatch.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_api_db(new_postgres_database: Callable[[str], str]) -> str:
    """URL of a migrated PostgreSQL database for the API tests; each test empties it."""
    return new_postgres_database("lw_api")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty database at the newest schema."""
    if request.param == "sqlite":
        path = tmp_path / "latentwatch.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_api_db")
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as connection:  # ids restart too, so runs are alike
        connection.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture
def client(sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    """A client of the app without a token, with small pages so that paging is exercised."""
    settings = ApiSettings(default_page_size=10, max_page_size=500, export_chunk_size=7)
    with local_client(create_app(settings, sessions)) as test_client:
        yield test_client
