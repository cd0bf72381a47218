"""Engine set-up and migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from storage.database import (
    SQLITE_BUSY_TIMEOUT_MS,
    DatabaseUrlError,
    SchemaVersionError,
    current_revision,
    ensure_schema,
    head_revision,
    make_engine,
    migration_config,
    upgrade,
)
from storage.models import Base
from storage.settings import Timeouts

FLAGGED_INDEXES = {
    "ix_flagged_records_scored_time_id": ["scored_time", "id"],
    "ix_flagged_records_score_id": ["score", "id"],
    "ix_flagged_records_event_time": ["event_time"],
    "ix_flagged_records_severity_scored_time": ["severity", "scored_time"],
    "ix_flagged_records_topic_scored_time_id": ["topic", "scored_time", "id"],
    "ix_flagged_records_model_version_scored_time_id": ["model_version", "scored_time", "id"],
    "ix_flagged_records_cluster_scored_time_id": ["cluster", "scored_time", "id"],
    "ix_flagged_records_top_feature_scored_time_id": ["top_feature", "scored_time", "id"],
}


def test_upgrade_creates_tables_constraints_and_indexes(engine: Engine) -> None:
    assert current_revision(engine) is None
    upgrade(engine)

    schema = inspect(engine)
    assert set(schema.get_table_names()) == {
        "alembic_version",
        "flagged_records",
        "model_versions",
        "feedback",
        "stream_counts",
        "registered_models",
        "model_events",
        "model_scores",
        "run_counts",
        "backfill_runs",
    }
    unique = schema.get_unique_constraints("flagged_records")
    assert [u["column_names"] for u in unique] == [
        ["topic", "kafka_partition", "kafka_offset", "kafka_timestamp"]
    ]
    indexes = {
        ix["name"]: ix["column_names"]
        for ix in schema.get_indexes("flagged_records")
        if not ix.get("duplicates_constraint")  # PostgreSQL lists the unique constraint too
    }
    assert indexes == FLAGGED_INDEXES
    assert schema.get_pk_constraint("model_versions")["constrained_columns"] == ["version"]
    (foreign_key,) = schema.get_foreign_keys("feedback")
    assert foreign_key["referred_table"] == "flagged_records"
    assert foreign_key["options"].get("ondelete") == "CASCADE"
    assert [c["name"] for c in schema.get_check_constraints("feedback")] == ["ck_feedback_label"]
    assert {ix["name"] for ix in schema.get_indexes("feedback")} == {
        "ix_feedback_flagged_id_created_at"
    }
    assert schema.get_pk_constraint("stream_counts")["constrained_columns"] == ["topic", "minute"]
    assert {ix["name"] for ix in schema.get_indexes("stream_counts")} == {"ix_stream_counts_minute"}
    assert current_revision(engine) == head_revision()


def test_models_agree_with_migrations(engine: Engine) -> None:
    upgrade(engine)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_downgrade_removes_everything_and_upgrade_restores_it(engine: Engine) -> None:
    upgrade(engine)
    with engine.begin() as connection:
        command.downgrade(migration_config(connection), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    assert current_revision(engine) is None

    upgrade(engine)
    assert current_revision(engine) == head_revision()


def test_upgrade_accepts_a_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'by-url.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_ensure_schema_upgrades_an_empty_database_when_allowed(engine: Engine) -> None:
    ensure_schema(engine, auto_upgrade=True)
    assert current_revision(engine) == head_revision()
    ensure_schema(engine, auto_upgrade=False)  # at head: nothing to do, no error


def test_ensure_schema_refuses_to_upgrade_when_not_allowed(engine: Engine) -> None:
    with pytest.raises(SchemaVersionError) as error:
        ensure_schema(engine, auto_upgrade=False)
    message = str(error.value)
    assert "empty (no schema)" in message
    assert "latentwatch db upgrade --db" in message
    assert current_revision(engine) is None


def test_ensure_schema_auto_upgrades_sqlite_but_not_postgresql_by_default(engine: Engine) -> None:
    if engine.dialect.name == "sqlite":
        ensure_schema(engine)
        assert current_revision(engine) == head_revision()
    else:
        with pytest.raises(SchemaVersionError, match="latentwatch db upgrade"):
            ensure_schema(engine)


def test_ensure_schema_rejects_a_newer_schema(engine: Engine) -> None:
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaVersionError, match="'9999', which this version of latentwatch"):
        ensure_schema(engine, auto_upgrade=True)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("not a url", "'not a url'"),
        ("mysql://admin:hunter2@db.example/lw", "mysql://admin:***@db.example/lw"),
        ("postgresql+psycopg2://admin:hunter2@db/lw", "postgresql+psycopg2://admin:***@db/lw"),
    ],
)
def test_make_engine_names_the_bad_url_and_the_accepted_forms(url: str, shown: str) -> None:
    with pytest.raises(DatabaseUrlError) as error:
        make_engine(url)
    message = str(error.value)
    assert shown in message
    assert "hunter2" not in message
    assert "sqlite:///" in message
    assert "postgresql+psycopg://" in message


def test_make_engine_sets_up_sqlite_files(tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "lw.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            pragma = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "foreign_keys", "busy_timeout")
            }
    finally:
        engine.dispose()
    assert path.exists()
    assert pragma == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "busy_timeout": SQLITE_BUSY_TIMEOUT_MS,
    }


@pytest.mark.postgres
def test_postgresql_connections_time_out_and_keep_alive(postgres_url: str) -> None:
    """A server or network path that stops answering fails within seconds (then the consumer
    retries) instead of hanging a write; the URL's own settings win."""
    engine = make_engine(postgres_url + "?connect_timeout=5")
    try:
        with engine.connect() as connection:
            dbapi = connection.connection.dbapi_connection
            assert dbapi is not None
            parameters = dbapi.info.get_parameters()
    finally:
        engine.dispose()
    assert parameters["connect_timeout"] == "5"
    assert parameters["keepalives"] == "1"
    assert parameters["keepalives_idle"] == "30"


