"""Fixtures every test folder can use: a throwaway PostgreSQL database and the embedded
Kafka-compatible broker.

PostgreSQL is the server at 127.0.0.1:5432 (override with LATENTWATCH_TEST_POSTGRES_URL). The
session gets a throwaway database, dropped at the end. If the server is unreachable the
PostgreSQL tests fail (never skip): deselect them explicitly with ``-m "not postgres"``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cancer_model import Model, train_model
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from latentwatch.embedded import EmbeddedBroker
from storage.database import redact, throwaway_databases

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh database on the test server, created for this test session."""
    admin_url = os.environ.get("LATENTWATCH_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    admin = create_engine(
        admin_url,
        isolation_level="AUTOCOMMIT",  # CREATE/DROP DATABASE cannot run in a transaction
        poolclass=NullPool,
        connect_args={"connect_timeout": 5},
    )
    name = f"lw_test_{uuid.uuid4().hex[:12]}"
    unreachable = ""
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except OperationalError as exc:
        unreachable = str(exc.orig)
    if unreachable:  # outside the except block: the message alone, without a chained traceback
        pytest.fail(
            f"PostgreSQL is not reachable at {redact(admin_url)}: {unreachable}\n"
            "Start it (docs/storage.md), or set LATENTWATCH_TEST_POSTGRES_URL to a server where "
            "this user may CREATE DATABASE, or deselect these tests with -m 'not postgres'.",
            pytrace=False,
        )
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One embedded broker (Tansu, in memory) on a free loopback port for the session. Tests
    use topics of their own; a test that restarts the broker starts its own instead."""
    log = Path(tmp_path_factory.mktemp("broker")) / "tansu.log"
    with EmbeddedBroker(log_path=log) as running:
        yield running


@pytest.fixture(scope="session")
def new_postgres_database(postgres_url: str) -> Iterator[Callable[[str], str]]:
    """A factory of throwaway PostgreSQL databases, migrated to the newest schema (production
    PostgreSQL is migrated by `latentwatch db upgrade`, not on start); all dropped at the end."""
    with throwaway_databases(postgres_url) as new:
        yield new


@pytest.fixture(scope="session")
def cancer_model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    """A detector trained on real data, saved to disk, with records to stream at it."""
    return train_model(tmp_path_factory.mktemp("cancer-model"))
