"""Reference clusters: a Gaussian mixture over the latent codes of normal records.

scikit-learn fits it (number of components by BIC); scoring uses only the plain arrays below,
so the artifact stores arrays, not an estimator, and scoring needs no sklearn object.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

# Added to covariance diagonals: latent codes of a VAE can collapse along a direction.
_REG_COVAR = 1e-4
# At least this many training codes per component before more components are even tried.
_ROWS_PER_COMPONENT = 10


@dataclass(frozen=True)
class ReferenceMixture:
    weights: np.ndarray  # [K]
    means: np.ndarray  # [K, k]
    precision_cholesky: np.ndarray  # [K, k, k]; precision = L @ L.T

    @property
    def n_components(self) -> int:
        return len(self.weights)

    def component_log_densities(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log(weight_c * N(z; mean_c, cov_c)) and the squared Mahalanobis distance to each
        component, both [n, K]."""
        n, k = z.shape
        log_w = np.log(self.weights)
        out = np.empty((n, self.n_components))
        maha = np.empty((n, self.n_components))
        for c in range(self.n_components):
            y = (z - self.means[c]) @ self.precision_cholesky[c]
            maha[:, c] = np.einsum("ij,ij->i", y, y)
            log_det = np.log(np.diagonal(self.precision_cholesky[c])).sum()
            out[:, c] = log_w[c] + log_det - 0.5 * (k * math.log(2 * math.pi) + maha[:, c])
        return out, maha

    def assess(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Negative log-density (nats), nearest cluster (highest responsibility) and the
        Mahalanobis distance to that cluster's centre, for each latent code."""
        comp, maha = self.component_log_densities(z.astype(np.float64, copy=False))
        top = comp.max(axis=1, keepdims=True)
        log_density = (top + np.log(np.exp(comp - top).sum(axis=1, keepdims=True)))[:, 0]
        nearest = comp.argmax(axis=1)
        distance = np.sqrt(maha[np.arange(len(z)), nearest])
        return -log_density, nearest, distance


def fit_mixture(codes: np.ndarray, max_components: int, seed: int) -> ReferenceMixture:
    """Fit full-covariance mixtures with 1..max_components components and keep the lowest BIC.

    On one BLAS thread: the matrices are at most 16 x 16, too small for threads to help, and
    on a busy machine a threaded BLAS spends most of its time waking threads for each of the
    thousands of tiny solves (the fit's slowest part by far, for the same result)."""
    codes = codes.astype(np.float64, copy=False)
    limit = max(1, min(max_components, len(codes) // _ROWS_PER_COMPONENT))
    best: tuple[float, GaussianMixture] | None = None
    with threadpool_limits(limits=1, user_api="blas"):
        for k in range(1, limit + 1):
            gmm = GaussianMixture(
                k, covariance_type="full", reg_covar=_REG_COVAR, random_state=seed
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                gmm.fit(codes)
            bic = float(gmm.bic(codes))
            if best is None or bic < best[0]:
                best = (bic, gmm)
    assert best is not None
    gmm = best[1]
    return ReferenceMixture(
        weights=np.asarray(gmm.weights_, dtype=np.float64),
        means=np.asarray(gmm.means_, dtype=np.float64),
        precision_cholesky=np.asarray(gmm.precisions_cholesky_, dtype=np.float64),
    )
