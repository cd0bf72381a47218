"""Batch scoring throughput on one core, once the model is loaded, beside baselines in one run.

Data: scikit-learn's bundled breast-cancer set (30 numeric features); the model is trained on
half of the benign rows, then 200,000 records are drawn (with replacement) from all rows.
Measured, each as the best of --repeats runs over the whole set in batches of --batch rows:

* latentwatch from columns (numpy arrays, as `latentwatch score` reads a file),
* latentwatch from records (one dict per record, as the Kafka consumer decodes JSON),
* the same model's maths alone (encoded matrix in, scores out),
* scikit-learn IsolationForest and LocalOutlierFactor (novelty) score_samples on the matrix.

    python bench/scoring.py [--rows 200000] [--batch 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from machine import describe
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.preprocessing import StandardScaler

from detector.detector import Detector
from detector.encoding import encode_columns


def best_rate(run: Callable[[], object], rows: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return rows / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    benign = np.flatnonzero(data.target == 1)
    train = data.data[benign[: len(benign) // 2]]
    detector = Detector.fit({n: train[:, j] for j, n in enumerate(names)})
    rows = data.data[np.random.default_rng(0).integers(0, len(data.data), args.rows)]
    batches = [rows[i : i + args.batch] for i in range(0, args.rows, args.batch)]
    column_batches = [{n: b[:, j] for j, n in enumerate(names)} for b in batches]
    record_batches = [[dict(zip(names, map(float, r), strict=True)) for r in b] for b in batches]
    encoded = [
        encode_columns(detector.schema, c, len(b))
        for c, b in zip(column_batches, batches, strict=True)
    ]

    scaler = StandardScaler().fit(train)
    iforest = IsolationForest(random_state=0).fit(train)
    lof = LocalOutlierFactor(novelty=True).fit(scaler.transform(train))

    results = {
        "latentwatch, columns in": best_rate(
            lambda: [
                detector.score_columns(c, len(b))
                for c, b in zip(column_batches, batches, strict=True)
            ],
            args.rows,
            args.repeats,
        ),
        "latentwatch, records (dicts) in": best_rate(
            lambda: [detector.score_records(r) for r in record_batches], args.rows, args.repeats
        ),
        "latentwatch, encoded matrix in": best_rate(
            lambda: [detector.score_encoded(e) for e in encoded], args.rows, args.repeats
        ),
        "IsolationForest.score_samples": best_rate(
            lambda: [iforest.score_samples(b) for b in batches], args.rows, args.repeats
        ),
        "LocalOutlierFactor.score_samples": best_rate(
            lambda: [lof.score_samples(scaler.transform(b)) for b in batches],
            args.rows,
            args.repeats,
        ),
    }
    print(describe())
    print(
        f"{args.rows} records x 30 features, batches of {args.batch}, 1 thread, "
        f"best of {args.repeats}"
    )
    print("| scorer | records/s |")
    print("|---|---|")
    for name, rate in results.items():
        print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
