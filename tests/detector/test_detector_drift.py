"""Drift maths: PSI and the sliding window of clusters and surprises."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from detector.drift import DriftWindow, population_stability_index


def test_psi_is_zero_for_identical_distributions() -> None:
    shares = np.array([0.1, 0.2, 0.3, 0.4])
    assert population_stability_index(shares, shares * 1000) == pytest.approx(0.0, abs=1e-12)


def test_psi_hand_computed_value() -> None:
    # reference 50/50, observed 80/20: (0.3)·ln(1.6) + (-0.3)·ln(0.4) = 0.3·ln 4
    psi = population_stability_index(np.array([0.5, 0.5]), np.array([80, 20]), epsilon=0.0)
    assert psi == pytest.approx(0.3 * math.log(4), rel=1e-12)
    smoothed = population_stability_index(np.array([0.5, 0.5]), np.array([80, 20]))
    assert smoothed == pytest.approx(0.3 * math.log(4), rel=1e-3)


def test_psi_grows_with_the_shift() -> None:
    reference = np.array([0.25, 0.25, 0.25, 0.25])
    shifts = [np.array([25, 25, 25, 25]), [30, 25, 25, 20], [40, 25, 20, 15], [70, 20, 10, 0]]
    psis = [population_stability_index(reference, np.asarray(s)) for s in shifts]
    assert psis[0] == pytest.approx(0.0, abs=1e-12)
    assert all(a < b for a, b in itertools.pairwise(psis))
    assert psis[1] < 0.1 < 0.25 < psis[3]  # reads as stable ... significant
    assert math.isfinite(psis[3])  # an empty cluster is smoothed, not infinite


def test_psi_of_no_observations_is_zero() -> None:
    assert population_stability_index(np.array([0.5, 0.5]), np.array([0, 0])) == 0.0


def test_psi_rejects_mismatched_shapes_with_a_remedy() -> None:
    with pytest.raises(ValueError, match="one count per reference cluster"):
        population_stability_index(np.array([0.5, 0.5]), np.array([1, 2, 3]))


def test_window_keeps_the_records_of_the_last_window_s_seconds() -> None:
    window = DriftWindow([0.5, 0.5], window_s=60.0)
    window.add(np.zeros(7, dtype=int), np.full(7, 0.5), now_s=1000.0)
    window.add(np.ones(3, dtype=int), np.full(3, 0.5), now_s=1030.0)
    snap = window.snapshot()
    assert snap.records == 10
    np.testing.assert_allclose(snap.cluster_shares, [0.7, 0.3])
    window.add(np.ones(5, dtype=int), np.full(5, 0.5), now_s=1061.0)  # the first batch left
    snap = window.snapshot()
    assert snap.records == 8
    np.testing.assert_allclose(snap.cluster_shares, [0.0, 1.0])


def test_the_window_spans_the_same_time_at_any_record_rate() -> None:
    """Ten minutes of stream is ten minutes at 4 or at 4,000 records a second: the records of
    the first minute have left after eleven, however many there were."""
    for per_second in (4, 4000):
        window = DriftWindow([0.5, 0.5], window_s=600.0)
        for second in range(11 * 60):
            cluster = 0 if second < 60 else 1  # the first minute lands in cluster 0
            window.add(np.full(per_second, cluster), np.full(per_second, 0.5), float(second))
        snap = window.snapshot()
        assert snap.records == pytest.approx(600 * per_second, rel=0.01)
        np.testing.assert_allclose(snap.cluster_shares, [0.0, 1.0])


def test_a_stopped_stream_keeps_its_last_window() -> None:
    """Records leave only when a batch comes: a stalled consumer's drift gauges keep describing
    the last records it scored instead of falling to an empty window."""
    window = DriftWindow([0.5, 0.5], window_s=60.0)
    window.add(np.array([0, 1, 1]), np.full(3, 1e-3), now_s=0.0)
    assert window.snapshot().records == 3  # no batch for an hour: nothing to evict against
    window.add(np.array([0]), np.array([0.5]), now_s=3600.0)
    snap = window.snapshot()
    assert snap.records == 1
    assert snap.mean_surprise == pytest.approx(-math.log(0.5))


def test_sums_return_to_exactly_zero_when_every_record_has_left() -> None:
    rng = np.random.default_rng(3)
    window = DriftWindow([0.5, 0.5], window_s=1.0)
    for t in range(50):
        window.add(rng.integers(0, 2, 100), rng.uniform(size=100), now_s=t * 0.01)
    window.add(np.array([], dtype=int), np.array([]), now_s=100.0)
    snap = window.snapshot()
    assert snap.records == 0 and snap.psi == 0.0 and math.isnan(snap.mean_surprise)


def test_mean_surprise_of_uniform_p_values_is_about_one() -> None:
    rng = np.random.default_rng(7)
    window = DriftWindow([0.5, 0.5])
    window.add(rng.integers(0, 2, 5000), rng.uniform(size=5000), now_s=0.0)
    # Exp(1) has sd 1, so the mean of 5000 has sd ≈ 0.014
    assert window.snapshot().mean_surprise == pytest.approx(1.0, abs=0.06)


def test_mean_surprise_of_small_p_values_is_large() -> None:
    rng = np.random.default_rng(7)
    window = DriftWindow([0.5, 0.5])
    window.add(rng.integers(0, 2, 1000), rng.uniform(0, 1e-4, size=1000), now_s=0.0)
    assert window.snapshot().mean_surprise > 9.0  # -ln(1e-4) ≈ 9.2


def test_zero_p_values_are_clipped_to_a_finite_surprise() -> None:
    window = DriftWindow([1.0])
    window.add(np.array([0]), np.array([0.0]), now_s=0.0)
    assert window.snapshot().mean_surprise == pytest.approx(-math.log(1e-300))


def test_unscored_rows_are_not_added() -> None:
    window = DriftWindow([0.5, 0.5])
    window.add(np.array([-1, 0, 1, 5]), np.array([np.nan, 0.5, np.nan, 0.5]), now_s=0.0)
    snap = window.snapshot()
    assert snap.records == 1
    np.testing.assert_allclose(snap.cluster_shares, [1.0, 0.0])


def test_empty_window_snapshot_is_well_defined() -> None:
    snap = DriftWindow([0.2, 0.3, 0.5]).snapshot()
    assert snap.records == 0
    assert snap.psi == 0.0
    assert math.isnan(snap.mean_surprise)
    np.testing.assert_array_equal(snap.cluster_shares, [0.0, 0.0, 0.0])


def test_window_psi_is_against_the_reference_shares() -> None:
    window = DriftWindow([0.5, 0.5])
    window.add(np.array([0] * 80 + [1] * 20), np.full(100, 0.5), now_s=0.0)
    assert window.snapshot().psi == pytest.approx(0.3 * math.log(4), rel=1e-3)


def test_bad_arguments_name_the_remedy() -> None:
    with pytest.raises(ValueError, match="must be > 0 seconds"):
        DriftWindow([1.0], window_s=0)
    with pytest.raises(ValueError, match="one of each"):
        DriftWindow([1.0]).add(np.array([0, 0]), np.array([0.5]), now_s=0.0)
