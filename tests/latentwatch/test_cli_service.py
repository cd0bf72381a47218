"""The service commands through a real subprocess: the demo (the README's main command), replay,
consume's one-line errors, db upgrade/prune, evaluate."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from latentwatch.embedded import EmbeddedBroker
from storage.database import make_engine, session_factory, upgrade
from storage.records import StreamCount
from storage.repository import add_feedback, write_flagged
from tests.support.flagged_records import make_record


def run(*args: str | Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "latentwatch", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.kafka
@pytest.mark.slow
def test_demo_runs_the_whole_path_and_prints_a_summary(tmp_path: Path) -> None:
    proc = run("demo", "--workdir", tmp_path, "--repeat", "2", "--rate", "2000")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for line in (
        "embedded broker (Tansu) at 127.0.0.1:",
        "metrics: http://127.0.0.1:",
        "explorer + API: http://127.0.0.1:",
    ):
        assert line in out
    numbers = {m[0].strip(): m[1] for m in re.findall(r"│ ([^│]+?)\s+│\s+([^│]+?) │", out)}
    sent = int(numbers["messages sent"].replace(",", ""))
    assert int(numbers["consumed"].replace(",", "")) == sent
    assert int(numbers["rejected (dead-lettered)"]) == 5
    assert float(numbers["recall vs injected truth"]) > 0.3
    stored = (
        sqlite3.connect(tmp_path / "latentwatch.db")
        .execute("SELECT count(*) FROM flagged_records")
        .fetchone()[0]
    )
    assert stored == int(numbers["flagged (stored in SQLite)"])
    assert (tmp_path / "model" / "manifest.json").exists()


def _processes_mentioning(text: str) -> list[int]:
    """Pids of the processes whose command line contains ``text`` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return pids


@pytest.mark.kafka
@pytest.mark.slow
def test_demo_stops_everything_it_started_on_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C while the stream runs (broker, consumer, API all up): a prompt exit with 130,
    and the broker process the demo started is gone."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "latentwatch", "demo", "--workdir", str(tmp_path), "--rate", "200"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    port = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            found = re.search(r"embedded broker \(Tansu\) at 127\.0\.0\.1:(\d+)", line)
            port = int(found[1]) if found else port
            if line.startswith("replaying"):  # 1,905 messages at 200/s: ~10 s of stream
                break
        else:
            pytest.fail(f"the demo ended before its stream started: {proc.communicate()[1]}")
        assert port is not None, "the demo never reported its broker"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    leftover = _processes_mentioning(f"tcp://127.0.0.1:{port}")
    for pid in leftover:  # do not leak a broker into the other tests
        os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "latentwatch: interrupted" in stderr.splitlines()
    assert leftover == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.kafka
def test_demo_stops_its_broker_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM (what a service manager or `kill` sends) as soon as the broker is up: the demo
    unwinds like on Ctrl-C, exits with 143, and its broker (in a session of its own, which the
    signal does not reach) is gone, not left listening."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "latentwatch", "demo", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    port = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            found = re.search(r"embedded broker \(Tansu\) at 127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found[1])
                break
        assert port is not None, f"the demo never reported its broker: {proc.communicate()[1]}"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    leftover = _processes_mentioning(f"tcp://127.0.0.1:{port}")
    for pid in leftover:  # do not leak a broker into the other tests
        os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 143, stderr[-3000:]
    assert stderr.splitlines()[-1] == "latentwatch: terminated"
    assert "Traceback" not in stderr
    assert leftover == []


@pytest.mark.kafka
def test_replay_stops_on_ctrl_c(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """Ctrl-C during a paced replay: exit 130 at once with one line, records not yet sent are
    not sent (kafka-python must not take the interrupt for a lost connection, as it did in the
    demo's consumer)."""
    data = tmp_path / "records.jsonl"
    data.write_text("".join(f'{{"id": {i}, "x": {i / 7:.3f}}}\n' for i in range(20_000)))
    topic = "replay-interrupted"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "latentwatch", "replay", "--data", str(data)),
            *("--bootstrap", broker.bootstrap, "--topic", topic, "--rate", "1000"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    consumer = KafkaConsumer(
        topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest"
    )
    try:
        seen = 0
        while seen == 0:  # sending has begun
            seen += sum(len(v) for v in consumer.poll(timeout_ms=500).values())
            assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)  # 20,000 records at 1,000/s would take 20 s
        while batch := consumer.poll(timeout_ms=1500):
            seen += sum(len(v) for v in batch.values())
    finally:
        consumer.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr[-3000:]
    assert stderr.splitlines()[-1] == "latentwatch: interrupted"
    assert "Traceback" not in stderr
    assert 0 < seen < 20_000


