"""Turn raw scores into p-values, thresholds and severities, from held-out normal scores.

A p-value is the share of normal records expected to score at least as high. In the body of
the reference distribution it is the interpolated empirical tail; beyond the top decile the tail
is extrapolated from the exceedances (peaks over threshold), so that records more extreme than
anything seen in calibration still get distinct, ordered p-values instead of one floor value.

The tail is exponential with an unknown scale, and it is the *predictive* tail that is used (the
exponential averaged over the scale's posterior under the usual 1/scale prior): a Lomax tail
``tail_p * (1 + x / S) ** -m`` for an excess ``x``, with ``m`` excesses summing to ``S``. Plugging
the fitted scale into the exponential instead flags more than the target share of normal records
when the tail holds few points (with 12 calibration rows, about 2.5 times ``fpr`` on average:
a threshold estimated from a handful of points is too low as often as it is too high, and a low
one costs more). With the predictive tail the expected share is ``fpr`` for any number of points;
with hundreds of them the two tails agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The top 10 % of calibration scores (at least 5 of them) define the exponential tail.
_TAIL_FRACTION = 0.10
_MIN_TAIL_POINTS = 5
# Severity 100 is reached at this p-value (one in a million normal records).
SEVERITY_FLOOR_P = 1e-6


@dataclass(frozen=True)
class Calibration:
    reference: np.ndarray  # sorted held-out normal scores
    tail_start: float  # score where the tail takes over
    tail_scale: float  # mean excess over tail_start, in score units
    tail_p: float  # p-value at tail_start
    # Excesses the scale was estimated from (the predictive tail), or None for the plain
    # exponential tail of models saved before the predictive one (format 1).
    tail_points: int | None = None

    @property
    def size(self) -> int:
        return len(self.reference)


def fit_calibration(scores: np.ndarray) -> Calibration:
    """Calibrate against scores of normal records the model was not fitted on."""
    ref = np.sort(np.asarray(scores, dtype=np.float64))
    if len(ref) < 2 or not np.all(np.isfinite(ref)):
        raise ValueError("calibration needs at least 2 finite scores of held-out normal records")
    n = len(ref)
    n_tail = min(n, max(_MIN_TAIL_POINTS, math.ceil(_TAIL_FRACTION * n)))
    start = float(ref[n - n_tail])
    # The scores above the tail's first one, less that one: for an exponential tail these are
    # independent exponential draws (the tail's first score itself is not one).
    excess = ref[n - n_tail + 1 :] - start
    spread = float(ref[-1] - ref[0]) or 1.0
    scale = max(float(excess.mean()), 1e-6 * spread)  # a flat tail must not divide by zero
    tail_p = float(_body_p(ref, np.array([start]))[0])
    return Calibration(
        reference=ref, tail_start=start, tail_scale=scale, tail_p=tail_p, tail_points=len(excess)
    )


def _body_p(ref: np.ndarray, scores: np.ndarray) -> np.ndarray:
    n = len(ref)
    cdf = np.interp(scores, ref, np.arange(1, n + 1) / (n + 1), left=0.0)
    return 1.0 - cdf


def p_values(cal: Calibration, scores: np.ndarray) -> np.ndarray:
    """Continuous, non-increasing in the score; 1 below every reference score."""
    scores = np.asarray(scores, dtype=np.float64)
    body = _body_p(cal.reference, scores)
    excess = (scores - cal.tail_start) / cal.tail_scale  # in units of the mean excess
    m = cal.tail_points
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if m is None:
            tail = cal.tail_p * np.exp(-excess)
        else:
            tail = cal.tail_p * np.exp(-m * np.log1p(excess / m))
    return np.where(scores > cal.tail_start, tail, body)


def threshold_for(cal: Calibration, fpr: float) -> float:
    """The score above which a share ``fpr`` of normal records is expected to fall."""
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"false-alarm rate must be between 0 and 1, got {fpr}")
    if fpr <= cal.tail_p:
        m = cal.tail_points
        if m is None:
            return cal.tail_start + cal.tail_scale * math.log(cal.tail_p / fpr)
        return cal.tail_start + cal.tail_scale * m * math.expm1(math.log(cal.tail_p / fpr) / m)
    n = cal.size
    return float(np.interp(1.0 - fpr, np.arange(1, n + 1) / (n + 1), cal.reference))


def flag_severity(fpr: float) -> float:
    """The severity of a record at the flagging threshold (p-value = ``fpr``): every record
    the model flags is at least this severe (0.01 -> 33.3)."""
    return float(severity(np.array([fpr]))[0])


def severity(p: np.ndarray) -> np.ndarray:
    """0-100 on a log scale of the p-value: p=0.1 -> 17, 0.01 -> 33, 1e-3 -> 50, 1e-6 -> 100."""
    with np.errstate(divide="ignore"):
        logp = np.log(np.clip(p, 0.0, 1.0))
    return np.clip(100.0 * logp / math.log(SEVERITY_FLOOR_P), 0.0, 100.0)
