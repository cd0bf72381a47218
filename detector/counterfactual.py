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
    # After the first round (every field tried alone at t=0), only the fields whose change
    # alone lowered the score most are tried: the walk's cost no longer grows with the width.
    candidate_fields: int = 8
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
    det: Detector, rows: np.ndarray, masks: np.ndarray, modes: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each row and field mask: the row with those fields masked, encoded, moved a share t
    of the way to its ``modes`` row, decoded and snapped; the masked fields take the snapped
    values. Returns the candidate rows [m, width] and their latent points [m, latent_dim]."""
    cols = _column_mask(det.schema, masks)
    masked = np.where(cols, imputed(det.schema), rows)
    with torch.inference_mode():
        z0 = det.vae.encode_mean(torch.from_numpy(masked.astype(np.float32))).double()
        z = z0 + torch.from_numpy(np.asarray(t, dtype=np.float64)[:, None]) * (
            torch.from_numpy(modes) - z0
        )
        decoded = det.vae.decode(z.float()).double().numpy()
    return np.where(cols, snap(det.schema, decoded), rows), z.numpy()


# --- the walk -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Found:
    chosen: np.ndarray  # [n, n_fields] the fields changed
    t: np.ndarray  # [n] the step taken
    reached: np.ndarray  # [n] whether it scored normal
    modes: np.ndarray  # [n, latent_dim] the walks' targets


def _threshold(det: Detector, config: CounterfactualConfig) -> float:
    target = config.target_p_value
    if target is None:
        return det.calibrations.threshold
    return min(threshold_for(det.calibrations.score, target), det.calibrations.threshold)


def _search(
    det: Detector, rows: np.ndarray, missing: np.ndarray, config: CounterfactualConfig
) -> _Found:
    """The greedy walk of every row at once (the candidates of all rows in one forward pass
    per step): per row the changed-field mask, the step t and whether it scored normal."""
    n, n_fields = missing.shape
    threshold = _threshold(det, config)
    latent, _ = _forward(det.vae, rows)
    _, cluster, _ = det.mixture.assess(latent)
    modes = np.asarray(det.mixture.means[cluster], dtype=np.float64)
    chosen_out = np.zeros((n, n_fields), dtype=bool)
    t_out = np.zeros(n)
    reached = _score_rows(det, rows, missing) <= threshold
    best = np.full(n, np.inf)
    allowed = np.ones((n, n_fields), dtype=bool)
    first_round = True
    for t in np.linspace(0.0, 1.0, config.path_steps).tolist():
        active = np.flatnonzero(~reached)
        if not active.size:
            break
        chosen = np.zeros((len(active), n_fields), dtype=bool)
        for _ in range(min(config.max_changes, n_fields)):
            owner, field = np.nonzero(~chosen & allowed[active])  # (row, free field) pairs
            masks = chosen[owner].copy()
            masks[np.arange(len(owner)), field] = True
            record = active[owner]
            cand, _ = _walk_points(det, rows[record], masks, modes[record], np.full(len(owner), t))
            scores = _score_rows(det, cand, missing[record] & ~masks)
            if first_round and n_fields > config.candidate_fields:
                alone = np.full((len(active), n_fields), np.inf)
                alone[owner, field] = scores
                pool = np.argsort(alone, axis=1, kind="stable")[:, : config.candidate_fields]
                allowed[active] = False
                allowed[active[:, None], pool] = True
            first_round = False
            # per row, its best candidate: sort by (row, score), take each row's first
            order = np.lexsort((scores, owner))
            first = order[np.r_[0, np.flatnonzero(np.diff(owner[order])) + 1]]
            rows_of = owner[first]
            chosen[rows_of] = masks[first]
            target = active[rows_of]
            better = scores[first] < best[target]
            best[target[better]] = scores[first][better]
            chosen_out[target[better]] = masks[first][better]
            t_out[target[better]] = t
            done = scores[first] <= threshold
            hit = target[done]
            chosen_out[hit] = masks[first][done]
            t_out[hit] = t
            reached[hit] = True
            keep = ~done
            if not keep.any():
                break
            active = active[rows_of[keep]]
            chosen = chosen[rows_of[keep]]
    return _Found(chosen_out, t_out, reached, modes)


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


def _exact_split(delta: np.ndarray, weights: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """``weights`` [..., n_fields] corrected to sum exactly to ``delta`` [...]: the remainder
    shared in proportion to their size (evenly over the changed fields when all are zero)."""
    size = np.abs(weights)
    total = size.sum(axis=-1, keepdims=True)
    even = changed / np.maximum(changed.sum(axis=-1, keepdims=True), 1)
    share = np.where(total > 0, size / np.where(total > 0, total, 1.0), even)
    return weights + (delta - weights.sum(axis=-1))[..., None] * share


def attributions(
    det: Detector,
    actual: tuple[np.ndarray, np.ndarray],
    baseline: tuple[np.ndarray, np.ndarray],
    terms: tuple[np.ndarray, np.ndarray],
    segments: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-field (density, reconstruction) attributions [n, n_fields] of the moves from
    ``baseline`` to ``actual`` (encoded rows [n, width], missing masks [n, n_fields]), each
    summing exactly to the difference of the two points' terms; ``terms`` gives them as
    ([n, 2] actual, [n, 2] baseline) of (density, reconstruction)."""
    schema = det.schema
    x1, m1 = actual[0].astype(np.float64), actual[1].astype(np.float64)
    x0, m0 = baseline[0].astype(np.float64), baseline[1].astype(np.float64)
    n, n_fields = m1.shape
    starts = np.array([s.start for s in schema.slices], dtype=np.intp)
    changed = (np.add.reduceat(np.abs(x1 - x0), starts, axis=1) > 0) | (m1 != m0)
    out = np.zeros((2, n, n_fields))
    todo = np.flatnonzero(changed.any(axis=1))
    if not todo.size:
        return out[0], out[1]
    nodes = np.linspace(0.0, 1.0, segments + 1)
    alphas = np.concatenate([nodes[1:-1], (nodes[:-1] + nodes[1:]) / 2])  # inner nodes, mids
    inner = segments - 1
    dx, dm = (x1 - x0)[todo], (m1 - m0)[todo]
    # rows: record-major, alpha-minor
    x = torch.from_numpy(
        (x0[todo][:, None, :] + alphas[None, :, None] * dx[:, None, :]).reshape(-1, x0.shape[1])
    ).requires_grad_(True)
    m = torch.from_numpy(
        (m0[todo][:, None, :] + alphas[None, :, None] * dm[:, None, :]).reshape(-1, n_fields)
    ).requires_grad_(True)
    values = _torch_terms(det, x, m)
    n_alpha = len(alphas)
    for which in (0, 1):
        per_row = values[which].reshape(len(todo), n_alpha)
        gx, gm = torch.autograd.grad(
            per_row[:, inner:].sum(), (x, m), retain_graph=which == 0, allow_unused=True
        )
        grad_x = (
            gx.numpy().reshape(len(todo), n_alpha, -1)[:, inner:]
            if gx is not None
            else np.zeros((len(todo), segments, x0.shape[1]))
        )
        per_field = np.add.reduceat(grad_x * dx[:, None, :], starts, axis=2)
        if gm is not None:
            per_field += gm.numpy().reshape(len(todo), n_alpha, -1)[:, inner:] * dm[:, None, :]
        at_nodes = np.concatenate(
            [
                terms[1][todo, which][:, None],
                per_row[:, :inner].detach().numpy(),
                terms[0][todo, which][:, None],
            ],
            axis=1,
        )
        steps = np.diff(at_nodes, axis=1)  # [rows, segments]
        split = _exact_split(steps, per_field / segments, changed[todo][:, None, :])
        out[which, todo] = split.sum(axis=1)
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


