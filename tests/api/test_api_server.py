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
from api.settings import ApiSettingsError
from storage.database import SchemaVersionError


def test_serve_in_thread_migrates_sqlite_serves_and_stops(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'latentwatch.db'}"  # no file, no schema yet
    with serve_in_thread(url, token="t0ken-0123456789ab") as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
        assert httpx.get(f"{server.url}/ready").status_code == 401
        ready = httpx.get(
            f"{server.url}/ready", headers={"Authorization": "Bearer t0ken-0123456789ab"}
        )
        assert ready.status_code == 200, ready.text
        port = int(server.url.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # nothing listens any more


def test_serve_in_thread_refuses_an_empty_token(tmp_path: Path) -> None:
    # "" is what an unset $TOKEN gives: taken as "no token", it opened the API without one
    for blank in ("", "   "):
        with pytest.raises(ApiSettingsError, match="the API token is empty"):
            serve_in_thread(f"sqlite:///{tmp_path / 'lw.db'}", host="0.0.0.0", token=blank)


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
