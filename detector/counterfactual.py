"""The nearest normal record and per-field attributions that add up to the score.

For a record the model flags, a walk in latent space: the fields chosen to change are masked
(imputed as a missing value would be), the record is encoded, and its code moves from there
towards the mode of its nearest reference cluster; at each step the code is decoded and the
chosen fields take the decoded values (snapped to a category, a boolean, the field's step), the
others keep the record's own. The first step at which the record scores normal (p-value at
least the model's false-alarm rate), changing as few fields as possible (chosen greedily, the
field whose change lowers the score most first), gives the **nearest normal record**.

The **attributions** split the score difference between the record and its nearest normal
record over the fields: integrated gradients of the density and reconstruction terms along the
straight line between the two in encoded space (a missing value's missingness relaxed to a
share), made exact per segment: each segment's score difference is split by gradient times
change, its small quadrature remainder shared in proportion. So they add up to the difference
of the two scores by construction, and a field that does not change gets none.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from detector.calibration import p_values, threshold_for
from detector.detector import Detector, LatentMap, _forward
from detector.encoding import decode_field, encode_records, plain_value
from detector.schema import FieldKind, Schema
from detector.scoring import SCORE_RULE, field_contributions


@dataclass(frozen=True)
class CounterfactualConfig:
    """How far and how finely the walk looks; chosen on the benchmark's development half."""

    path_steps: int = 6  # points on the latent path, the record's code (t=0) to the mode (t=1)
    max_changes: int = 4  # fields changed at most before the walk gives up
    attribution_segments: int = 16  # straight-line segments of the integrated gradients
    # The p-value the nearest normal record must reach; None: the model's false-alarm rate (a
    # record the model would not flag). Higher asks "what would a typical record look like".
    target_p_value: float | None = None


@dataclass(frozen=True)
class FieldChange:
    name: str
    actual: object  # the record's value (None: missing)
    normal: object  # the nearest normal record's value
    delta: float | None  # normal - actual for numbers, else None
    attribution: float  # nats of (score - normal score) this field accounts for


@dataclass(frozen=True)
class Counterfactual:
    """A record's nearest normal record, the walk that found it and the attributions."""

    normal: dict[str, object]  # every field, in the record's own units and categories
    changes: tuple[FieldChange, ...]  # the changed fields, largest attribution first
    attributions: np.ndarray  # [n_fields] nats; sums to score - normal_score
    density_attributions: np.ndarray  # [n_fields]; sums to density - normal_density
    reconstruction_attributions: np.ndarray  # [n_fields]; sums to the reconstruction difference
    score: float
    normal_score: float
    p_value: float
    normal_p_value: float
    reached: bool  # False: no point changing at most max_changes fields scored normal
    path_t: tuple[float, ...]  # the walk's steps, up to the one taken
    path_p_value: tuple[float, ...]  # p-value of the record at each step
    path_latent: np.ndarray  # [steps + 1, latent_dim]: the record's code, then each step's

    def ranking(self, fallback: np.ndarray) -> np.ndarray:
        """Field indices by attribution, largest first; fields without one by ``fallback``."""
        return np.lexsort((-np.nan_to_num(fallback, nan=-np.inf), -self.attributions))


# --- decoding a latent point into a valid encoded record -----------------------------------


def snap(schema: Schema, decoded: np.ndarray) -> np.ndarray:
    """Decoder outputs [n, width] as values a record could hold, in encoded units: a category
    one-hot (never "other": it names no value), a boolean 0/1, a number on its step's grid."""
    out = decoded.astype(np.float64, copy=True)
    for spec, cols in zip(schema.fields, schema.slices, strict=True):
        block = out[:, cols]
        if spec.kind is FieldKind.CATEGORICAL:
            known = block[:, :-1] if len(spec.categories) else block
            onehot = np.zeros_like(block)
            onehot[np.arange(len(block)), np.argmax(known, axis=1)] = 1.0
            out[:, cols] = onehot
        elif spec.kind is FieldKind.BOOLEAN:
            out[:, cols] = (block >= 0.5).astype(np.float64)
        elif spec.step > 0:
            value = block * spec.scale + spec.center
            grid = np.round((value - spec.center) / spec.step) * spec.step + spec.center
            out[:, cols] = (grid - spec.center) / spec.scale
    return out


def imputed(schema: Schema) -> np.ndarray:
    """The encoded row of a record with every field missing (what encoding imputes)."""
    row = np.zeros(schema.width)
    for spec, cols in zip(schema.fields, schema.slices, strict=True):
        if spec.kind is FieldKind.CATEGORICAL:
            row[cols] = spec.category_shares
        elif spec.kind is FieldKind.BOOLEAN:
            row[cols] = spec.center
    return row


