"""Drift maths: is the recent stream still shaped like the reference data?

Two views of the same question, both cheap enough to update once per micro-batch:

* **Which reference cluster records land in.** The reference mixture's weights say what share
  of normal records belongs to each cluster; :func:`population_stability_index` compares the
  recent shares with them.
* **How surprising records are.** A calibrated p-value is uniform on [0, 1] for records drawn
  from the reference distribution, so the surprise ``-ln(p)`` follows Exp(1) and its mean is
  **1.0**. A recent mean well above 1 means records are, on the whole, less typical than the
  reference data, even if few of them cross the alarm threshold.

:class:`DriftWindow` keeps both over the last ``size`` scored records. Pure numpy: the metrics
adapter (``streams/metrics.py``) turns snapshots into gauges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_WINDOW_SIZE = 5000
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
    """The last ``size`` scored records' nearest cluster and surprise ``-ln(p_value)``.

    A ring buffer: :meth:`add` is vectorised and O(batch), :meth:`snapshot` is O(size). Rows
    the detector could not score (cluster outside ``0..K-1``, e.g. -1, or a NaN p-value) are
    not added. p-values are clipped to ``[1e-300, 1]`` so surprises are finite and >= 0.
    """

    def __init__(self, reference_shares: Sequence[float], size: int = DEFAULT_WINDOW_SIZE) -> None:
        if size < 1:
            raise ValueError(f"drift window size must be >= 1, got {size}")
        self.reference_shares = _shares(
            np.asarray(reference_shares, dtype=np.float64), "reference_shares"
        )
        self.size = size
        self._clusters = np.zeros(size, dtype=np.int64)
        self._surprise = np.zeros(size, dtype=np.float64)
        self._next = 0  # ring position of the next write
        self._filled = 0

    @property
    def n_clusters(self) -> int:
        return len(self.reference_shares)

    def add(self, clusters: np.ndarray, p_values: np.ndarray) -> None:
        """Add one batch: the nearest reference cluster and the p-value of each record."""
        c = np.asarray(clusters).ravel()
        p = np.asarray(p_values, dtype=np.float64).ravel()
        if c.shape != p.shape:
            raise ValueError(
                f"clusters has {len(c)} entries but p_values has {len(p)}: give one of each "
                "per scored record"
            )
        keep = (c >= 0) & (c < self.n_clusters) & ~np.isnan(p)
        c = c[keep].astype(np.int64)[-self.size :]
        surprise = -np.log(np.clip(p[keep], MIN_P_VALUE, 1.0))[-self.size :]
        n = len(c)
        # At most two slice writes: up to the end of the buffer, then from its start.
        head = min(n, self.size - self._next)
        self._clusters[self._next : self._next + head] = c[:head]
        self._surprise[self._next : self._next + head] = surprise[:head]
        self._clusters[: n - head] = c[head:]
        self._surprise[: n - head] = surprise[head:]
        self._next = (self._next + n) % self.size
        self._filled = min(self._filled + n, self.size)

    def snapshot(self) -> DriftSnapshot:
        n = self._filled
        if n == 0:
            return DriftSnapshot(0, np.zeros(self.n_clusters), 0.0, float("nan"))
        counts = np.bincount(self._clusters[:n], minlength=self.n_clusters)
        return DriftSnapshot(
            records=n,
            cluster_shares=counts / n,
            psi=population_stability_index(self.reference_shares, counts),
            mean_surprise=float(self._surprise[:n].mean()),
        )
