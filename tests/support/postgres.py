"""Throwaway PostgreSQL databases for the tests: the one way the suite creates and drops them.

The server is 127.0.0.1:5432 (override with LATENTWATCH_TEST_POSTGRES_URL); its user must be
allowed to CREATE DATABASE. CREATE/DROP DATABASE cannot run in a transaction, hence AUTOCOMMIT.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, make_url
from sqlalchemy.pool import NullPool

from storage.database import upgrade

DEFAULT_SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def server_url() -> str:
    """The test server's URL, with psycopg (3) as the driver of a plain postgresql:// URL."""
    url = make_url(os.environ.get("LATENTWATCH_TEST_POSTGRES_URL", DEFAULT_SERVER_URL))
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


@contextmanager
def throwaway_databases(url: str) -> Iterator[Callable[..., str]]:
    """A factory of new databases on the server of ``url``: ``new(prefix)`` creates one named
    ``<prefix>_<random>``, migrates it as `latentwatch db upgrade` would (unless
    ``migrate=False``) and returns its URL. All are dropped on exit."""
    admin = create_engine(
        url, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"connect_timeout": 5}
    )
    created: list[str] = []

    def new(prefix: str, *, migrate: bool = True) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        created.append(name)
        database_url = admin.url.set(database=name).render_as_string(hide_password=False)
        if migrate:
            upgrade(database_url)
        return database_url

    try:
        yield new
    finally:
        if created:
            with admin.connect() as connection:
                for name in created:
                    connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
