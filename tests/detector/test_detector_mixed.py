"""End to end on real records of mixed types: strings, a boolean, missing values."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from detector.detector import Detector
from detector.schema import FieldKind
from tests.support.detector_data import FAST, cancer_records, records_to_columns


@pytest.fixture(scope="module")
def split() -> tuple[Detector, list[dict[str, object]], list[dict[str, object]]]:
    records, labels = cancer_records()
    benign = [r for r, y in zip(records, labels, strict=True) if y == 0]
    malignant = [r for r, y in zip(records, labels, strict=True) if y == 1]
    order = np.random.default_rng(0).permutation(len(benign))
    train = [benign[i] for i in order[: len(benign) // 2]]
    test_normal = [benign[i] for i in order[len(benign) // 2 :]]
    detector = Detector.fit(records_to_columns(train), config=FAST)
    return detector, test_normal, malignant


def test_the_schema_keeps_the_record_types(split) -> None:  # type: ignore[no-untyped-def]
    kinds = {f.name: f.kind for f in split[0].schema.fields}
    assert kinds["radius_band"] is FieldKind.CATEGORICAL
    assert kinds["concave"] is FieldKind.BOOLEAN
    assert kinds["mean_area"] is FieldKind.NUMERIC


def test_malignant_records_rank_above_benign_ones(split) -> None:  # type: ignore[no-untyped-def]
    detector, normal, malignant = split
    scores = detector.score_records(normal + malignant).score
    labels = np.r_[np.zeros(len(normal)), np.ones(len(malignant))]
    assert roc_auc_score(labels, scores) >= 0.93


def test_a_swapped_category_is_caught_and_explained(split) -> None:  # type: ignore[no-untyped-def]
    # the radius band no longer matches the area, perimeter and radius measures next to it:
    # each value is normal on its own, only the combination is not
    detector, normal, _ = split
    swapped = []
    for rec in normal:
        odd = dict(rec)
        odd["radius_band"] = "large" if rec["radius_band"] == "small" else "small"
        swapped.append(odd)
    scores = detector.score_records(normal + swapped)
    labels = np.r_[np.zeros(len(normal)), np.ones(len(swapped))]
    band = detector.schema.names.index("radius_band")
    # the field's own term tells the swapped records apart; in the whole score one field's few
    # nats compete with the noise of 30 numeric fields, so the record as a whole ranks lower
    assert roc_auc_score(labels, scores.contributions[:, band]) >= 0.9
    assert roc_auc_score(labels, scores.score) >= 0.58
    top = np.argmax(scores.contributions[len(normal) :], axis=1)
    assert np.mean(top == band) >= 0.5
