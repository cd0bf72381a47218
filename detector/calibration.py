"""Turn raw scores into p-values, thresholds and severities, from held-out normal scores.

A p-value is the share of normal records expected to score at least as high. In the body of
the reference distribution it is the interpolated empirical tail; beyond the top decile the tail
is extrapolated with an exponential fitted to the exceedances (peaks over threshold), so that
records more extreme than anything seen in calibration still get distinct, ordered p-values
instead of one floor value.
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
    tail_start: float  # score where the exponential tail takes over
    tail_scale: float  # mean excess over tail_start, in score units
    tail_p: float  # p-value at tail_start

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
    excess = ref[n - n_tail :] - start
    spread = float(ref[-1] - ref[0]) or 1.0
    scale = max(float(excess.mean()), 1e-6 * spread)  # a flat tail must not divide by zero
    tail_p = float(_body_p(ref, np.array([start]))[0])
    return Calibration(reference=ref, tail_start=start, tail_scale=scale, tail_p=tail_p)


def _body_p(ref: np.ndarray, scores: np.ndarray) -> np.ndarray:
    n = len(ref)
    cdf = np.interp(scores, ref, np.arange(1, n + 1) / (n + 1), left=0.0)
    return 1.0 - cdf


def p_values(cal: Calibration, scores: np.ndarray) -> np.ndarray:
    """Continuous, non-increasing in the score; 1 below every reference score."""
    scores = np.asarray(scores, dtype=np.float64)
    body = _body_p(cal.reference, scores)
    with np.errstate(over="ignore", invalid="ignore"):
        tail = cal.tail_p * np.exp(-(scores - cal.tail_start) / cal.tail_scale)
    return np.where(scores > cal.tail_start, tail, body)


def threshold_for(cal: Calibration, fpr: float) -> float:
    """The score above which a share ``fpr`` of normal records is expected to fall."""
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"false-alarm rate must be between 0 and 1, got {fpr}")
    if fpr <= cal.tail_p:
        return cal.tail_start + cal.tail_scale * math.log(cal.tail_p / fpr)
    n = cal.size
    return float(np.interp(1.0 - fpr, np.arange(1, n + 1) / (n + 1), cal.reference))


def severity(p: np.ndarray) -> np.ndarray:
    """0-100 on a log scale of the p-value: p=0.1 -> 17, 0.01 -> 33, 1e-3 -> 50, 1e-6 -> 100."""
    with np.errstate(divide="ignore"):
        logp = np.log(np.clip(p, 0.0, 1.0))
    return np.clip(100.0 * logp / math.log(SEVERITY_FLOOR_P), 0.0, 100.0)
