"""Score variants from one fitted model: design experiments on the development splits.

For each data set and seed, fits latentwatch's default model once and scores the test half in
several ways that need no retraining, so the variants are compared on the very same networks.
Meant for the development splits (seeds 100..104); the reported test splits (0..4) are
bench/detection.py's. AUROC / AUPRC, mean of the seeds, mean over the data sets last.

    python bench/variants.py                          # seeds 100..104, all nine data sets
    python bench/variants.py --datasets wbc,wine --seeds 2

Variants (all in nats, higher = more anomalous):
    default        the model's score: -log p_mix(mean code) + Gaussian reconstruction NLL
    density, reconstruction   each term alone
    t3, t5, t10    reconstruction NLL under a Student-t with 3, 5, 10 degrees of freedom
    sampled-mix    the mixture fitted to 10 posterior draws per training row, not to the means
    sampled-mix+t5 both of the above
    iwae           importance-weighted -log p(x) (16 draws) with the mixture as the prior
    iwae-sampled   the same with the mixture fitted to posterior draws
    neg-elbo       -ELBO with the mixture as the prior (16 draws)
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from detection import DATASETS, DEFAULT_DIR, load, split
from scipy.special import gammaln, logsumexp
from sklearn.metrics import average_precision_score, roc_auc_score

from detector.detector import Detector, DetectorConfig, _forward
from detector.encoding import encode_columns
from detector.mixture import ReferenceMixture, fit_mixture
from detector.scoring import field_contributions
from detector.training import TrainingConfig

DRAWS = 16
FIT_DRAWS = 10


def columns(x: np.ndarray) -> dict[str, np.ndarray]:
    return {f"x{j}": x[:, j] for j in range(x.shape[1])}


def student_t_nll(sq_over_var: np.ndarray, var: np.ndarray, nu: float) -> np.ndarray:
    """Per-column -log t_nu(residual) with the scale that gives the Gaussian's variance."""
    scale2 = var * (nu - 2) / nu
    const = -gammaln((nu + 1) / 2) + gammaln(nu / 2) + 0.5 * np.log(nu * np.pi * scale2)
    return const + (nu + 1) / 2 * np.log1p(sq_over_var * var / (nu * scale2))


def sampled_mixture(det: Detector, train: np.ndarray, seed: int) -> ReferenceMixture:
    """The mixture on FIT_DRAWS posterior draws of each row the VAE was fitted on."""
    batch = encode_columns(det.schema, columns(train), len(train))
    rows = batch.matrix[batch.valid].astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(rows))  # as Detector.fit splits
    fit = order[max(round(det.config.holdout_fraction * len(rows)), 2) :]
    with torch.inference_mode():
        mean, logvar = det.vae.encode(torch.from_numpy(rows[fit]))
        noise = torch.randn((FIT_DRAWS, *mean.shape), generator=torch.Generator().manual_seed(seed))
        draws = (mean[None] + noise * torch.exp(0.5 * logvar)[None]).reshape(-1, mean.shape[1])
    return fit_mixture(draws.numpy(), det.config.max_components, seed)


def variants(
    det: Detector, train: np.ndarray, test: np.ndarray, seed: int
) -> dict[str, np.ndarray]:
    batch = encode_columns(det.schema, columns(test), len(test))
    x = batch.matrix.astype(np.float32)
    var = det.variances
    latent, recon = _forward(det.vae, x)
    density, _, _ = det.mixture.assess(latent)
    reconstruction = field_contributions(det.schema, x, recon, var, batch.missing).sum(axis=1)
    sq_over_var = (recon.astype(np.float64) - x) ** 2 / var
    sampled = sampled_mixture(det, train, seed)
    sampled_density, _, _ = sampled.assess(latent)
    out = {
        "default": density + reconstruction,
        "density": density,
        "reconstruction": reconstruction,
        **{f"t{nu}": density + student_t_nll(sq_over_var, var, nu).sum(1) for nu in (3, 5, 10)},
        "sampled-mix": sampled_density + reconstruction,
        "sampled-mix+t5": sampled_density + student_t_nll(sq_over_var, var, 5).sum(1),
    }

    with torch.inference_mode():
        mean, logvar = det.vae.encode(torch.from_numpy(x))
        noise = torch.randn((DRAWS, *mean.shape), generator=torch.Generator().manual_seed(seed))
        z = mean[None] + noise * torch.exp(0.5 * logvar)[None]
        decoded = det.vae.decode(z.reshape(-1, mean.shape[1])).reshape(DRAWS, *x.shape)
    z64, decoded64 = z.numpy().astype(np.float64), decoded.numpy().astype(np.float64)
    log_q = -0.5 * (noise.numpy() ** 2 + np.log(2 * np.pi) + logvar.numpy()[None]).sum(-1)
    log_w = np.empty((DRAWS, len(x)))
    log_w_sampled = np.empty((DRAWS, len(x)))
    for d in range(DRAWS):
        nll_x = (0.5 * (decoded64[d] - x) ** 2 / var + 0.5 * np.log(2 * np.pi * var)).sum(1)
        prior, _, _ = det.mixture.assess(z64[d])
        prior_sampled, _, _ = sampled.assess(z64[d])
        log_w[d] = -nll_x - prior - log_q[d]
        log_w_sampled[d] = -nll_x - prior_sampled - log_q[d]
    out["iwae"] = np.log(DRAWS) - logsumexp(log_w, axis=0)
    out["iwae-sampled"] = np.log(DRAWS) - logsumexp(log_w_sampled, axis=0)
    out["neg-elbo"] = -log_w.mean(axis=0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seed-start", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    means: dict[str, list[np.ndarray]] = {}
    for name in args.datasets.split(","):
        x, y = load(DEFAULT_DIR, name)
        per: dict[str, list[tuple[float, float]]] = {}
        for seed in range(args.seed_start, args.seed_start + args.seeds):
            train, test, y_test = split(x, y, seed)
            config = DetectorConfig(training=TrainingConfig(seed=seed))
            det = Detector.fit(columns(train), config=config)
            for key, score in variants(det, train, test, seed).items():
                quality = (roc_auc_score(y_test, score), average_precision_score(y_test, score))
                per.setdefault(key, []).append(quality)
        for key, runs in per.items():
            means.setdefault(key, []).append(np.mean(runs, axis=0))
        line = " ".join(f"{k}={np.mean(v, axis=0)[0]:.3f}" for k, v in per.items())
        print(f"{name:<11} {line}", file=sys.stderr, flush=True)
    print("| variant | mean AUROC | mean AUPRC |\n|---|---|---|")
    for key, rows in means.items():
        auroc, auprc = np.mean(rows, axis=0)
        print(f"| {key} | {auroc:.3f} | {auprc:.3f} |")


if __name__ == "__main__":
    main()
