"""A small real model for the tests that need a trained detector on disk: scikit-learn's
bundled breast-cancer set, half of the benign records to train on; the other half (normal)
and the malignant records (anomalous) to stream at it. Built once per session by the
``cancer_model`` fixture in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer

from detector import artifact
from detector.detector import Detector, DetectorConfig
from detector.schema import SchemaOptions
from detector.training import TrainingConfig

FAST = DetectorConfig(training=TrainingConfig(max_steps=600, min_steps=200, patience=5))

Record = dict[str, object]


@dataclass(frozen=True)
class Model:
    detector: Detector
    path: Path  # the saved model directory, what a consumer loads
    normal: list[Record]  # held-out benign records, in a fixed shuffled order
    anomalous: list[Record]  # malignant records

    def flagged_ids(self, records: Sequence[Record]) -> set[str]:
        """Ids of the records the model flags (scoring is deterministic)."""
        flagged = self.detector.score_records(list(records)).flagged
        return {str(r["id"]) for r, f in zip(records, flagged, strict=True) if f}


def train_model(directory: Path) -> Model:
    data = load_breast_cancer()
    names = [str(n).replace(" ", "_") for n in data.feature_names]
    benign = np.flatnonzero(data.target == 1)
    benign = benign[np.random.RandomState(0).permutation(len(benign))]
    malignant = np.flatnonzero(data.target == 0)

    def records(rows: np.ndarray, prefix: str) -> list[Record]:
        return [
            {"id": f"{prefix}{i}", **dict(zip(names, map(float, data.data[i]), strict=True))}
            for i in rows
        ]

    train = records(benign[: len(benign) // 2], "train-")
    columns = {n: [r[n] for r in train] for n in ["id", *names]}
    detector = Detector.fit(columns, SchemaOptions(id_column="id"), FAST)
    path = directory / "model"
    artifact.save(detector, path)
    return Model(detector, path, records(benign[len(benign) // 2 :], "b"), records(malignant, "m"))
