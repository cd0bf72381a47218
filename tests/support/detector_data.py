"""Test data shared by the tests: the fast training config, scikit-learn's breast-cancer set
split one way for every test, mixed-type records, and the detector variants of the contract
tests (tests/detector/conftest.py builds the fixtures)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_breast_cancer

from detector.detector import Detector, DetectorConfig
from detector.training import TrainingConfig

# the one small training config of the tests: a few hundred steps, enough to separate the sets
FAST = DetectorConfig(training=TrainingConfig(max_steps=600, min_steps=200, patience=5))


@dataclass(frozen=True)
class BreastCancer:
    """scikit-learn's bundled breast-cancer set (UCI WDBC, 30 measurements): benign = normal,
    malignant = anomaly. ``normal`` is the benign rows in one fixed shuffled order (seed 0);
    its first half is what every test model trains on."""

    names: tuple[str, ...]
    x: np.ndarray
    normal: np.ndarray  # benign row indices, shuffled
    anomalous: np.ndarray  # malignant row indices, in file order

    @property
    def train(self) -> np.ndarray:
        return self.normal[: len(self.normal) // 2]

    @property
    def held_out(self) -> np.ndarray:
        return self.normal[len(self.normal) // 2 :]


@functools.cache
def breast_cancer() -> BreastCancer:
    data = load_breast_cancer()
    benign = np.flatnonzero(data.target == 1)
    return BreastCancer(
        names=tuple(str(n).replace(" ", "_") for n in data.feature_names),
        x=data.data,
        normal=benign[np.random.RandomState(0).permutation(len(benign))],
        anomalous=np.flatnonzero(data.target == 0),
    )


@dataclass(frozen=True)
class Split:
    """Normal training rows, and a test set of held-out normals plus anomalies."""

    names: tuple[str, ...]
    train: np.ndarray
    test: np.ndarray
    labels: np.ndarray  # 1 = anomaly

    def columns(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {n: rows[:, j] for j, n in enumerate(self.names)}


def mixed_records(n: int, seed: int) -> list[dict[str, object]]:
    """Records as a pipeline would send them: numbers that depend on a category, a boolean,
    an id, and some missing values."""
    rng = np.random.default_rng(seed)
    regions = rng.choice(["eu", "us", "apac"], size=n, p=[0.5, 0.3, 0.2])
    base = {"eu": 10.0, "us": 20.0, "apac": 30.0}
    records: list[dict[str, object]] = []
    for i, region in enumerate(regions):
        amount = base[region] + rng.normal(0, 1.0)
        rec: dict[str, object] = {
            "id": f"tx-{seed}-{i}",
            "region": str(region),
            "amount": float(amount),
            "items": int(rng.integers(1, 5)),
            "express": bool(rng.random() < 0.3),
            "latency_ms": float(rng.gamma(2.0, 10.0)) if rng.random() > 0.1 else None,
        }
        records.append(rec)
    return records


def records_to_columns(records: list[dict[str, object]]) -> dict[str, list[object]]:
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(r))
    return {n: [r.get(n) for r in records] for n in names}


@dataclass(frozen=True)
class Variant:
    """A fitted detector, normal records it has not seen, and unusual records it should score
    higher."""

    detector: Detector
    normal: list[dict[str, object]]
    unusual: list[dict[str, object]]


# variant name -> the fixture (in conftest.py) that builds it
VARIANT_FIXTURES = {"numeric-real-data": "numeric_variant", "mixed-records": "mixed_variant"}


def cancer_records() -> tuple[list[dict[str, object]], np.ndarray]:
    """scikit-learn's bundled breast-cancer set as records of mixed types (a real set that needs
    no download and no R): two measurements become string categories (terciles of the benign
    range), one a boolean, and 5 % of three fields go missing. Labels: 1 = malignant."""
    data = load_breast_cancer()
    x, y = data.data, 1 - data.target
    names = [str(n).replace(" ", "_") for n in data.feature_names]
    benign = x[y == 0]
    radius_cut = np.percentile(benign[:, 0], [33, 67])
    texture_cut = np.percentile(benign[:, 1], [33, 67])
    concave_median = float(np.median(benign[:, 6]))
    rng = np.random.default_rng(5)
    records: list[dict[str, object]] = []
    for row in x:
        rec: dict[str, object] = {n: float(v) for n, v in zip(names[2:], row[2:], strict=True)}
        rec["radius_band"] = ("small", "medium", "large")[int(np.searchsorted(radius_cut, row[0]))]
        rec["texture_band"] = ("smooth", "usual", "rough")[
            int(np.searchsorted(texture_cut, row[1]))
        ]
        rec["concave"] = bool(row[6] > concave_median)
        for field in ("mean_smoothness", "worst_symmetry", "texture_band"):
            if rng.random() < 0.05:
                rec[field] = None
        records.append(rec)
    return records, y