@pytest.mark.kafka
def test_replay_sends_every_record_of_a_file(broker: EmbeddedBroker, tmp_path: Path) -> None:
    data = tmp_path / "records.csv"
    data.write_text("id,amount,region\na1,10.5,eu\na2,11.0,us\na3,,eu\n")
    topic = "replay-test"
    proc = run(
        "replay",
        "--data",
        data,
        "--bootstrap",
        broker.bootstrap,
        "--topic",
        topic,
        "--key-field",
        "id",
    )
    assert proc.returncode == 0, proc.stderr
    assert "sent 3 records" in proc.stdout
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    got = {m.key: json.loads(m.value) for m in consumer}
    consumer.close()
    assert got == {
        b"a1": {"id": "a1", "amount": 10.5, "region": "eu"},
        b"a2": {"id": "a2", "amount": 11.0, "region": "us"},
        b"a3": {"id": "a3", "amount": None, "region": "eu"},
    }


@pytest.mark.kafka
def test_replay_reports_records_kafka_refused_and_fails(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    data = tmp_path / "records.csv"
    data.write_text(f"id,note\na1,short\na2,{'x' * 5000}\na3,short\n")
    proc = run(
        "replay",
        "--data",
        data,
        "--bootstrap",
        broker.bootstrap,
        "--topic",
        "replay-refused",
        "--kafka-option",
        "max_request_size=2000",
    )
    assert proc.returncode == 1
    assert "sent 2 records to replay-refused" in proc.stdout and "; 1 failed" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_replay_without_a_broker_is_one_clear_line(tmp_path: Path) -> None:
    data = tmp_path / "records.csv"
    data.write_text("id,amount\na1,10.5\n")
    proc = run("replay", "--data", data, "--bootstrap", "127.0.0.1:1", "--topic", "t")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "latentwatch: error: cannot reach Kafka at 127.0.0.1:1: KafkaTimeoutError: "
        "Unable to bootstrap from ['127.0.0.1:1']"
    ]


