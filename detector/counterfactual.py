"""The nearest normal record and per-field attributions that add up to the score.

For a record the model flags, a walk in latent space: the fields chosen to change are masked
(imputed as a missing value would be), the record is encoded, and its code moves from there
towards the mode of its nearest reference cluster; at each step the code is decoded and the
chosen fields take the decoded values (snapped to a category, a boolean, the field's step), the
others keep the record's own. The fields are chosen greedily at the record's own code (t=0)
among those the decoder reconstructs worst, the one whose change lowers the score most first,
until the record scores normal (p-value at least the model's false-alarm rate); a record that
does not tries that order's first fields at the later steps. The smallest step, then the fewest
fields, that scores normal gives the **nearest normal record**.

The **attributions** split the score difference between the record and its nearest normal
record over the fields: integrated gradients of the density and reconstruction terms along the
straight line between the two in encoded space (a missing value's missingness relaxed to a
share), made exact per segment: each segment's score difference is split by gradient times
change, its small quadrature remainder shared in proportion. So they add up to the difference
of the two scores by construction, and a field that does not change gets none.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from detector.calibration import p_values, threshold_for
from detector.detector import Detector, LatentMap
from detector.encoding import decode_field, encode_records, plain_value
from detector.schema import FieldKind, Schema
from detector.scoring import SCORE_RULE, field_contributions
from detector.vae import VAE


@dataclass(frozen=True)
class CounterfactualConfig:
    """How far and how finely the walk looks; chosen on the benchmark's development half."""

    path_steps: int = 6  # points on the latent path, the record's code (t=0) to the mode (t=1)
    max_changes: int = 4  # fields changed at most before the walk gives up
    attribution_segments: int = 2  # straight-line segments of the integrated gradients
    # Only the fields the decoder reconstructs worst (the record's largest per-field
    # reconstruction terms) are candidates: the walk's cost does not grow with the width.
    candidate_fields: int = 12
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

    fields: tuple[str, ...]  # the model's fields
    own: Mapping[str, object]  # the record's values by field name (it may hold more keys)
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

    @property
    def normal(self) -> dict[str, object]:
        """Every field of the nearest normal record, in the record's own units and categories
        (built when asked: the consumer stores the changes alone)."""
        out = {name: plain_value(self.own.get(name)) for name in self.fields}
        out.update((c.name, c.normal) for c in self.changes)
        return out

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


