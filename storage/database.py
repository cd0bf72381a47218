"""Engines, sessions and schema migrations. Nothing here runs at import: the CLI builds one engine
from ``--db URL`` and passes it (or a session factory) to whatever needs the database."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Dialect, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from common.errors import LatentwatchError
from storage.settings import NO_TIMEOUTS, Timeouts

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
ACCEPTED_URLS = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, "
    "postgresql+psycopg://user:password@host:5432/database"
)
# A writer waits this long for another writer's lock, then fails; the consumer retries the
# batch with backoff, so a short wait keeps its retry and shutdown responsive.
SQLITE_BUSY_TIMEOUT_MS = 5_000
# Execution option: start the SQLite transaction with BEGIN IMMEDIATE (take the write lock up
# front) for transactions that read before they write, such as migrations.
SQLITE_IMMEDIATE = "latentwatch_sqlite_immediate"


class DatabaseUrlError(LatentwatchError, ValueError):
    """A --db URL that is malformed or names an unsupported database."""


class DatabaseFileError(LatentwatchError):
    """A SQLite URL names a file that is not a SQLite database (or a damaged one)."""


class SchemaVersionError(LatentwatchError):
    """The database schema is not the one this version of latentwatch expects."""


def make_engine(url: str, timeouts: Timeouts = NO_TIMEOUTS) -> Engine:
    """An engine for a SQLite file or a PostgreSQL server, with the per-connection settings
    each needs. ``postgresql://`` is taken to mean the psycopg 3 driver. A URL's own
    settings win over ``timeouts`` (``?options=-c statement_timeout=60000``)."""
    parsed = _parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    connect_args = {k: v for k, v in _POSTGRES_CONNECT.items() if k not in parsed.query}
    given = parsed.query.get("options", ())
    theirs = [given] if isinstance(given, str) else list(given)
    options = " ".join(filter(None, [timeouts.postgres_options(), *theirs]))
    if options:  # the URL's come last: for a setting given twice, the last one counts
        connect_args["options"] = options
    return create_engine(
        parsed,
        pool_pre_ping=True,
        connect_args=connect_args,
        json_serializer=_write_json,
        json_deserializer=orjson.loads,
    )


# libpq settings (a URL's own ?name=value wins): a server that stops answering, or a network
# path that drops packets, fails a connection attempt or an idle connection within seconds, so
# the consumer logs it and retries, instead of hanging in a write that no signal can end.
_POSTGRES_CONNECT: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay readable after commit (they are handed to the API layer)."""
    return sessionmaker(engine, expire_on_commit=False)


class JSONText(str):
    """JSON that :func:`dumps_json` wrote (and checked): bound to a JSON/JSONB column, the
    engine's serializer passes it through instead of encoding the value a second time."""

    __slots__ = ()


def dumps_json(value: Any) -> JSONText:
    """JSON for the JSON/JSONB columns, exactly as the engine will write it (orjson), refusing
    what PostgreSQL refuses: NaN and infinity (which orjson would quietly write as null),
    integers beyond 64 bits, non-string keys, unpaired surrogates. Read-only mappings
    (``MappingProxyType``) are accepted. Raises TypeError or ValueError."""
    text = orjson.dumps(value, default=_json_default)  # JSONEncodeError is a TypeError
    if b"null" in text:  # a None, or a NaN written as null: the strict encoder tells which
        json.dumps(value, allow_nan=False, default=_json_default)
    return JSONText(text.decode())


def _write_json(value: Any) -> str:
    """The engine's JSON serializer: orjson, much faster than json.dumps. Records
    reach the engine through write_flagged, which binds the :class:`JSONText` its checks
    wrote (passed through here); anything else is encoded."""
    if type(value) is JSONText:
        return value
    return orjson.dumps(value, default=_json_default).decode()


def _json_default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable: {value!r:.80}")


