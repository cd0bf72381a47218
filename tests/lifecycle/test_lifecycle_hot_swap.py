"""Consumers following the registry against the real broker and both databases: a promotion
under load switches every member of the group between batches (no rebalance, every record
scored once by one live model), a model that cannot be used is refused by the consumer, and
the shadow model's rows never become live flags."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from latentwatch.embedded import EmbeddedBroker
from latentwatch.service import BackgroundConsumer
from lifecycle.roles import Registry, register_directory
from lifecycle.store import DirectoryStore, local_path
from storage import registry
from storage.registry import ModelEvent
from streams.kafka import ensure_topics
from tests.support.cancer_model import Model
from tests.support.lifecycle_stream import flagged_rows, produce, query, stream_of, wait_until
from tests.support.stream_harness import SESSION_TIMEOUT_MS, settings

pytestmark = [pytest.mark.kafka]

POLL_S = 0.3  # the tests' registry poll: a promotion reaches the consumers within about this


def follower(bootstrap: str, topic: str, db: str, **changes: Any) -> BackgroundConsumer:
    changes = {"registry": topic, "registry_poll_s": POLL_S, "max_records": 100} | changes
    return BackgroundConsumer(settings(None, bootstrap, topic, db, f"g-{topic}", **changes))


def scored_by(consumers: list[BackgroundConsumer], version: str, role: str = "live") -> float:
    return sum(
        c.metric(
            "latentwatch_model_records_scored_total",
            topic=c.settings.kafka.topics[0],
            role=role,
            version=version,
        )
        for c in consumers
    )


@pytest.fixture
def topic() -> str:
    return f"lifecycle-{uuid.uuid4().hex[:8]}"


def test_promotion_under_load_switches_the_whole_group(
    sessions: sessionmaker[Session],
    db_url: str,
    broker: EmbeddedBroker,
    topic: str,
    cancer_model: Model,
    loose_model: Model,
    tmp_path: Path,
) -> None:
    store = DirectoryStore(tmp_path / "store")
    a = register_directory(sessions, store, cancer_model.path, actor="t")[0].version
    b = register_directory(sessions, store, loose_model.path, actor="t")[0].version
    reg = Registry(sessions, topic, "t")
    reg.promote(a)
    records = stream_of(cancer_model, 3000, seed=1)
    ensure_topics(broker.bootstrap, [topic], partitions=4)
    with (
        follower(broker.bootstrap, topic, db_url) as one,
        follower(broker.bootstrap, topic, db_url) as two,
    ):
        group = [one, two]
        wait_until(
            lambda: (
                len(one.partitions()) + len(two.partitions()) == 4
                and all(c.partitions() for c in group)
            ),
            30,
            "the two members to share the four partitions",
        )
        rebalances = [c.metric("latentwatch_rebalances_total") for c in group]
        sender = threading.Thread(target=produce, args=(broker.bootstrap, topic, records, 800.0))
        sender.start()
        wait_until(lambda: scored_by(group, a) > 600, 30, "records scored by the first model")
        reg.promote(b)
        wait_until(
            lambda: all(
                c.metric("latentwatch_model_role", role="live", version=b) == 1 for c in group
            ),
            10 * POLL_S + 5,
            "both members to switch to the promoted model",
        )
        sender.join()
        wait_until(
            lambda: scored_by(group, a) + scored_by(group, b) >= len(records),
            30,
            "every record scored",
        )
        # no member left the group to switch; each scored with both models
        assert [c.metric("latentwatch_rebalances_total") for c in group] == rebalances
        for c in group:
            assert scored_by([c], a) > 0 and scored_by([c], b) > 0
    # every record scored once, by one live model, and its flag stored once with its version
    assert scored_by(group, a) + scored_by(group, b) == len(records)
    rows = flagged_rows(db_url, topic)
    assert max(Counter(r["record_id"] for r in rows).values()) == 1
    by_id = {r["id"]: r for r in records}
    flagged_by = {
        a: cancer_model.flagged_ids(records),
        b: loose_model.flagged_ids(records),
    }
    for row in rows:
        assert row["record_id"] in flagged_by[row["model_version"]], row
    # per partition, the switch is one offset: every row before it is a's, every row after b's
    for partition in range(4):
        versions = [
            r["model_version"]
            for r in sorted(rows, key=lambda r: r["kafka_offset"])
            if r["kafka_partition"] == partition
        ]
        first_b = versions.index(b) if b in versions else len(versions)
        assert set(versions[:first_b]) <= {a} and set(versions[first_b:]) <= {b}
    assert set(by_id) >= {r["record_id"] for r in rows}


def test_a_model_the_consumer_cannot_use_is_refused_and_the_old_one_kept(
    sessions: sessionmaker[Session],
    db_url: str,
    broker: EmbeddedBroker,
    topic: str,
    cancer_model: Model,
    loose_model: Model,
    misfit_model: Path,
    tmp_path: Path,
) -> None:
    store = DirectoryStore(tmp_path / "store")
    a = register_directory(sessions, store, cancer_model.path, actor="t")[0].version
    misfit = register_directory(sessions, store, misfit_model, actor="t")[0]
    b = register_directory(sessions, store, loose_model.path, actor="t")[0]
    Registry(sessions, topic, "t").promote(a)
    ensure_topics(broker.bootstrap, [topic], partitions=1)
    records = stream_of(cancer_model, 400, seed=2)
    with follower(broker.bootstrap, topic, db_url) as consumer:
        consumer.wait_for_partitions(1)
        # past the checks of `models promote`, as a registry edited by hand would be
        registry.record_event(
            sessions, ModelEvent(topic, misfit.version, "promote", "t", datetime.now(UTC))
        )
        wait_until(
            lambda: (
                consumer.metric(
                    "latentwatch_model_load_failing", role="live", version=misfit.version
                )
                == 1
            ),
            10,
            "the consumer to refuse the model that does not fit",
        )
        # a damaged store copy is refused the same way
        (local_path(b.location) / "weights.safetensors").write_bytes(b"damaged")
        registry.record_event(
            sessions, ModelEvent(topic, b.version, "promote", "t", datetime.now(UTC))
        )
        wait_until(
            lambda: (
                consumer.metric("latentwatch_model_load_failing", role="live", version=b.version)
                == 1
            ),
            10,
            "the consumer to refuse the damaged model",
        )
        produce(broker.bootstrap, topic, records, 2000.0)
        wait_until(lambda: consumer.consumed >= len(records), 30, "the records")
        assert consumer.metric("latentwatch_model_role", role="live", version=a) == 1
        assert consumer.metric("latentwatch_model_load_failures_total", role="live") == 2
    rows = flagged_rows(db_url, topic)
    assert {r["model_version"] for r in rows} == {a}
    assert {r["record_id"] for r in rows} == cancer_model.flagged_ids(records)


def test_shadow_rows_are_never_live_flags(
    sessions: sessionmaker[Session],
    db_url: str,
    broker: EmbeddedBroker,
    topic: str,
    cancer_model: Model,
    loose_model: Model,
    tmp_path: Path,
) -> None:
    store = DirectoryStore(tmp_path / "store")
    a = register_directory(sessions, store, cancer_model.path, actor="t")[0].version
    b = register_directory(sessions, store, loose_model.path, actor="t")[0].version
    reg = Registry(sessions, topic, "t")
    reg.promote(a)
    reg.shadow(b)
    ensure_topics(broker.bootstrap, [topic], partitions=2)
    records = stream_of(cancer_model, 1000, seed=3)
    with follower(broker.bootstrap, topic, db_url) as consumer:
        consumer.wait_for_partitions(2)
        produce(broker.bootstrap, topic, records, 2000.0)
        wait_until(lambda: consumer.consumed >= len(records), 30, "the records")
        shadow_flags = consumer.metric(
            "latentwatch_model_records_flagged_total", topic=topic, role="shadow", version=b
        )
        live_flags = consumer.metric("latentwatch_records_flagged_total", topic=topic)
    live_ids, shadow_ids = cancer_model.flagged_ids(records), loose_model.flagged_ids(records)
    assert len(shadow_ids) > 2 * len(live_ids)  # the shadow model flags far more
    assert (live_flags, shadow_flags) == (len(live_ids), len(shadow_ids))
    rows = flagged_rows(db_url, topic)
    assert {r["record_id"] for r in rows} == live_ids
    assert {r["model_version"] for r in rows} == {a}
    shadow = query(
        db_url,
        "SELECT record_id, flagged, live_flagged, live_version FROM model_scores "
        "WHERE run = 'shadow' AND model_version = :b AND topic = :topic",
        b=b,
        topic=topic,
    )
    assert {r["record_id"] for r in shadow if r["flagged"]} == shadow_ids
    assert {r["record_id"] for r in shadow if r["live_flagged"]} == live_ids
    assert {r["live_version"] for r in shadow} == {a}
    counts = query(
        db_url,
        "SELECT SUM(scored) AS scored, SUM(flagged) AS flagged, SUM(live_flagged) AS live "
        "FROM run_counts WHERE run = 'shadow' AND topic = :topic",
        topic=topic,
    )[0]
    assert (counts["scored"], counts["flagged"], counts["live"]) == (
        len(records),
        len(shadow_ids),
        len(live_ids),
    )


def consume_process(bootstrap: str, topic: str, db: str, log: Path) -> subprocess.Popen[bytes]:
    """`latentwatch consume --registry TOPIC` as a child process, to be killed like a crash."""
    argv = [sys.executable, "-m", "latentwatch", "consume", "--registry", topic]
    argv += ["--bootstrap", bootstrap, "--topic", topic, "--db", db, "--group", f"g-{topic}"]
    argv += ["--metrics-port", "-1", "--session-timeout-ms", str(SESSION_TIMEOUT_MS)]
    argv += ["--max-records", "100", "--log-level", "info"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log.open("ab"))


def test_promotion_while_a_consumer_is_killed_and_a_rollback(
    sessions: sessionmaker[Session],
    db_url: str,
    broker: EmbeddedBroker,
    topic: str,
    cancer_model: Model,
    loose_model: Model,
    tmp_path: Path,
) -> None:
    store = DirectoryStore(tmp_path / "store")
    a = register_directory(sessions, store, cancer_model.path, actor="t")[0].version
    b = register_directory(sessions, store, loose_model.path, actor="t")[0].version
    reg = Registry(sessions, topic, "t")
    reg.promote(a)
    ensure_topics(broker.bootstrap, [topic], partitions=2)
    first, second, third = (
        [dict(r, id=f"{n}-{r['id']}") for r in stream_of(cancer_model, 500, seed=s)]
        for n, s in (("one", 4), ("two", 5), ("three", 6))
    )
    log = tmp_path / "consumer.log"
    proc = consume_process(broker.bootstrap, topic, db_url, log)
    try:
        produce(broker.bootstrap, topic, first, 1000.0)
        wait_until(lambda: len(flagged_rows(db_url, topic)) > 0, 30, f"stored rows ({log})")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        reg.promote(b)  # while no consumer runs
        proc = consume_process(broker.bootstrap, topic, db_url, log)
        wait_until(lambda: f"with model {b}" in log.read_text(), 30, f"the restart on b ({log})")
        produce(broker.bootstrap, topic, second, 1000.0)
        expected_second = loose_model.flagged_ids(second)
        wait_until(
            lambda: expected_second <= {r["record_id"] for r in flagged_rows(db_url, topic)},
            30,
            "the second stream's flags",  # all of them, or the rollback would race the last
        )
        reg.rollback()
        wait_until(lambda: f"live model {b} -> {a}" in log.read_text(), 15, f"rollback ({log})")
        produce(broker.bootstrap, topic, third, 1000.0)
        expected_third = cancer_model.flagged_ids(third)
        wait_until(
            lambda: expected_third <= {r["record_id"] for r in flagged_rows(db_url, topic)},
            30,
            "the third stream's flags",
        )
    finally:
        proc.terminate()
        proc.wait(15)
    rows = flagged_rows(db_url, topic)
    assert max(Counter(r["record_id"] for r in rows).values()) == 1
    flagged_by = {
        a: cancer_model.flagged_ids(first + second + third),
        b: loose_model.flagged_ids(first + second + third),
    }
    for row in rows:
        assert row["record_id"] in flagged_by[row["model_version"]], row
    version_of = {r["record_id"]: r["model_version"] for r in rows}
    assert {version_of[i] for i in expected_second} == {b}
    assert {v for i, v in version_of.items() if i.startswith("three-")} == {a}
    # every record of the first stream is stored once, by a if it came before the kill
    first_ids = {i for i in version_of if i.startswith("one-")}
    assert first_ids <= flagged_by[a] | flagged_by[b]
