"""Why a record scored as it did: the fields that the model could not reconstruct, each with the
value in the record beside the value the model expected (decoded from the latent code), the
nearest reference cluster, and where the record sits in the latent space."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from detector.detector import LatentMap
from detector.encoding import decode_field, plain_value
from detector.schema import Schema
from detector.scoring import ScoreBatch


class FeatureExplanation(NamedTuple):
    """One field of an explanation (a named tuple: the consumer builds five per flagged
    record, and a frozen dataclass cost twice as much to make)."""

    name: str
    actual: object  # the record's value; None when missing
    expected: object  # what the model reconstructs from the latent code
    contribution: float  # nats of the reconstruction term
    share: float  # of the reconstruction term, 0..1
    attribution: float | None = None  # nats of score - nearest normal score (counterfactual)


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
                    **({} if f.attribution is None else {"attribution": f.attribution}),
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


def explain_rows(
    schema: Schema,
    latent_map: LatentMap,
    scores: ScoreBatch,
    rows: Sequence[int] | np.ndarray,
    *,
    actual: Sequence[Mapping[str, object]],
    top: int = 5,
    attributions: np.ndarray | None = None,
) -> list[Explanation]:
    """Explain scored rows; ``actual[k]`` is the record of ``rows[k]`` (or its values by field
    name). With ``attributions`` [len(rows), n_fields] (detector.counterfactual) the fields are
    ordered by them, ties by reconstruction. Batched: the consumer explains every flagged record
    of a micro-batch, and per-row numpy calls cost more than the maths."""
    index = np.asarray(rows, dtype=np.intp)
    unscored = index[~scores.valid[index]]
    if unscored.size:
        raise ValueError(f"row {unscored[0]} was not scored: {scores.reasons[unscored[0]]}")
    contributions = scores.contributions[index]
    if attributions is None:
        top_idx = top_feature_indices(contributions, top)
        attributed: list[list[float | None]] = [[None] * top_idx.shape[1]] * len(index)
    else:
        fallback = -np.nan_to_num(contributions, nan=-np.inf)
        order = np.array(
            [np.lexsort((f, -a)) for f, a in zip(fallback, attributions, strict=True)],
            dtype=np.intp,
        ).reshape(len(index), -1)
        top_idx = order[:, :top]
        attributed = np.take_along_axis(attributions, top_idx, axis=1).tolist()
    top_contrib = np.take_along_axis(contributions, top_idx, axis=1)
    totals = scores.reconstruction[index]
    totals = np.where(totals == 0.0, 1.0, totals)[:, None]
    shares = np.maximum(top_contrib / totals, 0.0).tolist()
    expected_rows = scores.expected[index]
    expected = {
        j: decode_field(schema.fields[j], expected_rows[:, schema.slices[j]])
        for j in np.unique(top_idx).tolist()
    }
    latent = scores.latent[index]
    latent_2d = latent_map.project(latent).tolist()
    clusters = scores.cluster[index].tolist()
    distances = scores.cluster_distance[index].tolist()
    names = schema.names
    out = []
    for k, (record, fields, nats, share, attr) in enumerate(
        zip(actual, top_idx.tolist(), top_contrib.tolist(), shares, attributed, strict=True)
    ):
        features = tuple(
            FeatureExplanation(
                names[j], plain_value(record.get(names[j])), plain_value(expected[j][k]), c, s, a
            )
            for j, c, s, a in zip(fields, nats, share, attr, strict=True)
        )
        x, y = latent_2d[k]
        out.append(
            Explanation(
                features=features,
                cluster=clusters[k],
                cluster_distance=distances[k],
                latent=tuple(latent[k].tolist()),
                latent_2d=(x, y),
            )
        )
    return out


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
    return explain_rows(schema, latent_map, scores, [row], actual=[actual], top=top)[0]
