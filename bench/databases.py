"""Throwaway PostgreSQL databases for the benchmarks (the tests have their own, in
tests/support/postgres.py): ``new(prefix)`` creates and migrates one; all are dropped on exit."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from storage.database import upgrade


@contextmanager
def throwaway_databases(server_url: str) -> Iterator[Callable[[str], str]]:
    # CREATE/DROP DATABASE cannot run in a transaction
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    created: list[str] = []

    def new(prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        created.append(name)
        url = admin.url.set(database=name).render_as_string(hide_password=False)
        upgrade(url)
        return url

    try:
        yield new
    finally:
        with admin.connect() as connection:
            for name in created:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