def consume_without_a_model(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`consume` with a model directory that does not exist, no broker and a fresh SQLite file."""
    return run(
        "consume",
        "--model",
        tmp_path / "nope",
        "--bootstrap",
        "127.0.0.1:1",
        "--topic",
        "t",
        "--db",
        f"sqlite:///{tmp_path / 'x.db'}",
        *extra,
    )


def test_consume_with_a_bad_model_is_one_clear_line(tmp_path: Path) -> None:
    proc = consume_without_a_model(tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"latentwatch: error: model directory {tmp_path / 'nope'} does not exist"
    )


def test_an_unknown_kafka_setting_is_one_clear_line(tmp_path: Path) -> None:
    proc = consume_without_a_model(
        tmp_path, "--kafka-option", "ssl_ciphers=A,B,max_poll_intervall_ms=9"
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("latentwatch: error: unknown Kafka setting(s) max_poll_intervall_ms:")
    )


def test_consume_settings_come_from_the_environment(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "LATENTWATCH_MODEL": str(tmp_path / "from-env"),
        "LATENTWATCH_BOOTSTRAP": "127.0.0.1:1",
        "LATENTWATCH_TOPICS": "t",
        "LATENTWATCH_DB": f"sqlite:///{tmp_path / 'x.db'}",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "latentwatch", "consume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert f"model directory {tmp_path / 'from-env'} does not exist" in proc.stderr


def test_consume_settings_from_a_config_file_under_env_and_command_line(tmp_path: Path) -> None:
    """`--config` fills what the command line and LATENTWATCH_* leave open, never more."""
    config = tmp_path / "latentwatch.toml"
    config.write_text(
        "[consume]\n"
        f'model = "{tmp_path / "from-file"}"\n'
        'bootstrap = "127.0.0.1:1"\n'
        'topic = "t"\n'
        f'db = "sqlite:///{tmp_path / "x.db"}"\n'
        "max-records = 500\n"
        "[api]\n"
        'db = "nosuch://from-file"\n'
    )

    def model_error(*args: str | Path, env: dict[str, str] | None = None) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "latentwatch", *map(str, args)],
            env={"PATH": "/usr/bin:/bin", **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        return proc.stderr.strip().splitlines()[-1]

    assert model_error("consume", "--config", config).endswith(
        f"model directory {tmp_path / 'from-file'} does not exist"
    )
    env = {"LATENTWATCH_MODEL": str(tmp_path / "from-env")}
    assert model_error("consume", "--config", config, env=env).endswith(
        f"model directory {tmp_path / 'from-env'} does not exist"
    )
    assert model_error(
        "consume", "--config", config, "--model", tmp_path / "from-cli", env=env
    ).endswith(f"model directory {tmp_path / 'from-cli'} does not exist")
    # the same file serves the API from its own table
    assert "unsupported database URL 'nosuch://from-file'" in model_error("api", "--config", config)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[consume]\nmodle = "m"\n', "[consume] has no setting 'modle' (known: bootstrap, db,"),
        ('model = "m"\n', "has no [consume] table"),
        ("[consume\n", "is not valid TOML"),
        (None, "cannot read config file"),
    ],
)
def test_bad_config_file_is_one_clear_line(
    tmp_path: Path, content: str | None, message: str
) -> None:
    config = tmp_path / "latentwatch.toml"
    if content is not None:
        config.write_text(content)
    proc = run("consume", "--config", config)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("latentwatch: error: ")
    assert message in lines[0]


def test_db_commands_take_their_settings_from_a_config_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lw.db'}"
    config = tmp_path / "latentwatch.toml"
    config.write_text(
        f'[db.upgrade]\ndb = "{url}"\n\n[db.prune]\ndb = "{url}"\nolder-than = "7d"\n'
    )
    proc = run("db", "upgrade", "--config", config)
    assert proc.returncode == 0, proc.stderr
    assert "is at schema revision" in proc.stdout
    proc = run("db", "prune", "--config", config)
    assert "older than 7d" in proc.stdout, proc.stderr
    proc = run("db", "prune", "--config", config, "--older-than", "2w")  # the command line wins
    assert "older than 2w" in proc.stdout, proc.stderr
    config.write_text(f'[db.prune]\ndb = "{url}"\nolder_then = "7d"\n')
    proc = run("db", "prune", "--config", config)
    assert proc.returncode == 1
    assert "[db.prune] has no setting 'older_then' (known: db, older-than)" in proc.stderr


def test_db_upgrade_prune_and_evaluate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lw.db'}"
    proc = run("db", "upgrade", "--db", url)
    assert proc.returncode == 0, proc.stderr
    assert "is at schema revision 0005" in proc.stdout

    now = datetime.now(UTC)
    engine = make_engine(url)
    sessions = session_factory(engine)
    upgrade(engine)
    write_flagged(
        sessions,
        [
            make_record(offset, event_time=scored, scored_time=scored)
            for offset, scored in ((1, now - timedelta(days=40)), (2, now), (3, now))
        ],
    )
    with engine.connect() as connection:
        ids = [
            r[0]
            for r in connection.exec_driver_sql(
                "SELECT id FROM flagged_records ORDER BY kafka_offset"
            )
        ]
    add_feedback(sessions, ids[1], "true_alarm")
    add_feedback(sessions, ids[2], "false_alarm", "a known batch job")
    minute = now.replace(second=0, microsecond=0)
    counts = [StreamCount("t", m, 10, 10, 1, 0) for m in (minute - timedelta(days=40), minute)]
    write_flagged(sessions, [], counts=counts)

    proc = run("evaluate", "--db", url)
    assert proc.returncode == 0, proc.stderr
    assert "3 flagged, 2 labelled (1 true alarms, 1 false alarms): precision 0.500" in proc.stdout

    proc = run("db", "prune", "--db", url, "--older-than", "30d")
    assert proc.returncode == 0, proc.stderr
    assert "deleted 1 flagged record(s) older than 30d" in proc.stdout
    with engine.connect() as connection:  # the stream counts of those days went too
        kept = connection.exec_driver_sql("SELECT count(*) FROM stream_counts").scalar()
    engine.dispose()
    assert kept == 1

    proc = run("db", "prune", "--db", url, "--older-than", "soon")
    assert proc.returncode == 1
    assert proc.stderr.startswith("latentwatch: error: ") and "Traceback" not in proc.stderr


UNREACHABLE_POSTGRES = "postgresql+psycopg://u@127.0.0.1:1/x"


@pytest.mark.parametrize(
    ("command", "db", "message"),
    [
        (["db", "upgrade"], UNREACHABLE_POSTGRES, "database unavailable: connection failed"),
        (["db", "prune"], UNREACHABLE_POSTGRES, "database unavailable: connection failed"),
        (["evaluate"], UNREACHABLE_POSTGRES, "database unavailable: connection failed"),
        (["api", "--port", "0"], UNREACHABLE_POSTGRES, "database unavailable: connection failed"),
        (["db", "upgrade"], "sqlite:///{tmp}/taken/lw.db", "{tmp}/taken: File exists"),
        (
            ["evaluate"],
            "sqlite:///{tmp}",
            "database unavailable: unable to open database file: {tmp}",
        ),
        (
            ["db", "prune"],
            "sqlite:///{tmp}/taken",
            "{tmp}/taken is not a SQLite database, or a damaged one (file is not a database)",
        ),
    ],
    ids=[
        "upgrade",
        "prune",
        "evaluate",
        "api",
        "sqlite-folder-blocked",
        "sqlite-is-a-folder",
        "sqlite-not-a-database",
    ],
)
def test_a_database_that_cannot_be_used_is_one_clear_line(
    tmp_path: Path, command: list[str], db: str, message: str
) -> None:
    """Unreachable PostgreSQL; a SQLite file whose folder cannot be created (a file is in the
    way); a SQLite "file" that is a directory; a file that is not a SQLite database. SQLite's
    own messages name no file: these name it."""
    (tmp_path / "taken").write_text("a file")
    proc = run(*command, "--db", db.format(tmp=tmp_path))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("latentwatch: error: ")
    assert message.format(tmp=tmp_path) in lines[0]
