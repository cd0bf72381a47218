"""Fixtures for the stream tests: a model trained once on real data (scikit-learn's bundled
breast-cancer set: benign = normal, malignant = anomaly), the records to stream, in-memory fakes
of the loop's collaborators, and database URLs for both engines."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from stream_harness import Model, Stream

from detector import artifact
from detector.detector import Detector, DetectorConfig
from detector.schema import SchemaOptions
from detector.training import TrainingConfig
from storage.database import upgrade

FAST = DetectorConfig(training=TrainingConfig(max_steps=600, min_steps=200, patience=5))


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    benign = np.flatnonzero(data.target == 1)
    benign = benign[np.random.RandomState(0).permutation(len(benign))]
    malignant = np.flatnonzero(data.target == 0)

    def records(rows: np.ndarray, prefix: str) -> list[dict[str, object]]:
        return [
            {"id": f"{prefix}{i}", **dict(zip(names, map(float, data.data[i]), strict=True))}
            for i in rows
        ]

    train = records(benign[: len(benign) // 2], "train-")
    columns = {n: [r[n] for r in train] for n in ["id", *names]}
    detector = Detector.fit(columns, SchemaOptions(id_column="id"), FAST)
    path = tmp_path_factory.mktemp("model") / "model"
    artifact.save(detector, path)
    stream = Stream(
        normal=records(benign[len(benign) // 2 :], "b"), anomalous=records(malignant, "m")
    )
    return Model(detector, path, stream)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each engine (the consumer migrates it)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'latentwatch.db'}"
        return
    base = request.getfixturevalue("postgres_url")
    name = f"lw_stream_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    upgrade(url)  # production PostgreSQL is migrated by `latentwatch db upgrade`, not on start
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def topic() -> str:
    return f"records-{uuid.uuid4().hex[:8]}"
