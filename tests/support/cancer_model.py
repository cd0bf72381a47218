"""A small real model for the tests that need a trained detector on disk: the breast-cancer
split of tests.support.detector_data, half of the benign records to train on; the other half
(normal) and the malignant records (anomalous) to stream at it. Built once per session by the
``cancer_model`` fixture in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector import artifact
from detector.detector import Detector
from detector.schema import SchemaOptions
from tests.support.detector_data import FAST, breast_cancer

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
    data = breast_cancer()

    def records(rows: np.ndarray, prefix: str) -> list[Record]:
        return [
            {"id": f"{prefix}{i}", **dict(zip(data.names, map(float, data.x[i]), strict=True))}
            for i in rows
        ]

    train = records(data.train, "train-")
    columns = {n: [r[n] for r in train] for n in ["id", *data.names]}
    detector = Detector.fit(columns, SchemaOptions(id_column="id"), FAST)
    path = directory / "model"
    artifact.save(detector, path)
    return Model(detector, path, records(data.held_out, "b"), records(data.anomalous, "m"))
