"""ADBench's four synthetic anomaly types, generated from real normal records of mixed types.

Han et al. (ADBench, NeurIPS 2022) generate anomalies of a known kind from the normal data so
that a result says *which kind* a detector catches. Here, for records with numbers, strings,
booleans and missing values:

* **local**: numbers from a Gaussian mixture fitted to the normal rows' numbers (scaled to
  [0, 1]) with every covariance multiplied by 5; the other fields, and which fields are
  missing, from a random normal record;
* **global**: every number uniform over its normal range widened by 10 % on each side, every
  string or boolean uniform over the values seen in normal records;
* **dependency**: a real normal record with a quarter of its fields (at least 3, strings and
  booleans among them when it has any) replaced by the values of other random normal records:
  each value is normal on its own, only the combination is not;
* **clustered**: numbers from one component of that mixture with its mean multiplied by 5, the
  other fields from one random normal record shared by the whole cluster.
"""

from __future__ import annotations

import numpy as np
from sklearn.mixture import GaussianMixture

TYPES = ("local", "global", "dependency", "clustered")
_ALPHA = 5.0  # ADBench's scale for local (covariance) and clustered (mean) anomalies

Columns = dict[str, list[object]]


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _numeric_fields(columns: Columns) -> list[str]:
    return [
        k
        for k, vs in columns.items()
        if any(v is not None for v in vs) and all(v is None or _is_number(v) for v in vs)
    ]


def _mixture(x: np.ndarray, seed: int) -> GaussianMixture:
    best: tuple[float, GaussianMixture] | None = None
    for k in range(1, min(5, len(x) // 50) + 1):
        gmm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=seed)
        gmm.fit(x)
        bic = gmm.bic(x)
        if best is None or bic < best[0]:
            best = (bic, gmm)
    assert best is not None
    return best[1]


def generate(columns: Columns, kind: str, n: int, seed: int) -> Columns:
    """``n`` anomalous records of ``kind`` made from the normal records in ``columns``."""
    rng = np.random.default_rng(seed)
    names = list(columns)
    rows = len(columns[names[0]])
    numeric = _numeric_fields(columns)
    base = rng.integers(0, rows, n)
    out: Columns = {k: [columns[k][i] for i in base] for k in names}
    if kind == "dependency":
        k = min(len(names) - 1, max(3, len(names) // 4))
        other = [f for f in names if f not in numeric]
        for r in range(n):
            chosen = list(rng.choice(names, k, replace=False))
            if other and not set(chosen) & set(other):
                chosen[0] = str(rng.choice(other))
            for f in chosen:
                out[f][r] = columns[f][int(rng.integers(0, rows))]
        return out
    if kind == "global":
        for f in names:
            if f in numeric:
                vals = np.array([v for v in columns[f] if v is not None], dtype=float)
                lo, hi = vals.min(), vals.max()
                pad = 0.1 * (hi - lo)
                out[f] = rng.uniform(lo - pad, hi + pad, n).tolist()
            else:
                seen = sorted({v for v in columns[f] if v is not None}, key=str)
                out[f] = [seen[i] for i in rng.integers(0, len(seen), n)]
        return out
    if not numeric:
        raise ValueError(f"{kind} anomalies need numeric fields")
    x = np.array([[np.nan if v is None else v for v in columns[f]] for f in numeric]).T
    x = np.where(np.isnan(x), np.nanmedian(x, axis=0), x)
    lo, span = x.min(axis=0), np.ptp(x, axis=0)
    span = np.where(span > 0, span, 1.0)
    gmm = _mixture((x - lo) / span, seed)
    if kind == "local":
        gmm.covariances_ = gmm.covariances_ * _ALPHA
        sample, _ = gmm.sample(n)
    elif kind == "clustered":
        c = int(rng.choice(len(gmm.weights_), p=gmm.weights_))
        sample = rng.multivariate_normal(gmm.means_[c] * _ALPHA, gmm.covariances_[c], n)
        shared = int(rng.integers(0, rows))
        for f in names:
            if f not in numeric:
                out[f] = [columns[f][shared]] * n
    else:
        raise ValueError(f"unknown anomaly type {kind!r}: one of {', '.join(TYPES)}")
    sample = sample[rng.permutation(n)] * span + lo
    for j, f in enumerate(numeric):
        out[f] = [None if out[f][r] is None else float(sample[r, j]) for r in range(n)]
    return out
