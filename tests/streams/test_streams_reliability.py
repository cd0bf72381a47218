"""The stream service against the real (embedded) broker and real databases: crashes,
rebalances, broker restarts, database outages and poison messages lose nothing and store every
flagged record exactly once. Each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest
from sqlalchemy.engine import make_url

import streams.kafka
from latentwatch.embedded import EmbeddedBroker, free_port
from latentwatch.settings import ConsumeSettings
from streams.kafka import ensure_topics
from tests.support.cancer_model import Model
from tests.support.stream_harness import (
    TcpProxy,
    committed_offsets,
    encode,
    process_consumer,
    produce,
    producer,
    read_topic,
    settings,
    stored_explanations,
    stored_rows,
    thread_consumer,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def stream_of(model: Model, n_normal: int, n_anomalous: int, seed: int) -> list[dict[str, object]]:
    """Held-out normal records and injected anomalies, shuffled, each with a unique id."""
    rng = random.Random(seed)
    normal = [
        dict(r, id=f"{r['id']}-{i}") for i, r in enumerate(rng.choices(model.normal, k=n_normal))
    ]
    anomalous = [
        dict(r, id=f"{r['id']}-{i}")
        for i, r in enumerate(rng.choices(model.anomalous, k=n_anomalous))
    ]
    records = normal + anomalous
    rng.shuffle(records)
    return records


def assert_exactly_once(db_url: str, topic: str, expected_ids: set[str]) -> None:
    rows = stored_rows(db_url, topic)
    ids = Counter(str(r["record_id"]) for r in rows)
    duplicates = {i: n for i, n in ids.items() if n > 1}
    assert not duplicates, f"stored more than once: {duplicates}"
    missing, unexpected = expected_ids - set(ids), set(ids) - expected_ids
    assert not missing and not unexpected, f"missing {missing}, unexpected {unexpected}"


def assert_explained_with_nearest_normal(db_url: str, topic: str) -> None:
    """The contract of issue 20: every flagged record carries its nearest normal record (the
    fields to change, the walk's p-values) and fields ordered by attributions adding up to the
    score difference."""
    explanations = stored_explanations(db_url, topic)
    assert explanations
    for why in explanations:
        walk = why["nearest_normal"]
        assert walk["changes"] and walk["path"]
        assert walk["normal_score"] < walk["score"]
        attributed = [f["attribution"] for f in why["features"]]
        assert attributed == sorted(attributed, reverse=True)
        total = sum(c["attribution"] for c in walk["changes"])
        difference = walk["score"] - walk["normal_score"]
        assert total == pytest.approx(difference, rel=1e-6)


def crash_after_progress(
    s: ConsumeSettings,
    log: Path,
    db_url: str,
    topic: str,
    sender: threading.Thread,
    rng: random.Random,
) -> None:
    """Start a consumer process, let it store something (or the stream end), then SIGKILL it
    at a random moment."""
    proc = process_consumer(s, log)
    before = len(stored_rows(db_url, topic))
    try:
        wait_until(
            lambda: (
                len(stored_rows(db_url, topic)) > before
                or not sender.is_alive()
                or proc.poll() is not None
            ),
            30,
            "the consumer to store something",
        )
        assert proc.poll() is None, f"the consumer exited: {log.read_text()[-2000:]}"
        time.sleep(rng.uniform(0.0, 1.0))
    finally:
        proc.kill()
        proc.wait(10)


def test_sigkilled_consumer_loses_and_duplicates_nothing(
    model: Model, broker: EmbeddedBroker, topic: str, db_url: str, tmp_path: Path
) -> None:
    records = stream_of(model, 3000, 150, seed=1)
    expected = model.flagged_ids(records)
    ensure_topics(broker.bootstrap, [topic], partitions=3)
    s = settings(model.path, broker.bootstrap, topic, db_url, group=f"g-{topic}")
    sender = threading.Thread(
        target=produce, args=(broker.bootstrap, topic, encode(records)), kwargs={"rate": 600.0}
    )
    sender.start()
    log = tmp_path / "consumer.log"
    rng = random.Random(7)
    kills = 0
    while sender.is_alive() or kills < 3:
        crash_after_progress(s, log, db_url, topic, sender, rng)
        kills += 1
    sender.join()
    joined_before = log.read_text().count("partitions assigned")
    proc = process_consumer(s, log)
    try:
        # The crashed ones may have stored everything already: wait for this one to be in the
        # group (its signal handlers are in place by then) before judging and stopping it.
        wait_until(
            lambda: log.read_text().count("partitions assigned") > joined_before,
            30,
            f"the last consumer to join the group (log: {log})",
        )
        wait_until(
            lambda: len(stored_rows(db_url, topic)) >= len(expected),
            60,
            f"{len(expected)} flagged records after {kills} crashes (log: {log})",
        )
        time.sleep(1.0)  # a late duplicate would show up here
    finally:
        proc.terminate()
        proc.wait(15)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert_exactly_once(db_url, topic, expected)
    assert_explained_with_nearest_normal(db_url, topic)
    # SIGTERM finished and committed the work: the group's offsets are past every record
    # (offsets start at 0 in each partition; the broker's end offsets are not exact on Tansu)
    assert "received SIGTERM" in log.read_text()
    committed = committed_offsets(broker.bootstrap, s.kafka.group, topic)
    assert len(committed) == 3 and sum(committed.values()) == len(records)


def test_two_consumers_split_partitions_and_one_leaves(
    model: Model, broker: EmbeddedBroker, topic: str, db_url: str
) -> None:
    first, second = stream_of(model, 800, 40, seed=2), stream_of(model, 800, 40, seed=3)
    second = [dict(r, id=f"second-{r['id']}") for r in second]
    ensure_topics(broker.bootstrap, [topic], partitions=4)
    s = settings(model.path, broker.bootstrap, topic, db_url, group=f"g-{topic}")
    with thread_consumer(s) as a:
        with thread_consumer(s) as b:
            wait_until(
                lambda: (
                    len(a.partitions()) + len(b.partitions()) == 4
                    and bool(a.partitions())
                    and bool(b.partitions())
                ),
                30,
                "the two members to share the four partitions",
            )
            produce(broker.bootstrap, topic, encode(first))
            wait_until(lambda: a.consumed + b.consumed >= len(first), 30, "the first half")
            assert a.consumed > 0 and b.consumed > 0, "both members should own partitions"
        # b left the group cleanly; a takes over every partition
        produce(broker.bootstrap, topic, encode(second))
        wait_until(
            lambda: len(stored_rows(db_url, topic)) >= len(model.flagged_ids(first + second)),
            30,
            "the second half",
        )
    assert_exactly_once(db_url, topic, model.flagged_ids(first + second))


def test_broker_restart_mid_stream(
    model: Model,
    topic: str,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broker that loses its log (memory storage) restarts mid-stream. Records it acknowledged
    after coming back must all be processed; nothing is stored twice; the consumer's log says
    the broker went away and came back."""
    monkeypatch.setattr(streams.kafka, "OUTAGE_NOTICE_S", 1.0)
    caplog.set_level(logging.INFO, logger="latentwatch")
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as own:
        ensure_topics(own.bootstrap, [topic], partitions=2)
        s = settings(model.path, own.bootstrap, topic, db_url, group=f"g-{topic}")
        before, after = stream_of(model, 400, 20, seed=4), stream_of(model, 400, 20, seed=5)
        after = [dict(r, id=f"after-{r['id']}") for r in after]
        with thread_consumer(s) as consumer:
            produce(own.bootstrap, topic, encode(before))
            wait_until(lambda: consumer.consumed >= len(before), 30, "records before the restart")
            own.restart(down_s=3.0)
            ensure_topics(own.bootstrap, [topic], partitions=2)  # memory storage lost the topic
            produce(own.bootstrap, topic, encode(after))
            wait_until(
                lambda: (
                    model.flagged_ids(after)
                    <= {str(r["record_id"]) for r in stored_rows(db_url, topic)}
                ),
                60,
                "every flagged record sent after the restart",
            )
    assert_exactly_once(db_url, topic, model.flagged_ids(before + after))
    assert "no Kafka group coordinator for" in caplog.text
    assert "Kafka reachable again after" in caplog.text


def test_a_consumer_started_before_its_broker_waits_for_it(
    model: Model, topic: str, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Broker down at start: the consumer keeps trying, with one log line per attempt, and
    consumes once the broker is there."""
    caplog.set_level(logging.WARNING, logger="latentwatch")
    own = EmbeddedBroker(port=free_port(), log_path=tmp_path / "tansu.log")
    s = settings(model.path, own.bootstrap, topic, db_url, group=f"g-{topic}")
    records = stream_of(model, 300, 15, seed=11)
    consumer = thread_consumer(s).start()
    try:
        wait_until(lambda: "reaching Kafka at" in caplog.text, 30, "a failed attempt")
        own.start()
        ensure_topics(own.bootstrap, [topic], partitions=2)
        produce(own.bootstrap, topic, encode(records))
        wait_until(lambda: consumer.consumed >= len(records), 60, "the records")
        consumer.close()
    finally:
        consumer.stop.set()
        own.stop()
    assert_exactly_once(db_url, topic, model.flagged_ids(records))


def _sqlite_path(db_url: str) -> str:
    return str(make_url(db_url).database)


def test_database_outage_loses_nothing(
    model: Model, broker: EmbeddedBroker, topic: str, db_url: str, request: pytest.FixtureRequest
) -> None:
    """The database goes away for a while: the consumer stops committing, retries, and stores
    every flagged record once it is back."""
    records = stream_of(model, 600, 40, seed=6)
    ensure_topics(broker.bootstrap, [topic], partitions=2)
    proxy: TcpProxy | None = None
    url = db_url
    if db_url.startswith("postgresql"):
        parsed = urlsplit(db_url)
        proxy = TcpProxy((parsed.hostname or "127.0.0.1", parsed.port or 5432))
        url = make_url(db_url).set(port=proxy.port).render_as_string(hide_password=False)
    s = settings(model.path, broker.bootstrap, topic, url, group=f"g-{topic}")
    try:
        with thread_consumer(s) as consumer:
            # Ready only once start-up (schema, model version) is done and the group joined: an
            # outage before then is a start-up wait, not a write error.
            wait_until(
                lambda: consumer.metric("latentwatch_ready") == 1, 30, "the consumer to start"
            )
            lock = None
            if proxy is not None:
                proxy.cut()
            else:  # SQLite: another process holds an exclusive lock on the file
                lock = sqlite3.connect(_sqlite_path(db_url), timeout=1)
                lock.execute("BEGIN EXCLUSIVE")
            produce(broker.bootstrap, topic, encode(records))
            wait_until(
                lambda: consumer.metric("latentwatch_db_write_errors_total") >= 2,
                30,
                "the consumer to notice the outage",
            )
            assert consumer.metric("latentwatch_records_flagged_total", topic=topic) == 0
            if proxy is not None:
                proxy.restore()
            else:
                assert lock is not None
                lock.rollback()
                lock.close()
            expected = model.flagged_ids(records)
            wait_until(
                lambda: len(stored_rows(db_url, topic)) >= len(expected),
                60,
                "the backlog after the outage",
            )
            assert consumer.metric("latentwatch_db_write_retries_total") >= 1
    finally:
        if proxy is not None:
            proxy.close()
    assert_exactly_once(db_url, topic, expected)


def test_malformed_messages_go_to_dead_letters_with_their_reason(
    model: Model, broker: EmbeddedBroker, topic: str, db_url: str
) -> None:
    valid = stream_of(model, 300, 15, seed=8)
    rng = random.Random(9)
    field = model.detector.schema.names[0]
    corpus: dict[bytes, str] = {
        b"not json at all": "not_json",
        b'{"unterminated": ': "not_json",
        b"": "not_json",
        b'{"%s": NaN}' % field.encode(): "non_finite_number",
        b'{"%s": Infinity}' % field.encode(): "non_finite_number",
        b"[1, 2, 3]": "not_an_object",
        b"42": "not_an_object",
        b'{"%s": "wide"}' % field.encode(): "wrong_type",
        b'{"%s": [1]}' % field.encode(): "wrong_type",
        b'{"unrelated": 1}': "missing_required",
        b"\xc3\x28\xa0\xa1": "not_utf8",
        b'{"id": "' + b"x" * 5000 + b'"}': "oversized",
    }
    for i in range(20):  # random bytes: whatever they are, they are rejected, never fatal
        corpus[
            bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) + bytes([0xFF, i])
        ] = "?"
    messages = encode(valid) + list(corpus)
    rng.shuffle(messages)
    ensure_topics(broker.bootstrap, [topic], partitions=2)
    s = settings(
        model.path, broker.bootstrap, topic, db_url, group=f"g-{topic}", max_message_bytes=4096
    )
    with thread_consumer(s) as consumer:
        positions = dict(zip(messages, produce(broker.bootstrap, topic, messages), strict=True))
        wait_until(lambda: consumer.consumed >= len(messages), 30, "every message")
        scored = consumer.metric("latentwatch_records_scored_total", topic=topic)
        rejected = {
            reason: consumer.metric(
                "latentwatch_records_rejected_total", topic=topic, reason=reason
            )
            for reason in set(corpus.values()) - {"?"} | {"other"}
        }
    assert scored == len(valid)
    letters = read_topic(broker.bootstrap, f"{topic}.deadletter", expected=len(corpus))
    assert len(letters) == len(corpus)
    by_value = {m.value: dict(m.headers) for m in letters}
    for value, reason in corpus.items():
        headers = by_value[value]
        if reason != "?":
            assert headers["latentwatch-reason"].decode() == reason, value
        assert headers["latentwatch-detail"]
        partition, offset = positions[value]
        assert headers["latentwatch-source-topic"].decode() == topic
        assert int(headers["latentwatch-source-partition"]) == partition
        assert int(headers["latentwatch-source-offset"]) == offset
    counted = Counter(dict(m.headers)["latentwatch-reason"].decode() for m in letters)
    for reason, n in rejected.items():
        assert n == counted.get(reason, 0), reason
    assert sum(rejected.values()) == len(corpus)
    assert_exactly_once(db_url, topic, model.flagged_ids(valid))


def test_required_fields_and_schema_versions_send_records_to_dead_letters(
    model: Model, broker: EmbeddedBroker, topic: str, db_url: str
) -> None:
    """The policy checks against the real broker: a record without a required field, or with a
    schema version the consumer does not accept (field or header), is dead-lettered with its
    reason; the others are scored."""
    valid = stream_of(model, 100, 5, seed=12)
    field = model.detector.schema.names[0]
    bad: dict[bytes, str] = {
        b'{"%s": 1.0}' % field.encode(): "missing_required",  # no id
        b'{"id": "v2", "schema_version": "2", "%s": 1.0}' % field.encode(): (
            "unknown_schema_version"
        ),
    }
    ensure_topics(broker.bootstrap, [topic], partitions=2)
    s = settings(
        model.path,
        broker.bootstrap,
        topic,
        db_url,
        group=f"g-{topic}",
        required_fields=("id",),
        schema_versions=("1",),
    )
    header_version = orjson.dumps(dict(valid[0], id="by-header"))
    with thread_consumer(s) as consumer:
        produce(broker.bootstrap, topic, [*encode(valid), *bad])
        p = producer(broker.bootstrap)
        try:
            p.send(topic, value=header_version, headers=[("schema-version", b"7")]).get(30)
        finally:
            p.close(timeout=5)
        total = len(valid) + len(bad) + 1
        wait_until(lambda: consumer.consumed >= total, 30, "every message")
        scored = consumer.metric("latentwatch_records_scored_total", topic=topic)
    assert scored == len(valid)
    letters = read_topic(broker.bootstrap, f"{topic}.deadletter", expected=len(bad) + 1)
    reasons = {m.value: dict(m.headers)["latentwatch-reason"].decode() for m in letters}
    assert reasons == {**bad, header_version: "unknown_schema_version"}
    assert_exactly_once(db_url, topic, model.flagged_ids(valid))
