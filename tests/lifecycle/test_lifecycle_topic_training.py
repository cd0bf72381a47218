"""`latentwatch train --from-topic` against the real broker: the same records and seed give the
same model version as training from a file of them; records a registered model flags are left
out, and the result can be registered as the topic's shadow model (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest
from sqlalchemy.orm import Session, sessionmaker

from detector import artifact
from latentwatch.embedded import EmbeddedBroker
from lifecycle.roles import Registry, register_directory
from lifecycle.store import DirectoryStore
from storage import registry
from streams.kafka import ensure_topics
from tests.support.cancer_model import Model
from tests.support.cli_run import run
from tests.support.lifecycle_stream import produce

pytestmark = [pytest.mark.kafka]


def topic_with(broker: EmbeddedBroker, records: list[dict]) -> str:
    topic = f"train-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic], partitions=1)
    produce(broker.bootstrap, topic, records, 5000.0)
    return topic


def test_training_from_a_topic_reproduces_training_from_a_file(
    broker: EmbeddedBroker,
    cancer_model: Model,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    records = cancer_model.normal[:120]
    topic = topic_with(broker, records)
    common = ("--id-column", "id", "--seed", "3")
    code, out, err = run(
        capsys,
        "train",
        "--from-topic",
        topic,
        "--bootstrap",
        broker.bootstrap,
        "--since",
        "1h",
        "--out",
        tmp_path / "from-topic",
        *common,
    )
    assert code == 0, err
    assert f"{topic}: 120 records" in out and "training on 120" in out
    data = tmp_path / "records.jsonl"
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    code, _, err = run(capsys, "train", "--data", data, "--out", tmp_path / "from-file", *common)
    assert code == 0, err
    from_topic = artifact.read_manifest(tmp_path / "from-topic")["version"]
    assert from_topic == artifact.read_manifest(tmp_path / "from-file")["version"]


def test_training_from_a_topic_leaves_out_flags_and_registers_a_shadow(
    sessions: sessionmaker[Session],
    db_url: str,
    broker: EmbeddedBroker,
    cancer_model: Model,
    loose_model: Model,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    records = cancer_model.normal[:100] + cancer_model.anomalous[:20]
    topic = topic_with(broker, records)
    store = DirectoryStore(tmp_path / "store")
    live = register_directory(sessions, store, cancer_model.path, actor="t")[0].version
    loose = register_directory(sessions, store, loose_model.path, actor="t")[0].version
    Registry(sessions, topic, "t").promote(live)
    flagged = loose_model.flagged_ids(records)
    code, out, err = run(
        capsys,
        "train",
        "--from-topic",
        topic,
        "--bootstrap",
        broker.bootstrap,
        "--since",
        "1h",
        "--exclude-flagged-by",
        loose,
        "--register-as",
        "shadow",
        "--db",
        db_url,
        "--store",
        tmp_path / "store",
        "--out",
        tmp_path / "candidate",
        "--id-column",
        "id",
    )
    assert code == 0, err
    assert f"{len(flagged)} flagged by {loose} left out; training on {120 - len(flagged)}" in out
    version = artifact.read_manifest(tmp_path / "candidate")["version"]
    assert f"{topic}: live {live}, shadow {version}" in out
    model = registry.get_model(sessions, version)
    assert model.source == f"topic:{topic}"
    assert model.window_start is not None and model.window_end is not None
    assert registry.roles(sessions, topic).shadow == version
