"""Do explanations point at the fields that were changed? A benchmark of the nearest normal record
and its attributions against today's reconstruction ranking and a per-field surprise ranking.

Real normal records (the detection benchmark's sets, numeric and mixed-type) become anomalies
whose cause is known:

* **global**: one numeric field pushed out of its training range (beyond the maximum or below the
  minimum by half to one and a half of the range);
* **dependency**: one to three fields replaced by the values of another normal record (each
  value is normal on its own, only the combination is not);
* **rare category**: one categorical field set to one of its rarest values seen in training.

For every anomaly the model flags (explanations are made for flagged records), three rankings
of the fields are compared: a hit is when the top k fields (k = the number changed) are exactly
the changed ones. **attribution**: the nearest normal record's attributions
(detector.counterfactual); **reconstruction**: today's per-field reconstruction terms;
**surprise**: |x - median| / IQR for numbers, -log frequency for strings and booleans, each
field on its own. The nearest normal record **restores** a global anomaly when it changes the
pushed field back to within one typical spread (the schema's scale) of its original value.

Development sets are the detection benchmark's development half; held-out sets are from its
held-out half (nothing was chosen on them).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
from machine import describe

from detector.counterfactual import CounterfactualConfig, nearest_normal
from detector.detector import Detector, DetectorConfig
from detector.encoding import encode_records
from detector.schema import FieldKind
from detector.training import TrainingConfig

Columns = dict[str, list[object]]
Record = dict[str, object]

DEV = ("pima", "wine", "glass", "cars", "credit", "aids")
HELD_OUT = ("vehicle", "segmentation", "sacramento", "soybean", "insurance", "census")
KINDS = ("global", "dependency", "rare category")
METHODS = ("attribution", "reconstruction", "surprise")
_MAX_TRAIN = 1500  # training normals per set, to keep the run to minutes
_PER_KIND = 40  # anomalies made per kind and set


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def split(ds: datasets.DataSet, seed: int) -> tuple[list[Record], list[Record]]:
    """Training and test normals: the normal rows shuffled by the seed, halved (as the
    detection benchmark splits them)."""
    normal = np.flatnonzero(ds.labels == 0)
    normal = normal[np.random.RandomState(seed).permutation(len(normal))]
    half = len(normal) // 2
    rows = _records(ds.columns)
    return [rows[i] for i in normal[:half]], [rows[i] for i in normal[half:]]


def _records(columns: Columns) -> list[Record]:
    names = list(columns)
    n = len(columns[names[0]])
    return [{k: columns[k][i] for k in names} for i in range(n)]


@dataclass(frozen=True)
class Surprise:
    """The per-field ranking: robust z for numbers, -log frequency for the rest."""

    median: dict[str, float]
    iqr: dict[str, float]
    freq: dict[str, Counter[object]]
    n: int

    @classmethod
    def fit(cls, train: list[Record], names: tuple[str, ...]) -> Surprise:
        median, iqr, freq = {}, {}, {}
        for name in names:
            values = [r.get(name) for r in train]
            numbers = [float(v) for v in values if _is_number(v)]  # type: ignore[arg-type]
            if numbers and len(numbers) == sum(v is not None for v in values):
                q1, q2, q3 = np.percentile(numbers, [25, 50, 75])
                median[name] = float(q2)
                iqr[name] = float(q3 - q1) or float(np.std(numbers)) or 1.0
            freq[name] = Counter(v if v is not None else "\0missing" for v in values)
        return cls(median, iqr, freq, len(train))

    def scores(self, record: Record, names: tuple[str, ...]) -> np.ndarray:
        out = np.zeros(len(names))
        for j, name in enumerate(names):
            v = record.get(name)
            if name in self.median and _is_number(v):
                out[j] = abs(float(v) - self.median[name]) / self.iqr[name]  # type: ignore[arg-type]
            else:
                count = self.freq[name].get(v if v is not None else "\0missing", 0)
                out[j] = -math.log((count + 0.5) / (self.n + 1))
        return out


def make_anomalies(
    train: list[Record], normals: list[Record], det: Detector, kind: str, n: int, seed: int
) -> list[tuple[Record, tuple[str, ...], Record]]:
    """(anomaly, changed field names, original) triples of one kind."""
    rng = np.random.default_rng(seed)
    schema = det.schema
    numeric = [f.name for f in schema.fields if f.kind is FieldKind.NUMERIC and f.step == 0.0]
    numeric = numeric or [f.name for f in schema.fields if f.kind is FieldKind.NUMERIC]
    categorical = [f.name for f in schema.fields if f.kind is FieldKind.CATEGORICAL]
    out: list[tuple[Record, tuple[str, ...], Record]] = []
    tries = 0
    while len(out) < n and tries < 20 * n:
        tries += 1
        base = normals[int(rng.integers(len(normals)))]
        rec = dict(base)
        if kind == "global":
            if not numeric:
                return []
            name = numeric[int(rng.integers(len(numeric)))]
            seen = [float(r[name]) for r in train if _is_number(r.get(name))]  # type: ignore[arg-type]
            lo, hi = min(seen), max(seen)
            width = (hi - lo) or 1.0
            push = float(rng.uniform(0.5, 1.5)) * width
            rec[name] = hi + push if rng.random() < 0.5 else lo - push
            changed: tuple[str, ...] = (name,)
        elif kind == "dependency":
            other = normals[int(rng.integers(len(normals)))]
            k = int(rng.integers(1, 4))
            names = [m for m in schema.names if other.get(m) != base.get(m)]
            if len(names) < k:
                continue
            changed = tuple(rng.choice(names, size=k, replace=False).tolist())
            for name in changed:
                rec[name] = other.get(name)
        else:
            if not categorical:
                return []
            name = categorical[int(rng.integers(len(categorical)))]
            counts = Counter(r.get(name) for r in train if r.get(name) is not None)
            rare = [v for v, c in counts.items() if c <= max(2, 0.02 * len(train))]
            rare = [v for v in rare if v != base.get(name)]
            if not rare:
                continue
            rec[name] = rare[int(rng.integers(len(rare)))]
            changed = (name,)
        out.append((rec, changed, base))
    return out


def _hit(ranking: np.ndarray, names: tuple[str, ...], changed: tuple[str, ...]) -> bool:
    top = {names[j] for j in ranking[: len(changed)]}
    return top == set(changed)


@dataclass
class Tally:
    made: int = 0
    flagged: int = 0
    hits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(METHODS, 0))
    restored: int = 0
    reached: int = 0
    explain_s: float = 0.0


def run_set(name: str, seed: int, config: CounterfactualConfig, every: bool) -> dict[str, Tally]:
    ds = datasets.load(name)
    train, normals = split(ds, seed)
    train = train[:_MAX_TRAIN]
    columns = {k: [r[k] for r in train] for k in train[0]}
    det = Detector.fit(columns, config=DetectorConfig(training=TrainingConfig(seed=seed)))
    schema = det.schema
    names = schema.names
    surprise = Surprise.fit(train, names)
    out = {}
    for kind in KINDS:
        tally = Tally()
        made = make_anomalies(train, normals, det, kind, _PER_KIND, seed)
        tally.made = len(made)
        if not made:
            continue
        records = [m[0] for m in made]
        scores = det.score_records(records)
        enc = encode_records(schema, records)
        for i, (rec, changed, base) in enumerate(made):
            if not (scores.flagged[i] or every):
                continue
            tally.flagged += 1
            start = time.perf_counter()
            cf = nearest_normal(det, enc.matrix[i], enc.missing[i], rec, config)
            tally.explain_s += time.perf_counter() - start
            tally.reached += cf.reached
            rankings = {
                "attribution": cf.ranking(scores.contributions[i]),
                "reconstruction": np.argsort(-scores.contributions[i], kind="stable"),
                "surprise": np.argsort(-surprise.scores(rec, names), kind="stable"),
            }
            for method, ranking in rankings.items():
                tally.hits[method] += _hit(ranking, names, changed)
            if kind == "global":
                spec = schema.fields[names.index(changed[0])]
                restored = cf.normal.get(changed[0])
                moved = any(c.name == changed[0] for c in cf.changes)
                tally.restored += bool(
                    moved
                    and _is_number(restored)
                    and abs(float(restored) - float(base[changed[0]])) <= spec.scale  # type: ignore[arg-type]
                )
        out[kind] = tally
    return out


def _rate(hits: int, n: int) -> str:
    return f"{hits / n:.2f}" if n else "–"


def table(results: dict[str, dict[str, Tally]], title: str) -> list[str]:
    lines = [
        f"**{title}** — top-k hit rate on flagged anomalies (flagged / made)",
        "",
        "| set | kind | flagged | attribution | reconstruction | surprise | restored | ms/record |",
        "|---|---|---|---|---|---|---|---|",
    ]
    pooled: dict[str, Tally] = defaultdict(Tally)
    for name, kinds in results.items():
        for kind, t in kinds.items():
            p = pooled[kind]
            p.made += t.made
            p.flagged += t.flagged
            p.restored += t.restored
            p.reached += t.reached
            p.explain_s += t.explain_s
            for m in METHODS:
                p.hits[m] += t.hits[m]
            lines.append(_row(name, kind, t))
    for kind, t in pooled.items():
        lines.append(_row("**pooled**", kind, t))
    return lines


def _row(name: str, kind: str, t: Tally) -> str:
    restored = _rate(t.restored, t.flagged) if kind == "global" else ""
    ms = f"{1000 * t.explain_s / t.flagged:.0f}" if t.flagged else "–"
    hits = " | ".join(_rate(t.hits[m], t.flagged) for m in METHODS)
    return f"| {name} | {kind} | {t.flagged}/{t.made} | {hits} | {restored} | {ms} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--half", choices=("dev", "held-out", "all"), default="all")
    parser.add_argument("--datasets", help="comma-separated names (default: the half's sets)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--path-steps", type=int, default=CounterfactualConfig.path_steps)
    parser.add_argument("--max-changes", type=int, default=CounterfactualConfig.max_changes)
    parser.add_argument(
        "--candidate-fields", type=int, default=CounterfactualConfig.candidate_fields
    )
    parser.add_argument("--segments", type=int, default=CounterfactualConfig.attribution_segments)
    parser.add_argument(
        "--every",
        type=float,
        metavar="P",
        help="explain every anomaly, flagged or not, walking to a p-value of at least P",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = CounterfactualConfig(
        path_steps=args.path_steps,
        max_changes=args.max_changes,
        candidate_fields=args.candidate_fields,
        attribution_segments=args.segments,
        target_p_value=args.every,
    )
    halves = {"dev": DEV, "held-out": HELD_OUT}
    chosen = [args.half] if args.half != "all" else ["dev", "held-out"]
    print(
        f"{describe()}; seed {args.seed}; `python bench/explanations.py {' '.join(sys.argv[1:])}`"
    )
    for half in chosen:
        names = args.datasets.split(",") if args.datasets else list(halves[half])
        results = {name: run_set(name, args.seed, config, args.every is not None) for name in names}
        print("\n".join(["", *table(results, f"{half} sets")]))


if __name__ == "__main__":
    main()
