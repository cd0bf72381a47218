"""Detection quality: latentwatch's default configuration beside classic baselines, one run.

Protocol (../shared/datasets/README.md, as in the DAGMM paper): for each seed s in 0..4, shuffle
the normal rows with numpy.random.RandomState(s).permutation, train on the first half (normals
only, no labels), test on the other half plus all anomalies. AUROC, AUPRC (average precision)
and F1 at the cut where the number flagged equals the number of true anomalies; mean of the
seeds. Fit time is wall-clock for the fit alone.

    python bench/detection.py                       # all nine data sets, 5 seeds
    python bench/detection.py --datasets wbc,wine --seeds 2 --markdown out.md
    python bench/detection.py --seed-start 100      # development splits (seeds 100..104)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from machine import describe
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import LocalOutlierFactor
from sklearn.preprocessing import StandardScaler

from detector.detector import Detector, DetectorConfig
from detector.training import TrainingConfig

DATASETS = (
    "wbc",
    "wine",
    "digits",
    "glass",
    "ionosphere",
    "pima",
    "breastw",
    "satellite",
    "shuttle",
)
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets"

# A fitted scorer: test matrix -> (scores, higher = more anomalous; flags, if it decides).
Scorer = Callable[[np.ndarray], "np.ndarray | tuple[np.ndarray, np.ndarray]"]
Fitter = Callable[[np.ndarray, int], Scorer]


def fit_latentwatch(train: np.ndarray, seed: int) -> Scorer:
    columns = {f"x{j}": train[:, j] for j in range(train.shape[1])}
    detector = Detector.fit(columns, config=DetectorConfig(training=TrainingConfig(seed=seed)))

    def score(test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cols = {f"x{j}": test[:, j] for j in range(test.shape[1])}
        scores = detector.score_columns(cols, len(test))
        return scores.score, scores.flagged

    return score


def fit_iforest(train: np.ndarray, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    model = IsolationForest(random_state=seed).fit(train)
    return lambda test: -model.score_samples(test)


def fit_lof(train: np.ndarray, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    scaler = StandardScaler().fit(train)
    model = LocalOutlierFactor(n_neighbors=20, novelty=True).fit(scaler.transform(train))
    return lambda test: -model.score_samples(scaler.transform(test))


def fit_gmm(train: np.ndarray, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """A Gaussian mixture on the raw features, 1-8 full-covariance components (at least 10
    rows each) chosen by BIC: the rule latentwatch uses for its mixture on latent codes."""
    best: tuple[float, GaussianMixture] | None = None
    for k in range(1, min(8, len(train) // 10) + 1):
        model = GaussianMixture(k, covariance_type="full", random_state=seed).fit(train)
        bic = model.bic(train)
        if best is None or bic < best[0]:
            best = (bic, model)
    assert best is not None
    chosen = best[1]
    return lambda test: -chosen.score_samples(test)


DETECTORS: dict[str, Fitter] = {
    "latentwatch": fit_latentwatch,
    "iforest": fit_iforest,
    "lof": fit_lof,
    "gmm": fit_gmm,
}


@dataclass(frozen=True)
class Result:
    auroc: float
    auprc: float
    f1: float
    fit_s: float
    # share of the test normals flagged at the default --fpr 0.01 (calibration check)
    false_alarms: float = float("nan")


def load(directory: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    path = directory / f"{name}.csv"
    if not path.exists():
        raise SystemExit(
            f"data set {path} not found: pass --data-dir (the project reads the "
            "benchmark sets from ../shared/datasets and does not copy them)"
        )
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    return table[:, :-1], table[:, -1].astype(int)


def split(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    normal, anomalous = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    normal = normal[np.random.RandomState(seed).permutation(len(normal))]
    half = len(normal) // 2
    test = np.concatenate([normal[half:], anomalous])
    return x[normal[:half]], x[test], y[test]


def f1_at_true_count(y: np.ndarray, score: np.ndarray) -> float:
    k = int(y.sum())
    top = np.argsort(-score, kind="stable")[:k]
    return float(y[top].sum() / k)  # precision = recall = F1 at this cut


def evaluate(fitter: Fitter, x: np.ndarray, y: np.ndarray, seed: int) -> Result:
    train, test, y_test = split(x, y, seed)
    start = time.perf_counter()
    scorer = fitter(train, seed)
    fit_s = time.perf_counter() - start
    out = scorer(test)
    score, flagged = out if isinstance(out, tuple) else (out, None)
    return Result(
        auroc=roc_auc_score(y_test, score),
        auprc=average_precision_score(y_test, score),
        f1=f1_at_true_count(y_test, score),
        fit_s=fit_s,
        false_alarms=float(flagged[y_test == 0].mean()) if flagged is not None else float("nan"),
    )


def markdown(
    results: dict[str, dict[str, Result]], names: list[str], calibration_rows: dict[str, int]
) -> str:
    detectors = list(DETECTORS)
    head = "| data set | " + " | ".join(f"{d} AUROC / AUPRC / F1 / fit s" for d in detectors)
    lines = [head + " |", "|---" * (len(detectors) + 1) + "|"]
    for name in names:
        cells = [
            f"{r.auroc:.3f} / {r.auprc:.3f} / {r.f1:.3f} / {r.fit_s:.2f}"
            for r in (results[name][d] for d in detectors)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    means = []
    for d in detectors:
        rs = [results[n][d] for n in names]
        auroc, auprc = np.mean([r.auroc for r in rs]), np.mean([r.auprc for r in rs])
        f1, fit_s = np.mean([r.f1 for r in rs]), np.mean([r.fit_s for r in rs])
        means.append(f"**{auroc:.3f} / {auprc:.3f} / {f1:.3f}** / {fit_s:.2f}")
    lines.append("| **mean** | " + " | ".join(means) + " |")
    best = [max(results[n][d].auroc for d in detectors if d != "latentwatch") for n in names]
    ours = [results[n]["latentwatch"].auroc for n in names]
    lines += [
        "",
        "latentwatch's calibration check: share of the test normals flagged at the default "
        "false-alarm rate 0.01 (mean of the seeds), and the size of its calibration split:",
        "",
        "| data set | flagged normals | calibration rows |",
        "|---|---|---|",
        *(
            f"| {n} | {results[n]['latentwatch'].false_alarms:.4f} | {calibration_rows[n]} |"
            for n in names
        ),
        "",
        f"best baseline per data set (hindsight) mean AUROC: {np.mean(best):.3f}; "
        f"latentwatch: {np.mean(ours):.3f}; largest shortfall vs the best baseline: "
        f"{max(b - o for b, o in zip(best, ours, strict=True)):+.3f} "
        f"({names[int(np.argmax([b - o for b, o in zip(best, ours, strict=True)]))]})",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("LATENTWATCH_DATASETS", DEFAULT_DIR))
    )
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--seed-start",
        type=int,
        default=0,
        help="first seed (0: the reported test splits; tune on others, e.g. 100)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (per process)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.datasets.split(",")
    results: dict[str, dict[str, Result]] = {}
    calibration_rows: dict[str, int] = {}
    for name in names:
        x, y = load(args.data_dir, name)
        n_train = int((y == 0).sum()) // 2
        calibration_rows[name] = max(round(DetectorConfig().holdout_fraction * n_train), 2)
        results[name] = {}
        for det, fitter in DETECTORS.items():
            seeds = range(args.seed_start, args.seed_start + args.seeds)
            runs = [evaluate(fitter, x, y, seed) for seed in seeds]
            results[name][det] = Result(
                *(
                    float(np.mean(v))
                    for v in zip(
                        *((r.auroc, r.auprc, r.f1, r.fit_s, r.false_alarms) for r in runs),
                        strict=True,
                    )
                )
            )
        summary = "  ".join(f"{d}={r.auroc:.3f}" for d, r in results[name].items())
        print(f"{name:<11} {summary}", file=sys.stderr, flush=True)
    table = markdown(results, names, calibration_rows)
    print(describe())
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
