"""Backfill against the real broker and both databases: `latentwatch rescore` flags what
`latentwatch score` flags on the same records, keeps to its time range, joins no group, and a
run killed mid-way and started again finishes without storing or counting anything twice;
`--stored` re-scores the stored live flags."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy.orm import Session, sessionmaker

from latentwatch.embedded import EmbeddedBroker
from lifecycle.rescore import rescore
from lifecycle.roles import register_directory
from lifecycle.store import DirectoryStore
from storage.repository import write_flagged
from streams.kafka import ensure_topics
from streams.scoring import flagged_records
from tests.support.cancer_model import Model
from tests.support.cli_run import run
from tests.support.lifecycle_stream import produce, query, stream_of, wait_until

pytestmark = [pytest.mark.kafka]


def score_cli_flags(
    capsys: pytest.CaptureFixture[str], model: Path, records: list, tmp: Path
) -> set:
    """The ids `latentwatch score` flags in a JSONL file of ``records``."""
    data, out = tmp / "records.jsonl", tmp / "scores.csv"
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    code, _, err = run(capsys, "score", "--model", model, "--data", data, "--out", out)
    assert code == 0, err
    with out.open() as fh:
        return {row["id"] for row in csv.DictReader(fh) if row["flagged"] == "1"}


def backfill_rows(db_url: str, name: str) -> list[dict]:
    return query(db_url, "SELECT record_id, flagged FROM model_scores WHERE run = :run", run=name)


def scored_count(db_url: str, name: str) -> int:
    rows = query(db_url, "SELECT SUM(scored) AS n FROM run_counts WHERE run = :run", run=name)
    return int(rows[0]["n"] or 0)


def test_rescore_equals_score_and_keeps_to_its_range(
    sessions: sessionmaker[Session],
    db_url: str,
    broker: EmbeddedBroker,
    cancer_model: Model,
    loose_model: Model,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = f"rescore-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic], partitions=2)
    before, during = stream_of(cancer_model, 300, seed=7), stream_of(cancer_model, 900, seed=8)
    during = [dict(r, id=f"d-{r['id']}") for r in during]
    produce(broker.bootstrap, topic, before, 5000.0)
    time.sleep(0.2)
    start = datetime.now(UTC)
    time.sleep(0.2)
    produce(broker.bootstrap, topic, during, 5000.0)

    expected = score_cli_flags(capsys, loose_model.path, during, tmp_path)
    assert len(expected) > 50
    result = rescore(
        loose_model.detector, sessions, broker.bootstrap, topic, (start, None), name="r1", batch=100
    )
    assert (result.scored, result.flagged) == (len(during), len(expected))
    rows = backfill_rows(db_url, "r1")
    assert {r["record_id"] for r in rows} == expected
    assert scored_count(db_url, "r1") == len(during)
    # the same run again: finished, nothing new
    again = rescore(
        loose_model.detector, sessions, broker.bootstrap, topic, (start, None), name="r1"
    )
    assert again.already_finished and len(backfill_rows(db_url, "r1")) == len(rows)


def test_a_killed_rescore_resumes_without_duplicates(
    sessions: sessionmaker[Session],
    db_url: str,
    broker: EmbeddedBroker,
    cancer_model: Model,
    loose_model: Model,
    tmp_path: Path,
) -> None:
    topic = f"rescore-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic], partitions=2)
    records = stream_of(cancer_model, 3000, seed=9)
    produce(broker.bootstrap, topic, records, 10000.0)
    version = register_directory(
        sessions, DirectoryStore(tmp_path / "store"), loose_model.path, actor="t"
    )[0].version
    argv = [
        sys.executable,
        "-m",
        "latentwatch",
        "rescore",
        "--model",
        version,
        "--topic",
        topic,
        "--db",
        db_url,
        "--from",
        "1h",
        "--bootstrap",
        broker.bootstrap,
        "--name",
        "killed",
        "--batch",
        "20",
    ]
    log = tmp_path / "rescore.log"
    proc = subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: scored_count(db_url, "killed") >= 400, 60, f"progress ({log})")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert scored_count(db_url, "killed") < len(records), "killed too late to test a resume"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    rows = backfill_rows(db_url, "killed")
    assert max(Counter(r["record_id"] for r in rows).values()) == 1
    assert {r["record_id"] for r in rows} == loose_model.flagged_ids(records)
    assert scored_count(db_url, "killed") == len(records)


def test_rescore_stored_flags(
    sessions: sessionmaker[Session],
    db_url: str,
    cancer_model: Model,
    loose_model: Model,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lifecycle.rescore import rescore_stored  # noqa: PLC0415
    from streams.messages import PlainMessage  # noqa: PLC0415

    records = stream_of(cancer_model, 400, seed=10)
    d = cancer_model.detector
    scores = d.score_records(records)
    messages = [
        PlainMessage("t", 0, i, 1_793_000_000_000 + i, None, orjson.dumps(r), ())
        for i, r in enumerate(records)
    ]
    now = datetime.now(UTC)
    live = flagged_records(d, messages, scores, record_of=records.__getitem__, now=now)
    write_flagged(sessions, live)
    result = rescore_stored(
        loose_model.detector, sessions, "t", (now - timedelta(hours=1), None), name="s1"
    )
    rows = backfill_rows(db_url, "s1")
    assert result.scored == len(live) == len(rows)
    # the looser model flags every record the live one flags (same network, lower threshold)
    assert {r["record_id"] for r in rows if r["flagged"]} == {r.record_id for r in live}
