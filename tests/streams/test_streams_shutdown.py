"""SIGTERM is honoured within the stated bound whatever the database is doing: a real
`latentwatch consume` process whose write waits on a PostgreSQL table lock stops in seconds,
without committing the batch it could not write (the group will redeliver it)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

import latentwatch.service
from latentwatch.embedded import EmbeddedBroker
from latentwatch.service import stop_on_signals
from latentwatch.settings import SHUTDOWN_TIMEOUT_S
from streams.kafka import ensure_topics
from tests.support.cancer_model import Model
from tests.support.stream_harness import (
    committed_offsets,
    encode,
    process_consumer,
    produce,
    settings,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]


def waiting_on_locks(engine: Engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(
            text(
                "SELECT count(*) FROM pg_locks "
                "WHERE NOT granted AND relation = 'flagged_records'::regclass"
            )
        )


def test_sigterm_while_a_write_waits_on_a_table_lock(
    model: Model, broker: EmbeddedBroker, topic: str, new_postgres_database: object, tmp_path: Path
) -> None:
    db = new_postgres_database("lw_lock")  # type: ignore[operator]
    ensure_topics(broker.bootstrap, [topic], partitions=1)
    s = settings(model.path, broker.bootstrap, topic, db, group=f"g-{topic}")
    log = tmp_path / "consumer.log"
    proc = process_consumer(s, log)
    engine = create_engine(db, poolclass=NullPool)
    holder = engine.connect()
    try:
        wait_until(lambda: "partitions assigned" in log.read_text(), 60, f"a join (log: {log})")
        holder.exec_driver_sql("LOCK TABLE flagged_records IN ACCESS EXCLUSIVE MODE")
        records = [dict(r, id=f"locked-{i}") for i, r in enumerate(model.anomalous[:20])]
        produce(broker.bootstrap, topic, encode(records))
        wait_until(lambda: waiting_on_locks(engine) > 0, 30, "the consumer's write to wait")
        proc.send_signal(signal.SIGTERM)
        proc.wait(SHUTDOWN_TIMEOUT_S + 5)  # the bound, and room for a busy machine
        text_ = log.read_text()
        # nothing was written, so nothing was committed
        assert committed_offsets(broker.bootstrap, s.kafka.group, topic).get(0, 0) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        holder.rollback()
        holder.close()
        engine.dispose()
    assert proc.returncode == 0, text_[-3000:]
    assert "received SIGTERM" in text_
    assert "lock timeout" in text_  # the wait was cut short and said so


def test_a_shutdown_that_does_not_finish_in_time_is_forced(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The bound holds when the graceful path cannot: ``timeout_s`` after SIGTERM (or at a
    second signal) the process exits at once (here the exit is recorded instead)."""
    exits: list[str] = []
    monkeypatch.setattr(latentwatch.service, "_exit_now", exits.append)
    stop = threading.Event()
    with caplog.at_level(logging.INFO), stop_on_signals(stop, timeout_s=0.3):
        os.kill(os.getpid(), signal.SIGTERM)
        wait_until(lambda: bool(exits), 5, "the forced exit", interval_s=0.01)
        assert stop.is_set() and exits == ["still not stopped 0 s after SIGTERM"]
        os.kill(os.getpid(), signal.SIGINT)
        wait_until(lambda: len(exits) == 2, 5, "the second signal", interval_s=0.01)
    assert exits[1] == "received SIGINT again"
    assert "received SIGTERM: finishing the current batch (at most 0 s)" in caplog.text
