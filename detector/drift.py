"""Drift maths: is the recent stream still shaped like the reference data?

Two views of the same question, both cheap enough to update once per micro-batch:

* **Which reference cluster records land in.** The reference mixture's weights say what share
  of normal records belongs to each cluster; :func:`population_stability_index` compares the
  recent shares with them.
* **How surprising records are.** A calibrated p-value is uniform on [0, 1] for records drawn
  from the reference distribution, so the surprise ``-ln(p)`` follows Exp(1) and its mean is
  **1.0**. A recent mean well above 1 means records are, on the whole, less typical than the
  reference data, even if few of them cross the alarm threshold.

:class:`DriftWindow` keeps both over the records scored in the last ``window_s`` seconds (ten
minutes by default): a window in time, so its time constant is the same at 40 records a second
and at 40,000. Pure numpy, the clock passed in: the metrics adapter (``streams/metrics.py``) turns
snapshots into gauges.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_WINDOW_S = 600.0  # ten minutes, the window of the flagged-share alert
# The window is kept as this many time slices of window_s / SLICES each: memory and the cost of a
# batch do not grow with the record rate, and records leave the window a slice at a time.
SLICES = 600
MIN_P_VALUE = 1e-300  # surprise is at most -ln(1e-300) ≈ 690.8 nats


def _shares(values: np.ndarray, what: str) -> np.ndarray:
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"{what} must be a non-empty 1-d array, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"{what} must be finite and non-negative, got {values.tolist()}")
    total = values.sum()
    if total <= 0:
        raise ValueError(f"{what} sum to 0: give at least one positive value")
    return np.asarray(values / total, dtype=np.float64)


def population_stability_index(
    reference_shares: np.ndarray, observed_counts: np.ndarray, epsilon: float = 1e-4
) -> float:
    """PSI between the reference cluster shares and the observed counts per cluster.

    ``PSI = Σ (o - e) · ln(o / e)`` where ``e`` are the reference shares and ``o`` the observed
    shares. Both are normalised, then smoothed by ``epsilon`` and renormalised, so an empty
    cluster gives a large but finite term. No observations give 0.0 (no evidence of a shift).

    The usual reading: below 0.1 the population is stable, 0.1 to 0.25 is a moderate shift,
    above 0.25 a significant one. PSI is a symmetrised Kullback-Leibler divergence, in nats.

    >>> round(population_stability_index(np.array([0.5, 0.5]), np.array([80, 20]), 0.0), 4)
    0.4159
    >>> population_stability_index(np.array([0.2, 0.8]), np.array([20, 80]))
    0.0
    """
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    expected = _shares(np.asarray(reference_shares, dtype=np.float64), "reference_shares")
    counts = np.asarray(observed_counts, dtype=np.float64)
    if counts.shape != expected.shape:
        raise ValueError(
            f"observed_counts has shape {counts.shape} but reference_shares has "
            f"{expected.shape}: give one count per reference cluster"
        )
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(f"observed_counts must be finite and non-negative, got {counts.tolist()}")
    if counts.sum() == 0:
        return 0.0
    observed = counts / counts.sum()
    e = (expected + epsilon) / (1.0 + epsilon * len(expected))
    o = (observed + epsilon) / (1.0 + epsilon * len(observed))
    return float(np.sum((o - e) * np.log(o / e)))


@dataclass(frozen=True)
class DriftSnapshot:
    """The drift window's state. For an empty window: ``records == 0``, shares all 0,
    ``psi == 0.0`` (no evidence of a shift) and ``mean_surprise`` NaN (no estimate)."""

    records: int
    cluster_shares: np.ndarray  # [K] share of the window's records per reference cluster
    psi: float  # vs the reference shares; > 0.25 is a significant shift
    mean_surprise: float  # mean of -ln(p_value); 1.0 under the reference distribution


class DriftWindow:
    """Nearest cluster and surprise ``-ln(p_value)`` of the records scored in the last
    ``window_s`` seconds, as of the newest batch.

    Records are summed into time slices of ``window_s / 600`` (cluster counts, surprise sum), and
    a whole slice leaves the window once it is older than ``window_s``: :meth:`add` is O(batch +
    clusters) and :meth:`snapshot` O(clusters), whatever the record rate. Records leave only when
    a batch comes: while the stream is stopped the window keeps describing its last ten minutes
    rather than emptying. Rows the detector could not score (cluster outside ``0..K-1``, e.g. -1,
    or a NaN p-value) are not added. p-values are clipped to ``[1e-300, 1]`` so surprises are
    finite and >= 0.
    """

    def __init__(
        self, reference_shares: Sequence[float], window_s: float = DEFAULT_WINDOW_S
    ) -> None:
        if not window_s > 0:
            raise ValueError(f"drift window must be > 0 seconds, got {window_s}")
        self.reference_shares = _shares(
            np.asarray(reference_shares, dtype=np.float64), "reference_shares"
        )
        self.window_s = float(window_s)
        self._slice_s = self.window_s / SLICES
        # (slice start, cluster counts, surprise sum), oldest first
        self._slices: deque[tuple[float, np.ndarray, float]] = deque()
        self._counts = np.zeros(self.n_clusters, dtype=np.int64)
        self._surprise = 0.0

    @property
    def n_clusters(self) -> int:
        return len(self.reference_shares)

    def add(self, clusters: np.ndarray, p_values: np.ndarray, now_s: float) -> None:
        """Add one batch scored at ``now_s`` (seconds, any clock that only goes forward): the
        nearest reference cluster and the p-value of each record."""
        c = np.asarray(clusters).ravel()
        p = np.asarray(p_values, dtype=np.float64).ravel()
        if c.shape != p.shape:
            raise ValueError(
                f"clusters has {len(c)} entries but p_values has {len(p)}: give one of each "
                "per scored record"
            )
        self._evict(now_s)
        keep = (c >= 0) & (c < self.n_clusters) & ~np.isnan(p)
        counts = np.bincount(c[keep].astype(np.int64), minlength=self.n_clusters)
        surprise = float(-np.log(np.clip(p[keep], MIN_P_VALUE, 1.0)).sum())
        self._counts += counts
        self._surprise += surprise
        if self._slices and now_s < self._slices[-1][0] + self._slice_s:
            start, slice_counts, slice_surprise = self._slices[-1]
            self._slices[-1] = (start, slice_counts + counts, slice_surprise + surprise)
        else:
            self._slices.append((now_s, counts, surprise))

    def _evict(self, now_s: float) -> None:
        while self._slices and self._slices[0][0] <= now_s - self.window_s:
            _, counts, surprise = self._slices.popleft()
            self._counts -= counts
            self._surprise -= surprise
        if not self._slices:  # exactly zero, whatever rounding the sums collected
            self._counts[:] = 0
            self._surprise = 0.0

    def snapshot(self) -> DriftSnapshot:
        n = int(self._counts.sum())
        if n == 0:
            return DriftSnapshot(0, np.zeros(self.n_clusters), 0.0, float("nan"))
        return DriftSnapshot(
            records=n,
            cluster_shares=self._counts / n,
            psi=population_stability_index(self.reference_shares, self._counts),
            mean_surprise=max(self._surprise / n, 0.0),
        )
