"""Scoring maths: mixture density, per-field contributions, calibration, severity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture

from detector.calibration import (
    SEVERITY_FLOOR_P,
    fit_calibration,
    p_values,
    severity,
    threshold_for,
)
from detector.mixture import ReferenceMixture, fit_mixture
from detector.schema import SchemaOptions, infer_schema
from detector.scoring import (
    LEGACY_RULE,
    MIN_RESIDUAL_VARIANCE,
    field_contributions,
    residual_variances,
)


def test_mixture_density_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    codes = np.vstack([rng.normal(-3, 1, (300, 3)), rng.normal(3, 0.5, (300, 3))])
    mixture = fit_mixture(codes, max_components=4, seed=0)
    z = rng.normal(0, 3, (50, 3))
    gmm = GaussianMixture(mixture.n_components, covariance_type="full")
    expected = np.zeros(len(z))
    for c in range(mixture.n_components):
        precision = mixture.precision_cholesky[c] @ mixture.precision_cholesky[c].T
        cov = np.linalg.inv(precision)
        expected += mixture.weights[c] * multivariate_normal(mixture.means[c], cov).pdf(z)
    neg_log_density, nearest, distance = mixture.assess(z)
    assert neg_log_density == pytest.approx(-np.log(expected), rel=1e-9)
    assert gmm.n_components == mixture.n_components
    assert set(nearest.tolist()) <= set(range(mixture.n_components))
    assert (distance >= 0).all()


def test_bic_finds_the_number_of_well_separated_clusters() -> None:
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0], [10, 0], [0, 10]])
    codes = np.vstack([rng.normal(c, 1.0, (400, 2)) for c in centres])
    assert fit_mixture(codes, max_components=8, seed=0).n_components == 3


def test_nearest_cluster_is_the_closest_centre() -> None:
    mixture = ReferenceMixture(
        weights=np.array([0.5, 0.5]),
        means=np.array([[0.0, 0.0], [10.0, 0.0]]),
        precision_cholesky=np.stack([np.eye(2), np.eye(2)]),
    )
    _, nearest, distance = mixture.assess(np.array([[1.0, 0.0], [9.0, 0.0], [10.0, 3.0]]))
    assert nearest.tolist() == [0, 1, 1]
    assert distance.tolist() == pytest.approx([1.0, 1.0, 3.0])


def _two_field_schema():  # type: ignore[no-untyped-def]
    return infer_schema(
        {"x": [float(v) for v in np.linspace(0, 99, 100) ** 1.5], "c": ["a", "b"] * 50},
        SchemaOptions(),
    )


def test_rule_2_prices_every_column_as_a_gaussian_residual() -> None:
    schema = _two_field_schema()
    matrix = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    recon = np.array([[2.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    variances = np.array([1.0, 0.5, 0.5, 1.0])
    missing = np.array([[False, False], [True, False]])
    contrib = field_contributions(schema, matrix, recon, variances, missing, rule=LEGACY_RULE)
    present = -math.log1p(-1 / 102)  # x and c were never missing in 100 rows
    assert contrib[0].tolist() == pytest.approx([0.5 * 4 + present, 0.5 * (2 + 2) + present])
    # a field never missing in 100 reference rows: missing costs log(102 / 1) nats
    assert contrib[1, 0] == pytest.approx(math.log(102))


def test_a_category_costs_minus_log_of_its_softmax_probability() -> None:
    schema = _two_field_schema()  # c: one-hot over a, b and "other"
    matrix = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])  # c = a; c = unseen value
    logits = np.array([2.0, 1.0, 3.0])
    recon = np.array([[0.0, *logits], [0.0, *logits]])
    contrib = field_contributions(schema, matrix, recon, np.ones(4), np.zeros((2, 2), bool))
    log_p = logits - np.log(np.exp(logits).sum())
    present = -math.log1p(-1 / 102)
    assert contrib[:, 1].tolist() == pytest.approx([-log_p[0] + present, -log_p[2] + present])
    # the scale of the logits does not matter, only their differences
    shifted = field_contributions(schema, matrix, recon + 100.0, np.ones(4), np.zeros((2, 2), bool))
    assert shifted[:, 1] == pytest.approx(contrib[:, 1])


def test_a_missing_value_is_priced_by_its_missingness_alone() -> None:
    schema = _two_field_schema()
    matrix = np.array([[0.0, 0.5, 0.5, 0.0]])  # both imputed
    recon = np.array([[7.0, 5.0, -5.0, 0.0]])  # far from the imputed values
    contrib = field_contributions(schema, matrix, recon, np.ones(4), np.ones((1, 2), bool))
    assert contrib[0].tolist() == pytest.approx([math.log(102)] * 2)


def test_a_near_constant_flag_is_not_an_infinitely_precise_column() -> None:
    # a 0/1 code set in 1 % of rows, reconstructed perfectly: without a floor its residual
    # variance is ~0 and a flip would cost thousands of nats
    flag = [0.0] * 99 + [1.0]
    schema = infer_schema({"flag": flag, "y": [float(v) for v in range(100)]}, SchemaOptions())
    assert [f.step for f in schema.fields] == [1.0, 0.0]  # 100 distinct values: continuous
    rows = np.zeros((50, 2))
    variances = residual_variances(rows, rows, rows[:10], rows[:10], schema)
    step = 1.0 / schema.fields[0].scale  # one unit of the code, in encoded units
    assert variances[0] >= step**2 / 12
    flipped = field_contributions(
        schema, np.array([[step, 0.0]]), np.zeros((1, 2)), variances, np.zeros((1, 2), bool)
    )
    assert flipped[0, 0] <= 0.5 * 12 + 0.1  # a full step costs at most 6 nats


def test_continuous_fields_have_no_step_and_booleans_a_step_of_one() -> None:
    rng = np.random.default_rng(0)
    schema = infer_schema(
        {"x": rng.normal(size=90).tolist(), "b": [True, False] * 45, "k": [1.0, 3.0, 5.0] * 30},
        SchemaOptions(),
    )
    assert [f.step for f in schema.fields] == [0.0, 1.0, 2.0]
    assert schema.column_steps()[2] == pytest.approx(2.0 / schema.fields[2].scale)


def test_rule_2_residual_variances_are_floored_and_scaled_to_held_out_rows() -> None:
    fit = np.zeros((4, 2))
    fit_recon = np.array([[0.0, 1.0], [0.0, -1.0], [0.0, 1.0], [0.0, -1.0]])
    assert residual_variances(fit, fit_recon, fit, fit_recon).tolist() == [
        MIN_RESIDUAL_VARIANCE,
        1.0,
    ]
    # held-out residuals twice as large as on the fitted rows: every variance scales by the
    # mean normalised squared residual, so the per-column shape is kept
    held = np.zeros((2, 2))
    held_recon = np.array([[0.2, 2.0], [-0.2, -2.0]])
    scale = np.mean([0.04 / MIN_RESIDUAL_VARIANCE, 4.0])
    assert residual_variances(fit, fit_recon, held, held_recon) == pytest.approx(
        [MIN_RESIDUAL_VARIANCE * scale, scale]
    )


def test_p_values_are_the_empirical_tail_in_the_body() -> None:
    cal = fit_calibration(np.arange(1.0, 100.0))  # 1..99
    p = p_values(cal, np.array([-5.0, 50.0, 80.0]))
    assert p.tolist() == pytest.approx([1.0, 0.5, 0.2])


def test_p_values_are_continuous_and_decreasing_into_the_tail() -> None:
    rng = np.random.default_rng(2)
    cal = fit_calibration(rng.exponential(1.0, 5000))
    grid = np.linspace(0, 30, 3001)
    p = p_values(cal, grid)
    assert np.all(np.diff(p) <= 1e-12)
    below, above = p_values(cal, np.array([cal.tail_start - 1e-9, cal.tail_start + 1e-9]))
    assert below == pytest.approx(above, abs=1e-6)  # no jump where the tail takes over
    # beyond every calibration score the tail keeps ordering records
    far = p_values(cal, np.array([20.0, 25.0, 30.0]))
    assert far[0] > far[1] > far[2] > 0
    # with hundreds of tail points the predictive tail is the exponential: p(x) ~ exp(-x)
    assert p_values(cal, np.array([12.0]))[0] == pytest.approx(math.exp(-12.0), rel=0.5)


@pytest.mark.parametrize("fpr", [0.2, 0.05, 0.01, 0.001])
def test_threshold_inverts_p_values(fpr: float) -> None:
    cal = fit_calibration(np.random.default_rng(3).normal(0, 1, 2000))
    t = threshold_for(cal, fpr)
    assert p_values(cal, np.array([t]))[0] == pytest.approx(fpr, rel=1e-6)


def test_threshold_holds_the_false_alarm_rate_on_fresh_normal_scores() -> None:
    rng = np.random.default_rng(4)
    cal = fit_calibration(rng.gamma(3.0, 2.0, 4000))
    fresh = rng.gamma(3.0, 2.0, 200_000)
    for fpr in (0.05, 0.01, 0.002):
        rate = float((fresh > threshold_for(cal, fpr)).mean())
        assert rate == pytest.approx(fpr, rel=0.35)


@pytest.mark.parametrize("n", [12, 50])
def test_few_calibration_scores_still_hold_the_false_alarm_rate_on_average(n: int) -> None:
    # 3,000 calibrations, each on n scores of an exponential distribution, whose true tail is
    # known: the share of fresh normals above each threshold, averaged, is the target. (Plugging
    # the fitted scale into the exponential gave 0.043 for n = 12 and 0.022 for n = 50.)
    samples = np.random.default_rng(5).exponential(1.0, (3000, n))
    exceeded = [math.exp(-threshold_for(fit_calibration(scores), 0.01)) for scores in samples]
    assert float(np.mean(exceeded)) == pytest.approx(0.01, abs=0.002)


def test_threshold_rejects_nonsense_rates() -> None:
    cal = fit_calibration(np.arange(10.0))
    with pytest.raises(ValueError, match="false-alarm rate must be between 0 and 1, got 1.5"):
        threshold_for(cal, 1.5)


def test_calibration_needs_scores() -> None:
    with pytest.raises(ValueError, match="at least 2 finite scores"):
        fit_calibration(np.array([1.0]))


def test_severity_is_a_log_scale_of_the_p_value() -> None:
    s = severity(np.array([1.0, 0.1, 0.01, 1e-3, SEVERITY_FLOOR_P, 1e-30, 0.0]))
    assert s.tolist() == pytest.approx([0.0, 100 / 6, 100 / 3, 50.0, 100.0, 100.0, 100.0])
