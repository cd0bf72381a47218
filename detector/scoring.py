"""Scoring maths: from encoded rows and the model's outputs to anomaly scores.

One convention everywhere: **higher = more anomalous**. Scores are in nats (negative
log-likelihood units) so that they add up::

    score = density + reconstruction

* ``density`` is -log p(z) of the record's latent code under the reference mixture;
* ``reconstruction`` is -log p(x | z): for numbers and booleans a Gaussian residual with
  per-column variances learnt on normal data, for a category -log of the decoder's softmax
  probability of its value, plus -log of the reference probability of each field's
  missingness, up to a constant. Its per-field terms are the explanation.

Models saved before format 3 keep score rule 2 (below).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.calibration import Calibration, p_values, severity
from detector.schema import Schema

# Per-column residual variances are floored (in standardised units): a column that normal data
# reconstructs perfectly (a constant, a one-hot that never fires) must not make any deviation
# infinitely surprising.
MIN_RESIDUAL_VARIANCE = 1e-2


@dataclass(frozen=True)
class Calibrations:
    density: Calibration
    reconstruction: Calibration
    score: Calibration
    threshold: float  # score at the chosen false-alarm rate
    fpr: float


@dataclass(frozen=True)
class ScoreBatch:
    """Scores for a batch, one entry per input row; invalid rows hold NaN / -1 / False."""

    score: np.ndarray
    p_value: np.ndarray
    severity: np.ndarray
    flagged: np.ndarray
    density: np.ndarray
    density_p_value: np.ndarray
    reconstruction: np.ndarray
    reconstruction_p_value: np.ndarray
    cluster: np.ndarray
    cluster_distance: np.ndarray
    contributions: np.ndarray  # [n, n_fields] nats, sums to reconstruction
    expected: np.ndarray  # [n, width] decoder output in encoded units
    latent: np.ndarray  # [n, latent_dim] posterior means
    valid: np.ndarray
    reasons: tuple[str | None, ...]

    def __len__(self) -> int:
        return len(self.score)


# Score rules: how a model turns its network's outputs into nats. A model keeps the rule it was
# calibrated with (the model format says which), so an older model scores as it always did.
# 2: every encoded column a Gaussian residual (one-hot columns too), imputed values' residuals
#    counted.
# 3: numbers and booleans Gaussian residuals with a variance no finer than the field's
#    resolution step; a categorical field -log softmax(decoder logits)[value]; a missing value
#    priced by its missingness alone.
LEGACY_RULE = 2
SCORE_RULE = 3


def residual_variances(
    fit_rows: np.ndarray,
    fit_reconstruction: np.ndarray,
    holdout_rows: np.ndarray,
    holdout_reconstruction: np.ndarray,
    schema: Schema | None = None,
) -> np.ndarray:
    """Per-column residual variances of normal rows, floored.

    The shape across columns comes from the (many) rows the VAE was fitted on; one scale factor
    from the held-out rows corrects for the fit being optimistic about its own rows, so that a
    held-out normal record costs about half a nat per column, as a calibrated Gaussian would.
    With a ``schema`` (rule 3) only the Gaussian columns are estimated (one-hot columns get 1,
    unused), each floored at its resolution step's variance (step^2 / 12, a uniform rounding
    error): a near-constant 0/1 column is not a near-infinitely precise one.
    """
    residual = np.mean((fit_reconstruction - fit_rows) ** 2, axis=0)
    floor = np.full(residual.shape, MIN_RESIDUAL_VARIANCE)
    if schema is not None:
        floor = np.maximum(floor, schema.column_steps() ** 2 / 12.0)
    shape = np.maximum(residual, floor)
    cols = slice(None) if schema is None else schema.gaussian_columns
    held = (holdout_reconstruction - holdout_rows)[:, cols] ** 2 / shape[cols]
    held_out = float(np.mean(held)) if held.size else 1.0
    out = shape * max(held_out, 1.0)
    if schema is not None:
        gaussian = np.zeros(len(out), dtype=bool)
        gaussian[cols] = True
        out[~gaussian] = 1.0
    return out


def field_contributions(
    schema: Schema,
    matrix: np.ndarray,
    reconstruction: np.ndarray,
    variances: np.ndarray,
    missing: np.ndarray,
    *,
    rule: int = SCORE_RULE,
) -> np.ndarray:
    """Per-field reconstruction negative log-likelihood in nats, [n, n_fields]."""
    # 0.5 * (reconstruction - matrix) ** 2 / variances, in place: the same operations in the
    # same order (the same bits), without four temporary matrices.
    per_column = reconstruction.astype(np.float64)
    if rule >= SCORE_RULE and schema.categorical_slices:
        logits = per_column.copy()
    per_column -= matrix
    np.square(per_column, out=per_column)
    per_column *= 0.5
    per_column /= variances
    if rule >= SCORE_RULE:
        for cols in schema.categorical_slices:
            block = logits[:, cols]
            top = block.max(axis=1, keepdims=True)
            log_norm = top[:, 0] + np.log(np.exp(block - top).sum(axis=1))
            observed = (block * matrix[:, cols]).sum(axis=1)  # one-hot (or shares if missing)
            per_column[:, cols] = 0.0
            per_column[:, cols.start] = log_norm - observed
    if schema.width == len(schema.fields):  # one column per field: nothing to add up
        per_field = per_column
    else:
        starts = np.array([s.start for s in schema.slices], dtype=np.intp)
        per_field = np.add.reduceat(per_column, starts, axis=1)
    if rule >= SCORE_RULE and missing.any():
        per_field[missing] = 0.0  # an imputed value says nothing: its missingness is priced
    q = schema.missing_probabilities()
    per_field += np.where(missing, -np.log(q), -np.log1p(-q))
    return per_field


def combine(density: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    """The anomaly score: the record's estimated negative log-likelihood, in nats."""
    return density + reconstruction


@dataclass(frozen=True)
class Calibrated:
    """The calibrated part of a :class:`ScoreBatch`, for valid rows only."""

    score: np.ndarray
    p_value: np.ndarray
    severity: np.ndarray
    flagged: np.ndarray
    density_p_value: np.ndarray
    reconstruction_p_value: np.ndarray


def calibrated(cal: Calibrations, density: np.ndarray, reconstruction: np.ndarray) -> Calibrated:
    """Combined score, p-values, severity and the flag decision for valid rows."""
    score = combine(density, reconstruction)
    p = p_values(cal.score, score)
    return Calibrated(
        score=score,
        p_value=p,
        severity=severity(p),
        flagged=score > cal.threshold,
        density_p_value=p_values(cal.density, density),
        reconstruction_p_value=p_values(cal.reconstruction, reconstruction),
    )