def nearest_normal_rows(
    det: Detector,
    rows: np.ndarray,
    missing: np.ndarray,
    actual: Sequence[Mapping[str, object]] | None = None,
    config: CounterfactualConfig | None = None,
) -> list[Counterfactual]:
    """The nearest normal records of encoded records (``rows`` [n, width], ``missing``
    [n, n_fields]) and the attributions of their scores, all rows at once; ``actual[i]`` (the
    record itself) gives the values shown as the record's own (else decoded from the row)."""
    config = config or CounterfactualConfig()
    schema = det.schema
    n = len(missing)
    if not n:
        return []
    rows = np.asarray(rows, dtype=np.float64).reshape(n, -1)
    missing = np.asarray(missing, dtype=bool)
    found = _search(det, rows, missing, config)
    grid = np.linspace(0.0, 1.0, config.path_steps)
    n_steps = np.searchsorted(grid, found.t + 1e-12)  # steps up to the one taken, per row
    owner = np.repeat(np.arange(n), n_steps)
    step_t = np.concatenate([grid[:k] for k in n_steps])
    path_rows, path_latent = _walk_points(
        det, rows[owner], found.chosen[owner], found.modes[owner], step_t
    )
    normal_missing = missing & ~found.chosen
    path_scores = _score_rows(det, path_rows, normal_missing[owner])
    last = np.cumsum(n_steps) - 1
    normal_rows = path_rows[last]
    own_terms = score_terms(det, rows, missing)
    normal_terms = score_terms(det, normal_rows, normal_missing)
    density, reconstruction = attributions(
        det,
        (rows, missing),
        (normal_rows, normal_missing),
        (own_terms, normal_terms),
        config.attribution_segments,
    )
    total = density + reconstruction
    scores = own_terms.sum(axis=1)
    normal_scores = normal_terms.sum(axis=1)
    p = p_values(det.calibrations.score, np.concatenate([scores, normal_scores, path_scores]))
    p_own, p_normal, p_path = p[:n], p[n : 2 * n], p[2 * n :]
    own_values = _record_values(schema, rows, missing)
    normal_values = _record_values(schema, normal_rows, normal_missing)
    own_latent, _ = _forward(det.vae, rows)
    out = []
    for i in range(n):
        own = [
            plain_value(actual[i].get(name)) if actual is not None else own_values[i][j]
            for j, name in enumerate(schema.names)
        ]
        changes = []
        chosen = found.chosen[i]
        for j in np.flatnonzero(chosen)[np.argsort(-total[i, chosen], kind="stable")].tolist():
            before, after = own[j], normal_values[i][j]
            numeric = schema.fields[j].kind is FieldKind.NUMERIC
            delta = (
                float(after) - float(before)
                if numeric and _is_number(before) and _is_number(after)
                else None
            )
            changes.append(FieldChange(schema.names[j], before, after, delta, float(total[i, j])))
        mine = owner == i
        out.append(
            Counterfactual(
                normal=dict(zip(schema.names, normal_values[i], strict=True)),
                changes=tuple(changes),
                attributions=total[i],
                density_attributions=density[i],
                reconstruction_attributions=reconstruction[i],
                score=float(scores[i]),
                normal_score=float(normal_scores[i]),
                p_value=float(p_own[i]),
                normal_p_value=float(p_normal[i]),
                reached=bool(found.reached[i]),
                path_t=tuple(step_t[mine].tolist()),
                path_p_value=tuple(p_path[mine].tolist()),
                path_latent=np.concatenate([own_latent[i : i + 1], path_latent[mine]]),
            )
        )
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def nearest_normal(
    det: Detector,
    row: np.ndarray,
    missing: np.ndarray,
    actual: Mapping[str, object] | None = None,
    config: CounterfactualConfig | None = None,
) -> Counterfactual:
    """:func:`nearest_normal_rows` of one encoded record."""
    given = None if actual is None else [actual]
    return nearest_normal_rows(det, row[None], missing[None], given, config)[0]


def nearest_normal_records(
    det: Detector,
    records: Sequence[Mapping[str, object]],
    config: CounterfactualConfig | None = None,
) -> list[Counterfactual]:
    """:func:`nearest_normal_rows` of records (mappings the detector scores valid)."""
    if not records:
        return []
    batch = encode_records(det.schema, records)
    bad = np.flatnonzero(~batch.valid)
    if bad.size:
        raise ValueError(f"record {bad[0]} cannot be scored: {batch.reasons[bad[0]]}")
    return nearest_normal_rows(det, batch.matrix, batch.missing, records, config)


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
