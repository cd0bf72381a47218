"""End-to-end calibration: on fresh normal records the share flagged is close to the target
false-alarm rate, and p-values are close to uniform."""

from __future__ import annotations

import numpy as np
import pytest

from detector.detector import Detector, DetectorConfig
from tests.support.detector_data import FAST


def normal_records(n: int, seed: int) -> dict[str, np.ndarray]:
    """Three correlated clusters in six dimensions."""
    centres = np.array([[0, 0, 0, 0, 0, 0], [6, -3, 2, 0, 1, 4], [-5, 4, -2, 3, 0, -1]], float)
    mixing = np.random.default_rng(0).normal(0, 0.4, (6, 6)) + np.eye(6)  # the same for all
    rng = np.random.default_rng(seed)
    which = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    x = centres[which] + rng.normal(0, 1, (n, 6)) @ mixing.T
    return {f"f{j}": x[:, j] for j in range(6)}


@pytest.fixture(scope="module")
def calibrated() -> Detector:
    config = DetectorConfig(fpr=0.01, training=FAST.training)
    return Detector.fit(normal_records(6000, seed=10), config=config)


def test_false_alarm_rate_on_fresh_normals_is_close_to_the_target(calibrated: Detector) -> None:
    fresh = calibrated.score_columns(normal_records(20_000, seed=11), 20_000)
    assert fresh.flagged.mean() == pytest.approx(0.01, abs=0.006)


def test_p_values_of_fresh_normals_are_close_to_uniform(calibrated: Detector) -> None:
    p = calibrated.score_columns(normal_records(20_000, seed=12), 20_000).p_value
    for level in (0.05, 0.1, 0.25, 0.5):
        assert (p < level).mean() == pytest.approx(level, rel=0.3)


def test_records_from_elsewhere_are_flagged(calibrated: Detector) -> None:
    columns = normal_records(1000, seed=13)
    shifted = {name: values + (8.0 if name == "f3" else 0.0) for name, values in columns.items()}
    assert calibrated.score_columns(shifted, 1000).flagged.mean() > 0.9
