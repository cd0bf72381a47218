"""Fixtures every test folder can use: a throwaway PostgreSQL database and the embedded
Kafka-compatible broker.

PostgreSQL is the server at 127.0.0.1:5432 (override with LATENTWATCH_TEST_POSTGRES_URL). The
session's databases are throwaway ones (tests.support.postgres), dropped at the end. If the
server is unreachable the PostgreSQL tests fail (never skip): deselect them explicitly with
``-m "not postgres"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from latentwatch.embedded import EmbeddedBroker
from storage.database import redact
from tests.support.cancer_model import Model, train_model
from tests.support.postgres import server_url, throwaway_databases


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[Callable[..., str]]:
    """The session's factory of throwaway databases (tests.support.postgres); all dropped at
    the end."""
    with throwaway_databases(server_url()) as new:
        yield new


@pytest.fixture(scope="session")
def postgres_url(postgres_databases: Callable[..., str]) -> str:
    """URL of a fresh, empty database on the test server, created for this test session."""
    unreachable = ""
    try:
        return postgres_databases("lw_test", migrate=False)
    except OperationalError as exc:
        unreachable = str(exc.orig)
    # outside the except block: the message alone, without a chained traceback
    pytest.fail(
        f"PostgreSQL is not reachable at {redact(server_url())}: {unreachable}\n"
        "Start it (docs/storage.md), or set LATENTWATCH_TEST_POSTGRES_URL to a server where "
        "this user may CREATE DATABASE, or deselect these tests with -m 'not postgres'.",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One embedded broker (Tansu, in memory) on a free loopback port for the session. Tests
    use topics of their own; a test that restarts the broker starts its own instead."""
    log = Path(tmp_path_factory.mktemp("broker")) / "tansu.log"
    with EmbeddedBroker(log_path=log) as running:
        yield running


@pytest.fixture(scope="session")
def new_postgres_database(
    postgres_url: str, postgres_databases: Callable[..., str]
) -> Callable[[str], str]:
    """A factory of throwaway PostgreSQL databases, migrated to the newest schema (production
    PostgreSQL is migrated by `latentwatch db upgrade`, not on start); all dropped at the end.
    (Depends on postgres_url for its one-line failure when the server is unreachable.)"""
    return postgres_databases


@pytest.fixture(scope="session")
def cancer_model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    """A detector trained on real data, saved to disk, with records to stream at it."""
    return train_model(tmp_path_factory.mktemp("cancer-model"))