def _column_mask(schema: Schema, fields: np.ndarray) -> np.ndarray:
    """[n, n_fields] bool -> [n, width] bool."""
    widths = [s.stop - s.start for s in schema.slices]
    return np.repeat(fields, widths, axis=1)


def _score_rows(det: Detector, rows: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Scores (density + reconstruction) of encoded rows, as Detector.score_encoded does."""
    latent, recon = _forward(det.vae, rows)
    density, _, _ = det.mixture.assess(latent)
    contrib = field_contributions(
        det.schema, rows, recon, det.variances, missing, rule=det.score_rule
    )
    return density + contrib.sum(axis=1)


def _walk_points(
    det: Detector, row: np.ndarray, masks: np.ndarray, mode: np.ndarray, t: float
) -> tuple[np.ndarray, np.ndarray]:
    """For each field mask: the record with those fields masked, encoded, moved a share t of
    the way to ``mode``, decoded and snapped; the masked fields take the snapped values.
    Returns the candidate rows [n, width] and their latent points [n, latent_dim]."""
    cols = _column_mask(det.schema, masks)
    masked = np.where(cols, imputed(det.schema), row)
    with torch.inference_mode():
        z0 = det.vae.encode_mean(torch.from_numpy(masked.astype(np.float32))).double()
        z = z0 + t * (torch.from_numpy(mode) - z0)
        decoded = det.vae.decode(z.float()).double().numpy()
    return np.where(cols, snap(det.schema, decoded), row), z.numpy()


# --- the walk -------------------------------------------------------------------------------


def _search(
    det: Detector, row: np.ndarray, missing: np.ndarray, config: CounterfactualConfig
) -> tuple[np.ndarray, float, bool, np.ndarray]:
    """The changed-field mask, the step t and whether the point scored normal."""
    n_fields = len(det.schema.fields)
    target = config.target_p_value
    threshold = (
        det.calibrations.threshold
        if target is None
        else min(threshold_for(det.calibrations.score, target), det.calibrations.threshold)
    )
    mode = _mode(det, row)
    if _score_rows(det, row[None], missing[None])[0] <= threshold:
        return np.zeros(n_fields, dtype=bool), 0.0, True, mode
    best: tuple[float, np.ndarray, float] | None = None  # score, mask, t
    for t in np.linspace(0.0, 1.0, config.path_steps).tolist():
        chosen = np.zeros(n_fields, dtype=bool)
        for _ in range(min(config.max_changes, n_fields)):
            free = np.flatnonzero(~chosen)
            masks = np.repeat(chosen[None], len(free), axis=0)
            masks[np.arange(len(free)), free] = True
            rows, _ = _walk_points(det, row, masks, mode, t)
            scores = _score_rows(det, rows, missing & ~masks)
            k = int(np.argmin(scores))
            chosen = masks[k]
            if best is None or scores[k] < best[0]:
                best = (float(scores[k]), chosen, t)
            if scores[k] <= threshold:
                return chosen, t, True, mode
    assert best is not None
    return best[1], best[2], False, mode


def _mode(det: Detector, row: np.ndarray) -> np.ndarray:
    """The centre of the reference cluster nearest to the record's code."""
    latent, _ = _forward(det.vae, row[None])
    _, cluster, _ = det.mixture.assess(latent)
    return np.asarray(det.mixture.means[int(cluster[0])], dtype=np.float64)


# --- attributions ---------------------------------------------------------------------------


def _torch_terms(
    det: Detector, x: torch.Tensor, m: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Density and reconstruction (nats, [n]) of encoded rows ``x`` whose fields are missing
    by the share ``m`` [n, n_fields]: the scoring rule, differentiable in both."""
    schema = det.schema
    z = det.vae.encode_mean(x.float()).double()
    recon = det.vae.decode(z.float()).double()
    mix = det.mixture
    k = z.shape[1]
    comps = []
    for c in range(mix.n_components):
        chol = torch.from_numpy(mix.precision_cholesky[c])
        y = (z - torch.from_numpy(mix.means[c])) @ chol
        log_det = float(np.log(np.diagonal(mix.precision_cholesky[c])).sum())
        comps.append(
            math.log(mix.weights[c]) + log_det - 0.5 * (k * math.log(2 * math.pi) + (y * y).sum(1))
        )
    density = -torch.logsumexp(torch.stack(comps, dim=1), dim=1)
    per_column = 0.5 * (recon - x) ** 2 / torch.from_numpy(det.variances)
    rule3 = det.score_rule >= SCORE_RULE
    terms = []
    for spec, cols in zip(schema.fields, schema.slices, strict=True):
        if rule3 and spec.kind is FieldKind.CATEGORICAL:
            logits = recon[:, cols]
            terms.append(torch.logsumexp(logits, dim=1) - (logits * x[:, cols]).sum(1))
        else:
            terms.append(per_column[:, cols].sum(1))
    per_field = torch.stack(terms, dim=1)
    if rule3:
        per_field = per_field * (1.0 - m)
    q = torch.from_numpy(schema.missing_probabilities())
    per_field = per_field - m * torch.log(q) - (1.0 - m) * torch.log1p(-q)
    return density, per_field.sum(1)


def _exact_split(delta: float, weights: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """``weights`` [n_fields] corrected to sum exactly to ``delta``: the remainder shared in
    proportion to their size (evenly over the changed fields when all are zero)."""
    size = np.abs(weights)
    total = size.sum()
    share = size / total if total > 0 else changed / max(changed.sum(), 1)
    return weights + (delta - weights.sum()) * share


def attributions(
    det: Detector,
    actual: tuple[np.ndarray, np.ndarray],
    baseline: tuple[np.ndarray, np.ndarray],
    terms: tuple[tuple[float, float], tuple[float, float]],
    segments: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-field (density, reconstruction) attributions of the move from ``baseline`` to
    ``actual`` (encoded row, missing mask), each summing exactly to the difference of the two
    points' terms, which ``terms`` gives as ((density, reconstruction) actual, baseline)."""
    schema = det.schema
    x1, m1 = actual[0].astype(np.float64), actual[1].astype(np.float64)
    x0, m0 = baseline[0].astype(np.float64), baseline[1].astype(np.float64)
    n_fields = len(schema.fields)
    changed = np.array([np.any(x1[s] != x0[s]) for s in schema.slices]) | (m1 != m0)
    if not changed.any():
        return np.zeros(n_fields), np.zeros(n_fields)
    nodes = np.linspace(0.0, 1.0, segments + 1)
    mids = (nodes[:-1] + nodes[1:]) / 2
    alphas = np.concatenate([nodes[1:-1], mids])
    x = torch.from_numpy(x0 + alphas[:, None] * (x1 - x0)).requires_grad_(True)
    m = torch.from_numpy(m0 + alphas[:, None] * (m1 - m0)).requires_grad_(True)
    density, reconstruction = _torch_terms(det, x, m)
    inner = segments - 1
    out = []
    for which, values in enumerate((density, reconstruction)):
        gx, gm = torch.autograd.grad(
            values[inner:].sum(), (x, m), retain_graph=which == 0, allow_unused=True
        )
        per_col = (gx.numpy() if gx is not None else 0.0) * (x1 - x0)
        starts = np.array([s.start for s in schema.slices], dtype=np.intp)
        per_field = np.add.reduceat(per_col[inner:], starts, axis=1)
        if gm is not None:
            per_field = per_field + gm.numpy()[inner:] * (m1 - m0)
        at_nodes = np.concatenate(
            [[terms[1][which]], values[:inner].detach().numpy(), [terms[0][which]]]
        )
        steps = np.diff(at_nodes)
        total = np.zeros(n_fields)
        for s in range(segments):
            total += _exact_split(float(steps[s]), per_field[s] / segments, changed)
        out.append(total)
    return out[0], out[1]


# --- the whole explanation ------------------------------------------------------------------


def score_terms(det: Detector, rows: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """[n, 2]: density and reconstruction of encoded rows, as scoring computes them."""
    latent, recon = _forward(det.vae, rows)
    density, _, _ = det.mixture.assess(latent)
    contrib = field_contributions(
        det.schema, rows, recon, det.variances, missing, rule=det.score_rule
    )
    return np.stack([density, contrib.sum(axis=1)], axis=1)


def _record_values(schema: Schema, rows: np.ndarray, missing: np.ndarray) -> list[list[object]]:
    """Field values of encoded rows, [n][n_fields], None where missing."""
    values = [
        decode_field(spec, rows[:, cols])
        for spec, cols in zip(schema.fields, schema.slices, strict=True)
    ]
    return [
        [None if missing[i, j] else plain_value(values[j][i]) for j in range(len(schema.fields))]
        for i in range(len(rows))
    ]


def nearest_normal(
    det: Detector,
    row: np.ndarray,
    missing: np.ndarray,
    actual: Mapping[str, object] | None = None,
    config: CounterfactualConfig | None = None,
) -> Counterfactual:
    """The nearest normal record of one encoded record (``row`` [width], ``missing``
    [n_fields]) and the attributions of its score; ``actual`` (the record itself) gives the
    values shown as the record's own (else they are decoded from ``row``)."""
    config = config or CounterfactualConfig()
    schema = det.schema
    row = row.astype(np.float64)
    missing = missing.astype(bool)
    chosen, t_found, reached, mode = _search(det, row, missing, config)
    steps = np.linspace(0.0, 1.0, config.path_steps)
    steps = steps[steps <= t_found + 1e-12]
    path_rows, path_latent = [], []
    for t in steps.tolist():
        r, z = _walk_points(det, row, chosen[None], mode, t)
        path_rows.append(r[0])
        path_latent.append(z[0])
    normal_row = path_rows[-1]
    normal_missing = missing & ~chosen
    path_missing = np.repeat(normal_missing[None], len(path_rows), axis=0)
    path_scores = _score_rows(det, np.asarray(path_rows), path_missing)
    both = score_terms(det, np.stack([row, normal_row]), np.stack([missing, normal_missing]))
    density, reconstruction = attributions(
        det,
        (row, missing),
        (normal_row, normal_missing),
        ((both[0, 0], both[0, 1]), (both[1, 0], both[1, 1])),
        config.attribution_segments,
    )
    total = density + reconstruction
    scores = both.sum(axis=1)
    p = p_values(det.calibrations.score, np.concatenate([scores, path_scores]))
    values = _record_values(
        schema, np.stack([row, normal_row]), np.stack([missing, normal_missing])
    )
    own = [
        plain_value(actual.get(name)) if actual is not None else values[0][j]
        for j, name in enumerate(schema.names)
    ]
    changes = []
    for j in np.flatnonzero(chosen)[np.argsort(-total[chosen], kind="stable")].tolist():
        before, after = own[j], values[1][j]
        numeric = schema.fields[j].kind is FieldKind.NUMERIC
        delta = (
            float(after) - float(before)
            if numeric and isinstance(before, int | float) and isinstance(after, int | float)
            else None
        )
        changes.append(FieldChange(schema.names[j], before, after, delta, float(total[j])))
    own_latent, _ = _forward(det.vae, row[None])
    return Counterfactual(
        normal=dict(zip(schema.names, values[1], strict=True)),
        changes=tuple(changes),
        attributions=total,
        density_attributions=density,
        reconstruction_attributions=reconstruction,
        score=float(scores[0]),
        normal_score=float(scores[1]),
        p_value=float(p[0]),
        normal_p_value=float(p[1]),
        reached=reached,
        path_t=tuple(steps.tolist()),
        path_p_value=tuple(p[2:].tolist()),
        path_latent=np.concatenate([own_latent, np.asarray(path_latent)]),
    )


def nearest_normal_records(
    det: Detector,
    records: Sequence[Mapping[str, object]],
    config: CounterfactualConfig | None = None,
) -> list[Counterfactual]:
    """:func:`nearest_normal` of each record (mappings the detector scored valid)."""
    batch = encode_records(det.schema, records)
    bad = np.flatnonzero(~batch.valid)
    if bad.size:
        raise ValueError(f"record {bad[0]} cannot be scored: {batch.reasons[bad[0]]}")
    return [
        nearest_normal(det, batch.matrix[i], batch.missing[i], record, config)
        for i, record in enumerate(records)
    ]


def to_dict(cf: Counterfactual, latent_map: LatentMap, limit: int) -> dict[str, Any]:
    """The JSON kept beside an explanation: the changes (at most ``limit``), the two scores,
    and the walk (its steps' p-values and points on the 2-D latent map). Bounded: at most
    max_changes changes and path_steps + 1 points, whatever the record's width."""
    path_2d = latent_map.project(cf.path_latent).tolist()
    return {
        "reached": cf.reached,
        "score": cf.score,
        "p_value": cf.p_value,
        "normal_score": cf.normal_score,
        "normal_p_value": cf.normal_p_value,
        "changes": [
            {
                "name": c.name,
                "actual": c.actual,
                "normal": c.normal,
                "delta": c.delta,
                "attribution": c.attribution,
            }
            for c in cf.changes[: limit or None]
        ],
        "density_attribution": float(cf.density_attributions.sum()),
        "reconstruction_attribution": float(cf.reconstruction_attributions.sum()),
        "path": [
            {"t": t, "p_value": p, "latent_2d": xy}
            for t, p, xy in zip(cf.path_t, cf.path_p_value, path_2d[1:], strict=True)
        ],
        "latent_2d": path_2d[0],
    }
