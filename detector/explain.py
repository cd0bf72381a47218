"""Why a record scored as it did: the fields that the model could not reconstruct, each with the
value in the record beside the value the model expected (decoded from the latent code), the
nearest reference cluster, and where the record sits in the latent space."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from detector.detector import LatentMap
from detector.encoding import decode_field, plain_value
from detector.schema import Schema
from detector.scoring import ScoreBatch


@dataclass(frozen=True)
class FeatureExplanation:
    name: str
    actual: object  # the record's value; None when missing
    expected: object  # what the model reconstructs from the latent code
    contribution: float  # nats of the reconstruction term
    share: float  # of the reconstruction term, 0..1


@dataclass(frozen=True)
class Explanation:
    features: tuple[FeatureExplanation, ...]  # most surprising first
    cluster: int
    cluster_distance: float
    latent: tuple[float, ...]
    latent_2d: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (what storage keeps); built by hand: dataclasses.asdict deep-
        copies every value and was the costliest step of flagging a record."""
        return {
            "features": [
                {
                    "name": f.name,
                    "actual": f.actual,
                    "expected": f.expected,
                    "contribution": f.contribution,
                    "share": f.share,
                }
                for f in self.features
            ],
            "cluster": self.cluster,
            "cluster_distance": self.cluster_distance,
            "latent": list(self.latent),
            "latent_2d": list(self.latent_2d),
        }


def top_feature_indices(contributions: np.ndarray, top: int) -> np.ndarray:
    """For each row of field contributions, the indices of its ``top`` largest, largest first
    (ties in field order). One stable sort: a row has tens of fields, not thousands."""
    order = np.argsort(-np.nan_to_num(contributions, nan=-np.inf), axis=-1, kind="stable")
    return order[..., :top]


def top_feature_names(schema: Schema, scores: ScoreBatch, top: int = 3) -> list[list[str]]:
    """Names of each valid row's most surprising fields (empty for invalid rows)."""
    names = schema.names
    idx = top_feature_indices(scores.contributions, top)
    return [
        [names[j] for j in row] if ok else [] for row, ok in zip(idx, scores.valid, strict=True)
    ]


def explain(
    schema: Schema,
    latent_map: LatentMap,
    scores: ScoreBatch,
    row: int,
    *,
    actual: Mapping[str, object],
    top: int = 5,
) -> Explanation:
    """Explain one scored row; ``actual`` is the record (or its values by field name)."""
    if not scores.valid[row]:
        raise ValueError(f"row {row} was not scored: {scores.reasons[row]}")
    slices = schema.slices
    total = float(scores.reconstruction[row]) or 1.0
    features = []
    for j in top_feature_indices(scores.contributions[row], top):
        spec = schema.fields[j]
        expected = decode_field(spec, scores.expected[row : row + 1, slices[j]])[0]
        contribution = float(scores.contributions[row, j])
        features.append(
            FeatureExplanation(
                name=spec.name,
                actual=plain_value(actual.get(spec.name)),
                expected=plain_value(expected),
                contribution=contribution,
                share=max(contribution / total, 0.0),
            )
        )
    latent = scores.latent[row]
    x, y = latent_map.project(latent[None, :])[0]
    return Explanation(
        features=tuple(features),
        cluster=int(scores.cluster[row]),
        cluster_distance=float(scores.cluster_distance[row]),
        latent=tuple(float(v) for v in latent),
        latent_2d=(float(x), float(y)),
    )
