"""Fixtures for the detector tests: small real data (scikit-learn's bundled breast-cancer set),
a synthetic mixed-type record set, and detectors fitted once per session with a short training
budget."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from detector.detector import Detector
from detector.schema import SchemaOptions
from tests.support.detector_data import (
    FAST,
    Split,
    Variant,
    breast_cancer,
    mixed_records,
    records_to_columns,
)


@pytest.fixture(scope="session")
def cancer() -> Split:
    """Breast cancer (UCI WDBC, 30 features): benign = normal, malignant = anomaly."""
    data = breast_cancer()
    test = np.concatenate([data.held_out, data.anomalous[:30]])
    labels = np.isin(test, data.anomalous).astype(int)
    return Split(data.names, data.x[data.train], data.x[test], labels)


@pytest.fixture(scope="session")
def numeric_detector(cancer: Split) -> Detector:
    return Detector.fit(cancer.columns(cancer.train), config=FAST)


@pytest.fixture(scope="session")
def mixed_detector() -> Detector:
    columns = records_to_columns(mixed_records(1500, seed=1))
    return Detector.fit(columns, SchemaOptions(id_column="id"), FAST)


@pytest.fixture(scope="session")
def numeric_variant(numeric_detector: Detector, cancer: Split) -> Variant:
    def rows(x: np.ndarray) -> list[dict[str, object]]:
        return [{n: float(v) for n, v in zip(cancer.names, row, strict=True)} for row in x]

    return Variant(
        numeric_detector,
        normal=rows(cancer.test[cancer.labels == 0]),
        unusual=rows(cancer.test[cancer.labels == 1]),
    )


@pytest.fixture(scope="session")
def mixed_variant(mixed_detector: Detector) -> Variant:
    normal = mixed_records(200, seed=2)
    unusual = []
    for i, rec in enumerate(mixed_records(40, seed=3)):
        odd = dict(rec)
        if i % 2:
            odd["amount"] = float(rec["amount"]) + 40.0  # type: ignore[arg-type]
        else:  # an amount normal for another region: only the combination is unusual
            odd["region"] = "eu" if rec["region"] != "eu" else "apac"
        unusual.append(odd)
    return Variant(mixed_detector, normal=normal, unusual=unusual)


@pytest.fixture(scope="session")
def fit_detector() -> Callable[..., Detector]:
    """Fit on demand (for tests that need their own model)."""

    def fit(columns: dict[str, object], **kwargs: object) -> Detector:
        return Detector.fit(columns, config=kwargs.pop("config", FAST), **kwargs)  # type: ignore[arg-type]

    return fit
