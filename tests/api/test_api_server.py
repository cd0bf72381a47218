"""Serving: serve_in_thread (what the demo uses) on a real socket, and run_api's schema check
before it serves anything."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from api.server import run_api, serve_in_thread
from storage.database import SchemaVersionError


def test_serve_in_thread_migrates_sqlite_serves_and_stops(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'latentwatch.db'}"  # no file, no schema yet
    with serve_in_thread(url, token="t0ken") as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
        assert httpx.get(f"{server.url}/ready").status_code == 401
        ready = httpx.get(f"{server.url}/ready", headers={"Authorization": "Bearer t0ken"})
        assert ready.status_code == 200, ready.text
        port = int(server.url.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # nothing listens any more


def test_serve_in_thread_takes_an_empty_token_as_none(tmp_path: Path) -> None:
    # "" is what an exported but empty LATENTWATCH_API_TOKEN gives: no token, not a blank one
    with serve_in_thread(f"sqlite:///{tmp_path / 'lw.db'}", token="") as server:
        assert httpx.get(f"{server.url}/api/flagged").status_code == 200


@pytest.mark.postgres
def test_run_api_refuses_an_unmigrated_postgresql_database(postgres_url: str) -> None:
    name = f"lw_api_empty_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        with pytest.raises(SchemaVersionError, match="latentwatch db upgrade"):
            run_api(url, port=0)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
