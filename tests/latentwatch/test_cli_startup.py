"""Start-up errors that cannot fix themselves (nothing listening on the Kafka port, a database
that does not exist, a role the server refuses): one clear line per attempt at a backed-off
rate, kafka-python's own per-connection errors folded into it, and --startup-timeout to give
up with an error (the CLI's one line and exit status 1, as for every LatentwatchError)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from latentwatch.embedded import free_port
from latentwatch.service import StartupTimeoutError, run_consumer
from latentwatch.settings import ConsumeSettings
from streams.settings import KafkaSettings
from tests.support.cancer_model import Model


def test_nothing_listening_on_the_kafka_port(
    cancer_model: Model, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    bootstrap = f"127.0.0.1:{free_port()}"
    settings = ConsumeSettings(
        model=cancer_model.path,
        db=f"sqlite:///{tmp_path / 'x.db'}",
        # an attempt: 1 s, not kafka-python's 5
        kafka=KafkaSettings(bootstrap, topics=("t",), extra={"bootstrap_timeout_ms": 1000}),
        metrics_port=None,
        startup_timeout_s=3.0,
    )
    with pytest.raises(StartupTimeoutError) as error:
        run_consumer(settings)
    message = str(error.value)
    assert message.startswith(f"consumer of t: reaching Kafka at {bootstrap}: gave up after")
    assert "ECONNREFUSED" in message and message.endswith("(--startup-timeout 3 s)")
    shown = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in shown if r.name.startswith("kafka")]  # folded, every one
    assert 1 <= len(shown) <= 3
    for record in shown:
        line = record.getMessage()
        assert f"reaching Kafka at {bootstrap} failed" in line and "ECONNREFUSED" in line
        assert "kafka-python log lines folded" in line and "retrying in" in line


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("change", "cause"),
    [
        (lambda url: url.set(database="lw_no_such_database"), 'database "lw_no_such_database"'),
        (lambda url: url.set(username="lw_no_such_role"), 'role "lw_no_such_role"'),
    ],
    ids=["missing-database", "refused-role"],
)
def test_a_database_that_is_not_there(
    cancer_model: Model,
    postgres_url: str,
    caplog: pytest.LogCaptureFixture,
    change: Callable[..., object],
    cause: str,
) -> None:
    caplog.set_level(logging.INFO)
    db = change(make_url(postgres_url)).render_as_string(hide_password=False)  # type: ignore[attr-defined]
    settings = ConsumeSettings(
        model=cancer_model.path,
        db=db,
        kafka=KafkaSettings("127.0.0.1:1", topics=("t",)),
        metrics_port=None,
        startup_timeout_s=1.5,
    )
    started = time.monotonic()
    with pytest.raises(StartupTimeoutError) as error:
        run_consumer(settings)
    assert time.monotonic() - started < 30
    assert cause in str(error.value) and "(--startup-timeout 1.5 s)" in str(error.value)
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(lines) <= 3
    assert all(cause in r.getMessage() for r in lines)