def test_sqlite_ddl_is_transactional(tmp_path: Path) -> None:
    # The sqlite3 module would autocommit CREATE TABLE; a failed migration must leave nothing.
    engine = make_engine(f"sqlite:///{tmp_path / 'ddl.db'}")
    try:
        with pytest.raises(RuntimeError), engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE half_done (x INTEGER)")
            raise RuntimeError("migration failed half-way")
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_make_engine_uses_psycopg_for_plain_postgresql_urls() -> None:
    engine = make_engine("postgresql://lw:secret@db.example:5432/lw")  # does not connect
    assert engine.dialect.driver == "psycopg"
    assert engine.pool._pre_ping


def test_in_memory_sqlite_is_one_shared_database() -> None:
    # Each pooled connection to ":memory:" would otherwise be a different, empty database.
    engine = make_engine("sqlite://")
    try:
        upgrade(engine)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgresql_statements_and_lock_waits_are_limited_when_asked(postgres_url: str) -> None:
    """The consumer's engine: a statement or a lock wait beyond its limit fails (and is
    retried) instead of holding a write, and a shutdown, for as long as the database does;
    a URL's own options win. Without limits (migrations), none apply."""

    def settings(engine: Engine) -> tuple[str, str]:
        try:
            with engine.connect() as connection:
                row = connection.execute(
                    text(
                        "SELECT current_setting('statement_timeout'), "
                        "current_setting('lock_timeout')"
                    )
                ).one()
        finally:
            engine.dispose()
        return row[0], row[1]

    limits = Timeouts(statement_s=10.0, lock_s=2.5)
    assert settings(make_engine(postgres_url, limits)) == ("10s", "2500ms")
    url = postgres_url + "?options=-c%20lock_timeout%3D7000"
    assert settings(make_engine(url, limits)) == ("10s", "7s")
    assert settings(make_engine(postgres_url)) == ("0", "0")
