"""Realistic flagged records for the API tests: card payments and logins scored by a model whose
manifest carries a latent map with three reference clusters, each record explained the way the
detector explains (features most surprising first, shares of the reconstruction term, the
nearest cluster and the record's place on the 2-D map)."""

from __future__ import annotations

import math
import random
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from storage.records import FlaggedRecord, ModelVersion
from storage.repository import write_flagged

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
TOPICS = ("payments", "logins")
CENTRES = ((-1.1, -0.2), (-0.3, 1.5), (1.5, -1.0))
COVARIANCES = (
    ((0.72, 0.01), (0.01, 0.90)),
    ((1.92, 0.61), (0.61, 1.11)),
    ((2.26, 1.13), (1.13, 2.04)),
)
# field -> (typical value, spread) for numeric fields; categorical ones list their values
NUMERIC = {"amount": (42.0, 30.0), "items": (2.0, 1.5), "hour": (14.0, 4.0)}
CATEGORICAL = {"country": ("NZ", "AU", "GB", "US"), "channel": ("web", "app", "pos")}


def manifest(version: str) -> dict[str, Any]:
    shares = (0.40, 0.26, 0.34)
    clusters = [
        {
            "cluster": c,
            "weight": shares[c],
            "share": shares[c],
            "center_2d": list(CENTRES[c]),
            "covariance_2d": [list(row) for row in COVARIANCES[c]],
        }
        for c in range(3)
    ]
    fields = [
        {"name": n, "kind": "numeric", "center": mu, "scale": sd} for n, (mu, sd) in NUMERIC.items()
    ] + [{"name": n, "kind": "categorical", "categories": list(v)} for n, v in CATEGORICAL.items()]
    return {
        "format": "latentwatch-model",
        "version": version,
        "created_at": "2026-10-30T09:00:00Z",
        "schema": {"fields": fields, "id_column": "id"},
        "calibration": {"fpr": 0.01, "threshold": 18.4},
        "mixture": {"n_components": 3},
        "latent_map": {"method": "pca", "clusters": clusters},
    }


MODEL_A = ModelVersion("a1b2c3d4e5f6", manifest("a1b2c3d4e5f6"))
MODEL_B = ModelVersion("0f9e8d7c6b5a", manifest("0f9e8d7c6b5a"))


def flagged(i: int, **changes: Any) -> FlaggedRecord:
    """Record ``i``: deterministic, varied in topic, time, score, cluster and top feature."""
    rng = random.Random(i)
    topic = TOPICS[i % 2]
    cluster = i % 3
    record: dict[str, Any] = {"id": f"{topic[:3]}-{i}"}
    record |= {n: round(rng.gauss(mu, sd), 2) for n, (mu, sd) in NUMERIC.items()}
    record |= {n: rng.choice(values) for n, values in CATEGORICAL.items()}
    names = list(NUMERIC) + list(CATEGORICAL)
    rng.shuffle(names)
    contributions = sorted((rng.uniform(0.2, 6.0) for _ in range(4)), reverse=True)
    reconstruction = sum(contributions) + 0.8
    features = []
    for name, contribution in zip(names, contributions, strict=False):
        actual = record[name]
        expected = NUMERIC[name][0] if name in NUMERIC else CATEGORICAL[name][0]
        features.append(
            {
                "name": name,
                "actual": actual,
                "expected": expected,
                "contribution": round(contribution, 3),
                "share": round(contribution / reconstruction, 3),
            }
        )
    density = rng.uniform(4.0, 20.0)
    p_value = math.exp(-rng.uniform(4.0, 12.0))
    angle, radius = rng.uniform(0, 2 * math.pi), rng.uniform(1.0, 3.5)
    latent_2d = [
        CENTRES[cluster][0] + radius * math.cos(angle),
        CENTRES[cluster][1] + radius * math.sin(angle),
    ]
    distance = round(radius * 1.4, 3)
    fields: dict[str, Any] = {
        "topic": topic,
        "partition": i % 3,
        "offset": i,
        "kafka_timestamp": 1_793_000_000_000 + i,
        # every fourth key binary, as Java's LongSerializer writes it
        "key": struct.pack(">q", i) if i % 4 == 0 else f"customer-{i % 11}".encode(),
        "record_id": record["id"],
        "event_time": T0 + timedelta(seconds=37 * i - 5),
        "scored_time": T0 + timedelta(seconds=37 * i),
        "model_version": MODEL_A.version,
        "score": round(density + reconstruction, 4),
        "severity": round(min(100.0, -10 * math.log10(p_value) * 2.2), 2),
        "p_value": p_value,
        "density": round(density, 4),
        "density_p_value": min(1.0, p_value * rng.uniform(1, 20)),
        "reconstruction": round(reconstruction, 4),
        "reconstruction_p_value": min(1.0, p_value * rng.uniform(1, 20)),
        "cluster": cluster,
        "cluster_distance": distance,
        "top_feature": features[0]["name"],
        "explanation": {
            "features": features,
            "cluster": cluster,
            "cluster_distance": distance,
            "latent": [round(rng.gauss(0, 1), 4) for _ in range(4)],
            "latent_2d": latent_2d,
        },
        "record": record,
    }
    fields.update(changes)
    return FlaggedRecord(**fields)


def seed(
    sessions: sessionmaker[Session], count: int, *, first: int = 0, batch: int = 2_000
) -> list[FlaggedRecord]:
    """Write records ``first .. first+count-1``; every fifth is scored by MODEL_B."""
    records = [
        flagged(i, model_version=MODEL_B.version) if i % 5 == 4 else flagged(i)
        for i in range(first, first + count)
    ]
    for start in range(0, count, batch):
        write_flagged(sessions, records[start : start + batch], [MODEL_A, MODEL_B], now=T0)
    return records