class _Net:
    """The VAE's encoder (to the posterior mean) and decoder as lists of layers run by hand:
    the same operations as the modules (the same bits), without their per-call overhead, which
    dominates the walk's many small passes. A layer other than Linear or ReLU runs as its
    module."""

    def __init__(self, vae: VAE) -> None:
        self.encoder = (*vae.encoder, vae.to_mean)
        self.decoder = tuple(vae.decoder)
        self.steps = {
            id(layer): (layer.weight, layer.bias) if isinstance(layer, nn.Linear) else layer
            for layer in (*self.encoder, *self.decoder)
        }

    def _run(self, layers: tuple[nn.Module, ...], x: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            step = self.steps[id(layer)]
            if isinstance(step, tuple):
                x = F.linear(x, step[0], step[1])
            elif isinstance(step, nn.ReLU):
                x = torch.relu(x)
            else:
                x = step(x)
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.encoder, x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._run(self.decoder, z)


_NETS: weakref.WeakKeyDictionary[VAE, _Net] = weakref.WeakKeyDictionary()


def _net(vae: VAE) -> _Net:
    net = _NETS.get(vae)
    if net is None:
        net = _NETS[vae] = _Net(vae)
    return net


def _forward_fast(vae: VAE, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """detector._forward (posterior means and their reconstructions), through :class:`_Net`."""
    net = _net(vae)
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        mean = net.encode(x)
        recon = net.decode(mean)
    return mean.numpy().astype(np.float64), recon.numpy()


def _assess(
    det: Detector, rows: np.ndarray, missing: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latent codes [n, latent_dim], (density, reconstruction) terms [n, 2] and per-field
    reconstruction terms [n, n_fields] of encoded rows, as Detector.score_encoded computes
    them, in one forward pass."""
    latent, recon = _forward_fast(det.vae, rows)
    density, _, _ = det.mixture.assess(latent)
    contrib = field_contributions(
        det.schema, rows, recon, det.variances, missing, rule=det.score_rule
    )
    return latent, np.stack([density, contrib.sum(axis=1)], axis=1), contrib


def _score_rows(det: Detector, rows: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Scores (density + reconstruction) of encoded rows."""
    return _assess(det, rows, missing)[1].sum(axis=1)


def _walk_points(
    det: Detector, rows: np.ndarray, masks: np.ndarray, modes: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each row and field mask: the row with those fields masked, encoded, moved a share t
    of the way to its ``modes`` row, decoded and snapped; the masked fields take the snapped
    values. Returns the candidate rows [m, width] and their latent points [m, latent_dim]."""
    cols = _column_mask(det.schema, masks)
    masked = np.where(cols, imputed(det.schema), rows)
    net = _net(det.vae)
    with torch.inference_mode():
        z0 = net.encode(torch.from_numpy(masked.astype(np.float32))).numpy().astype(np.float64)
        z = z0 + np.asarray(t, dtype=np.float64)[:, None] * (modes - z0)
        decoded = net.decode(torch.from_numpy(z.astype(np.float32))).numpy().astype(np.float64)
    return np.where(cols, snap(det.schema, decoded), rows), z


# --- the walk -------------------------------------------------------------------------------


def _threshold(det: Detector, config: CounterfactualConfig) -> float:
    target = config.target_p_value
    if target is None:
        return det.calibrations.threshold
    return min(threshold_for(det.calibrations.score, target), det.calibrations.threshold)


def _best_per_row(owner: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Index of each row's first candidate by ``keys`` (the last key sorts first), rows in
    order; ``owner`` [m] names each candidate's row."""
    by_row = np.lexsort((*keys, owner))
    return by_row[np.r_[0, np.flatnonzero(np.diff(owner[by_row])) + 1]]


@dataclass
class _Walk:
    """The search's state, per row."""

    chosen: np.ndarray  # [n, n_fields] the fields of the best point so far
    t: np.ndarray  # [n] its step
    reached: np.ndarray  # [n] whether it scores normal
    best: np.ndarray  # [n] its score
    order: np.ndarray  # [n, max_changes] the greedy order of fields at t=0
    taken: np.ndarray  # [n] how many fields the greedy rounds chose
    point: np.ndarray  # [n, width] the best point so far (snapped, encoded)
    latent: np.ndarray  # [n, latent_dim] its place on the path
    terms: np.ndarray  # [n, 2] its density and reconstruction

    def keep(
        self,
        target: np.ndarray,
        which: np.ndarray,
        masks: np.ndarray,
        scores: np.ndarray,
        candidates: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> None:
        """Rows ``target`` take candidates ``which`` as their best point so far."""
        self.chosen[target] = masks[which]
        self.best[target] = scores[which]
        for mine, theirs in zip((self.point, self.latent, self.terms), candidates, strict=True):
            mine[target] = theirs[which]


def _greedy(
    det: Detector,
    *,
    rows: np.ndarray,
    missing: np.ndarray,
    modes: np.ndarray,
    walk: _Walk,
    config: CounterfactualConfig,
    threshold: float,
    contributions: np.ndarray,
) -> None:
    """At the record's own code (t=0), fields chosen greedily among the ``candidate_fields``
    with the largest reconstruction terms (``contributions`` [n, n_fields]): the one whose
    change lowers the score most, then one more at a time; one forward pass a round for the
    candidates of all rows still not normal."""
    n_fields = missing.shape[1]
    allowed = np.ones_like(walk.chosen)
    if n_fields > config.candidate_fields:
        pool = np.argsort(-contributions, axis=1, kind="stable")[:, : config.candidate_fields]
        allowed[:] = False
        allowed[np.arange(len(allowed))[:, None], pool] = True
    active = np.flatnonzero(~walk.reached)
    chosen = np.zeros((len(active), n_fields), dtype=bool)
    for k in range(walk.order.shape[1]):
        if not active.size:
            return
        owner, field = np.nonzero(~chosen & allowed[active])  # (row, free field) pairs
        if not owner.size:
            return
        masks = chosen[owner].copy()
        masks[np.arange(len(owner)), field] = True
        record = active[owner]
        cand, z = _walk_points(det, rows[record], masks, modes[record], np.zeros(len(owner)))
        _, terms, _ = _assess(det, cand, missing[record] & ~masks)
        scores = terms.sum(axis=1)
        first = _best_per_row(owner, scores)
        target, score = record[first], scores[first]
        walk.order[target, k] = field[first]
        walk.taken[target] = k + 1
        better = (score < walk.best[target]) | (score <= threshold)
        walk.keep(target[better], first[better], masks, scores, (cand, z, terms))
        done = score <= threshold
        walk.reached[target[done]] = True
        active = target[~done]
        chosen = masks[first][~done]


def _later_steps(
    det: Detector,
    *,
    rows: np.ndarray,
    missing: np.ndarray,
    modes: np.ndarray,
    walk: _Walk,
    steps: np.ndarray,
    threshold: float,
) -> None:
    """Rows still not normal try the first 1..max_changes fields of their greedy order at
    each later step of the path, all in one forward pass; the smallest step, then the fewest
    fields, that scores normal is taken, else the lowest score if lower than before."""
    active = np.flatnonzero(~walk.reached)
    max_changes = walk.order.shape[1]
    if not active.size or not steps.size:
        return
    owner, step, size = (
        a.ravel()
        for a in np.meshgrid(
            active, np.arange(len(steps)), np.arange(1, max_changes + 1), indexing="ij"
        )
    )
    keep = size <= walk.taken[owner]
    owner, step, size = owner[keep], step[keep], size[keep]
    if not owner.size:
        return
    prefix = np.arange(max_changes)[None, :] < size[:, None]  # [m, max_changes]
    masks = np.zeros((len(owner), walk.chosen.shape[1]), dtype=bool)
    masks[np.nonzero(prefix)[0], walk.order[owner][prefix]] = True
    cand, z = _walk_points(det, rows[owner], masks, modes[owner], steps[step])
    _, terms, _ = _assess(det, cand, missing[owner] & ~masks)
    scores = terms.sum(axis=1)
    normal = scores <= threshold
    first = _best_per_row(owner, scores, np.where(normal, step * (max_changes + 1) + size, np.inf))
    target = owner[first]
    better = normal[first] | (scores[first] < walk.best[target])
    target, first = target[better], first[better]
    walk.keep(target, first, masks, scores, (cand, z, terms))
    walk.t[target] = steps[step[first]]
    walk.reached[target] = normal[first]


def _search(
    det: Detector,
    rows: np.ndarray,
    missing: np.ndarray,
    own: tuple[np.ndarray, np.ndarray, np.ndarray],
    config: CounterfactualConfig,
) -> tuple[_Walk, np.ndarray]:
    """The walk of every row at once, in a few forward passes whatever the number of rows:
    the greedy choice of fields at t=0 (:func:`_greedy`), then the later steps of the path for
    the rows it did not make normal (:func:`_later_steps`). ``own``: the rows' latent codes and
    (density, reconstruction) terms."""
    n, n_fields = missing.shape
    threshold = _threshold(det, config)
    _, cluster, _ = det.mixture.assess(own[0])
    modes = np.asarray(det.mixture.means[cluster], dtype=np.float64)
    score = own[1].sum(axis=1)
    max_changes = min(config.max_changes, n_fields)
    walk = _Walk(
        chosen=np.zeros((n, n_fields), dtype=bool),
        t=np.zeros(n),
        reached=score <= threshold,
        best=np.full(n, np.inf),
        order=np.zeros((n, max_changes), dtype=np.intp),
        taken=np.zeros(n, dtype=np.intp),
        point=rows.copy(),
        latent=own[0].copy(),
        terms=own[1].copy(),
    )
    _greedy(
        det,
        rows=rows,
        missing=missing,
        modes=modes,
        walk=walk,
        config=config,
        threshold=threshold,
        contributions=own[2],
    )
    steps = np.linspace(0.0, 1.0, config.path_steps)[1:]
    _later_steps(
        det, rows=rows, missing=missing, modes=modes, walk=walk, steps=steps, threshold=threshold
    )
    return walk, modes


# --- attributions ---------------------------------------------------------------------------


def _torch_terms(
    det: Detector, x: torch.Tensor, m: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Density and reconstruction (nats, [n]) of encoded rows ``x`` whose fields are missing
    by the share ``m`` [n, n_fields]: the scoring rule, differentiable in both. Whole-matrix
    operations (no loop over fields or clusters): the attributions' points are many."""
    schema = det.schema
    net = _net(det.vae)
    z = net.encode(x.float()).double()
    recon = net.decode(z.float()).double()
    mix = det.mixture
    k = z.shape[1]
    chol = torch.from_numpy(mix.precision_cholesky)  # [c, k, k]
    y = torch.einsum("nck,ckl->ncl", z[:, None, :] - torch.from_numpy(mix.means)[None], chol)
    log_det = np.log(np.diagonal(mix.precision_cholesky, axis1=1, axis2=2)).sum(axis=1)
    constant = torch.from_numpy(np.log(mix.weights) + log_det - 0.5 * k * math.log(2 * math.pi))
    density = -torch.logsumexp(constant - 0.5 * (y * y).sum(2), dim=1)
    per_column = 0.5 * (recon - x) ** 2 / torch.from_numpy(det.variances)
    rule3 = det.score_rule >= SCORE_RULE
    field_of = np.repeat(np.arange(len(schema.fields)), [s.stop - s.start for s in schema.slices])
    categorical = [
        j for j, spec in enumerate(schema.fields) if rule3 and spec.kind is FieldKind.CATEGORICAL
    ]
    if categorical:
        numeric_cols = np.ones(schema.width, dtype=bool)
        for j in categorical:
            numeric_cols[schema.slices[j]] = False
        per_column = per_column * torch.from_numpy(numeric_cols.astype(np.float64))
    per_field = torch.zeros(len(x), len(schema.fields), dtype=torch.float64).index_add(
        1, torch.from_numpy(field_of), per_column
    )
    if categorical:
        cross = torch.stack(
            [
                torch.logsumexp(recon[:, schema.slices[j]], dim=1)
                - (recon[:, schema.slices[j]] * x[:, schema.slices[j]]).sum(1)
                for j in categorical
            ],
            dim=1,
        )
        per_field = per_field.index_add(1, torch.tensor(categorical), cross)
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
    # rows: term-major (the density's copy, then the reconstruction's), record, alpha: one
    # backward pass gives both terms' gradients
    points = (x0[todo][:, None, :] + alphas[None, :, None] * dx[:, None, :]).reshape(
        -1, x0.shape[1]
    )
    shares = (m0[todo][:, None, :] + alphas[None, :, None] * dm[:, None, :]).reshape(-1, n_fields)
    x = torch.from_numpy(np.concatenate([points, points])).requires_grad_(True)
    m = torch.from_numpy(np.concatenate([shares, shares])).requires_grad_(True)
    density, reconstruction = _torch_terms(det, x, m)
    n_alpha = len(alphas)
    half = len(points)
    per_row = (
        density[:half].reshape(len(todo), n_alpha),
        reconstruction[half:].reshape(len(todo), n_alpha),
    )
    gx, gm = torch.autograd.grad(
        per_row[0][:, inner:].sum() + per_row[1][:, inner:].sum(), (x, m), allow_unused=True
    )
    for which in (0, 1):
        rows_of = slice(which * half, (which + 1) * half)
        grad_x = (
            gx[rows_of].numpy().reshape(len(todo), n_alpha, -1)[:, inner:]
            if gx is not None
            else np.zeros((len(todo), segments, x0.shape[1]))
        )
        per_field = np.add.reduceat(grad_x * dx[:, None, :], starts, axis=2)
        if gm is not None:
            per_field += (
                gm[rows_of].numpy().reshape(len(todo), n_alpha, -1)[:, inner:] * dm[:, None, :]
            )
        at_nodes = np.concatenate(
            [
                terms[1][todo, which][:, None],
                per_row[which][:, :inner].detach().numpy(),
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
    return _assess(det, rows, missing)[1]


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
    own_latent, own_terms, own_fields = _assess(det, rows, missing)
    walk, modes = _search(det, rows, missing, (own_latent, own_terms, own_fields), config)
    normal_missing = missing & ~walk.chosen
    # the path's points before the one taken (none for a point at t=0)
    grid = np.linspace(0.0, 1.0, config.path_steps)
    earlier = np.searchsorted(grid, walk.t + 1e-12) - 1
    owner = np.repeat(np.arange(n), earlier)
    step_t = grid[np.arange(len(owner)) - np.repeat(np.cumsum(earlier) - earlier, earlier)]
    before_latent = np.zeros((0, own_latent.shape[1]))
    before_scores = np.zeros(0)
    if owner.size:
        earlier_rows, before_latent = _walk_points(
            det, rows[owner], walk.chosen[owner], modes[owner], step_t
        )
        before_scores = _score_rows(det, earlier_rows, normal_missing[owner])
    normal_rows, normal_terms = walk.point, walk.terms
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
    p = p_values(det.calibrations.score, np.concatenate([scores, normal_scores, before_scores]))
    p_own, p_normal, p_before = p[:n], p[n : 2 * n], p[2 * n :]
    own_records: Sequence[Mapping[str, object]] = (
        actual
        if actual is not None
        else [
            dict(zip(schema.names, v, strict=True)) for v in _record_values(schema, rows, missing)
        ]
    )
    normal_values = _changed_values(schema, normal_rows, walk.chosen)
    bounds = np.r_[0, np.cumsum(earlier)].tolist()
    names = schema.names
    out = []
    for i in range(n):
        changes = []
        chosen = walk.chosen[i]
        for j in np.flatnonzero(chosen)[np.argsort(-total[i, chosen], kind="stable")].tolist():
            name = names[j]
            before = plain_value(own_records[i].get(name))
            after = normal_values[j][i]
            numeric = schema.fields[j].kind is FieldKind.NUMERIC
            delta = (
                float(after) - float(before)  # type: ignore[arg-type]
                if numeric and _is_number(before) and _is_number(after)
                else None
            )
            changes.append(FieldChange(name, before, after, delta, float(total[i, j])))
        mine = slice(bounds[i], bounds[i + 1])
        out.append(
            Counterfactual(
                fields=names,
                own=own_records[i],
                changes=tuple(changes),
                attributions=total[i],
                density_attributions=density[i],
                reconstruction_attributions=reconstruction[i],
                score=float(scores[i]),
                normal_score=float(normal_scores[i]),
                p_value=float(p_own[i]),
                normal_p_value=float(p_normal[i]),
                reached=bool(walk.reached[i]),
                path_t=(*step_t[mine].tolist(), float(walk.t[i])),
                path_p_value=(*p_before[mine].tolist(), float(p_normal[i])),
                path_latent=np.concatenate(
                    [own_latent[i : i + 1], before_latent[mine], walk.latent[i : i + 1]]
                ),
            )
        )
    return out


def _changed_values(
    schema: Schema, rows: np.ndarray, chosen: np.ndarray
) -> dict[int, dict[int, object]]:
    """The values of the chosen fields of encoded rows: {field: {row: value}}, only where
    chosen (a chosen field is never missing in the nearest normal record)."""
    out: dict[int, dict[int, object]] = {}
    for j in np.flatnonzero(chosen.any(axis=0)).tolist():
        which = np.flatnonzero(chosen[:, j])
        values = decode_field(schema.fields[j], rows[which][:, schema.slices[j]])
        out[j] = dict(zip(which.tolist(), map(plain_value, values), strict=True))
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