def redact(url: str | URL) -> str:
    """The URL with its password replaced by ``***``, for messages and logs."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _parse_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUrlError(
            f"cannot parse database URL {redact(url)!r}: use one of {ACCEPTED_URLS}"
        ) from None
    driver = parsed.drivername
    if driver in ("postgresql", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if driver in ("sqlite", "sqlite+pysqlite"):
        return parsed
    raise DatabaseUrlError(
        f"unsupported database URL {redact(parsed)!r} (driver {driver!r}): "
        f"use one of {ACCEPTED_URLS}"
    )


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ":memory:"
    if database == ":memory:":
        # One shared connection, or every pooled connection would see its own empty database.
        engine = create_engine(
            url,
            poolclass=StaticPool,
            connect_args={"check_same_thread": False},
            json_serializer=_write_json,
            json_deserializer=orjson.loads,
        )
    else:
        if not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, json_serializer=_write_json, json_deserializer=orjson.loads)

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Dialect, _record: ConnectionPoolEntry, cargs: Any, cparams: Any) -> Any:
        # sqlite3 says "unable to open database file" without saying which: name it (still
        # an OperationalError, so the consumer keeps retrying a file that may appear).
        try:
            return dialect.loaded_dbapi.connect(*cargs, **cparams)
        except sqlite3.OperationalError as exc:
            raise sqlite3.OperationalError(f"{exc}: {database}") from exc

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy emit BEGIN itself (below): the sqlite3 module's legacy mode would
        # autocommit DDL, so a failed migration could leave half a schema behind.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # WAL: API readers do not block the consumer's writes, nor the other way round.
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
            except sqlite3.DatabaseError as exc:
                if type(exc) is not sqlite3.DatabaseError:  # locked, I/O error: retried
                    raise
                # "file is not a database", "database disk image is malformed": no retry helps
                raise DatabaseFileError(
                    f"{database} is not a SQLite database, or a damaged one ({exc})"
                ) from exc
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            # Off by default in SQLite; needed for ON DELETE CASCADE (feedback on prune).
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(SQLITE_IMMEDIATE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def migration_config(connection: Connection | None = None) -> Config:
    """Alembic configuration built in code (no alembic.ini): the scripts live in the package.
    With ``connection``, migrations run on it, inside its transaction."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(url_or_engine: str | Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision``, in one transaction (what ``latentwatch db
    upgrade --db URL`` runs)."""
    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        with engine.connect() as connection:
            # Two processes starting on one SQLite file: the second waits instead of failing.
            connection.execution_options(**{SQLITE_IMMEDIATE: True})
            with connection.begin():
                command.upgrade(migration_config(connection), revision)
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()


def head_revision() -> str:
    """The newest migration this version of latentwatch ships."""
    head = _scripts().get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise SchemaVersionError(f"no migrations found in {MIGRATIONS_DIR}: reinstall latentwatch")
    return head


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(migration_config())


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at, or None for a database never migrated."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def ensure_schema(engine: Engine, auto_upgrade: bool | None = None) -> None:
    """Make sure the schema is the one this code expects before using the database.

    ``auto_upgrade`` defaults to True for SQLite (a local file the process owns) and False for
    PostgreSQL, where schema changes are an operator's decision (``latentwatch db upgrade``).
    """
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return
    known = {script.revision for script in _scripts().walk_revisions()}
    if current is not None and current not in known:
        raise SchemaVersionError(
            f"database {redact(engine.url)} is at schema revision {current!r}, which this "
            f"version of latentwatch does not know (newest: {head!r}): upgrade latentwatch"
        )
    if auto_upgrade is None:
        auto_upgrade = engine.dialect.name == "sqlite"
    if not auto_upgrade:
        state = "empty (no schema)" if current is None else f"at schema revision {current!r}"
        raise SchemaVersionError(
            f"database {redact(engine.url)} is {state}, latentwatch needs revision {head!r}: "
            f"run `latentwatch db upgrade --db URL` with this database's URL"
        )
    upgrade(engine)
