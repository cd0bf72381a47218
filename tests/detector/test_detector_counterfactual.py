"""The nearest normal record and its attributions (detector.counterfactual): completeness on
every kind of field, an already-normal record, categorical and missing fields, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from detector.counterfactual import (
    Counterfactual,
    attributions,
    nearest_normal,
    nearest_normal_records,
    score_terms,
    snap,
)
from detector.detector import Detector
from detector.encoding import encode_records
from detector.schema import FieldKind
from tests.support.detector_data import Variant

REL = 1e-6


def explain_record(det: Detector, record: dict[str, object]) -> Counterfactual:
    batch = encode_records(det.schema, [record])
    assert batch.valid[0], batch.reasons[0]
    return nearest_normal(det, batch.matrix[0], batch.missing[0], record)


def assert_complete(det: Detector, record: dict[str, object], cf: Counterfactual) -> None:
    """The attributions add up to the score difference (1e-6 relative), the density and the
    reconstruction parts each to theirs; the two scores are the detector's up to float32
    rounding of a forward pass in a batch of another size, which is relative to the scores
    themselves: a record already normal (no change, a difference of 0) scores a few 1e-7 apart
    from its copy in the same batch on some CPUs' kernels."""
    scores = det.score_records([record, cf.normal])
    assert cf.score == pytest.approx(float(scores.score[0]), rel=1e-5)
    assert cf.normal_score == pytest.approx(float(scores.score[1]), rel=1e-5, abs=1e-4)
    diff = cf.score - cf.normal_score
    assert abs(cf.attributions.sum() - diff) <= REL * abs(diff)
    rounding = 1e-5 * (abs(diff) + abs(float(scores.score[0])))
    assert abs(cf.attributions.sum() - float(scores.score[0] - scores.score[1])) <= rounding
    d_diff = float(scores.density[0] - scores.density[1])
    r_diff = float(scores.reconstruction[0] - scores.reconstruction[1])
    parts = cf.density_attributions.sum() + cf.reconstruction_attributions.sum()
    assert abs(parts - diff) <= REL * abs(diff)
    d_rounding = 1e-5 * (abs(diff) + abs(float(scores.density[0])))
    r_rounding = 1e-5 * (abs(diff) + abs(float(scores.reconstruction[0])))
    assert abs(cf.density_attributions.sum() - d_diff) <= d_rounding
    assert abs(cf.reconstruction_attributions.sum() - r_diff) <= r_rounding


def test_out_of_range_number_is_restored_and_explained(numeric_variant: Variant) -> None:
    det = numeric_variant.detector
    record = dict(numeric_variant.normal[0])
    field = "mean_radius"
    original = record[field]
    record[field] = float(original) * 6  # type: ignore[arg-type]
    cf = explain_record(det, record)
    assert cf.reached and cf.normal_p_value >= det.calibrations.fpr
    assert cf.p_value < det.calibrations.fpr
    assert cf.changes[0].name == field
    assert abs(float(cf.normal[field]) - float(original)) < 3 * det.schema.fields[0].scale  # type: ignore[arg-type]
    assert cf.changes[0].delta == pytest.approx(float(cf.normal[field]) - record[field])  # type: ignore[arg-type,operator]
    assert_complete(det, record, cf)
    ranking = cf.ranking(np.zeros(len(det.schema.fields)))
    assert det.schema.names[ranking[0]] == field
    # unchanged fields carry no attribution, and the normal record keeps them
    unchanged = [j for j, n in enumerate(det.schema.names) if n not in {c.name for c in cf.changes}]
    assert np.all(cf.attributions[unchanged] == 0.0)
    assert all(
        cf.normal[det.schema.names[j]] == pytest.approx(record[det.schema.names[j]])
        for j in unchanged
    )


def test_normal_record_has_no_changes(mixed_variant: Variant) -> None:
    det = mixed_variant.detector
    scores = det.score_records(mixed_variant.normal)
    i = int(np.flatnonzero(~scores.flagged)[0])
    cf = explain_record(det, mixed_variant.normal[i])
    assert cf.changes == () and cf.reached
    assert cf.normal_score == pytest.approx(cf.score)
    assert np.all(cf.attributions == 0.0)
    assert cf.path_t == (0.0,)


def test_categorical_swap_is_found_with_exact_attributions(mixed_variant: Variant) -> None:
    det = mixed_variant.detector
    record = dict(mixed_variant.normal[0])
    record["amount"] = 30.0 if record["region"] == "eu" else 10.0  # another region's amount
    cf = explain_record(det, record)
    assert cf.p_value < det.calibrations.fpr
    assert cf.reached
    assert {c.name for c in cf.changes} & {"amount", "region"}
    assert_complete(det, record, cf)
    for change in cf.changes:
        spec = det.schema.fields[det.schema.names.index(change.name)]
        if spec.kind is FieldKind.CATEGORICAL:
            assert change.normal in spec.categories and change.delta is None


def test_missing_field_is_filled_in_and_priced(mixed_variant: Variant) -> None:
    det = mixed_variant.detector
    record = dict(mixed_variant.normal[1])
    record["amount"] = None  # never missing in the reference data
    record["express"] = None  # a boolean, never missing either
    record["items"] = None
    cf = explain_record(det, record)
    assert cf.p_value < det.calibrations.fpr
    assert cf.changes and {c.name for c in cf.changes} <= {"amount", "express", "items"}
    assert_complete(det, record, cf)
    for change in cf.changes:  # filled in, and its missingness cost nats the normal one saves
        assert change.actual is None and cf.normal[change.name] is not None
        assert cf.attributions[det.schema.names.index(change.name)] > 0


def test_every_kind_of_field_changed_at_once_adds_up(mixed_variant: Variant) -> None:
    det = mixed_variant.detector

    a = dict(mixed_variant.normal[2])
    b = {
        "region": "apac",
        "amount": 55.0,
        "items": 9,
        "express": not a["express"],
        "latency_ms": None,
    }
    enc = encode_records(det.schema, [a, b])
    terms = score_terms(det, enc.matrix.astype(np.float64), enc.missing)
    density, reconstruction = attributions(
        det,
        (enc.matrix[1:], enc.missing[1:]),
        (enc.matrix[:1], enc.missing[:1]),
        (terms[1:], terms[:1]),
        segments=8,
    )
    diff = terms[1].sum() - terms[0].sum()
    assert abs((density + reconstruction).sum() - diff) <= REL * abs(diff)
    assert np.count_nonzero(density + reconstruction) >= 4


def test_no_records_no_walks(mixed_variant: Variant) -> None:
    assert nearest_normal_records(mixed_variant.detector, []) == []


def test_deterministic(mixed_variant: Variant) -> None:
    det = mixed_variant.detector
    record = mixed_variant.unusual[1]
    first, second = explain_record(det, record), explain_record(det, record)
    assert first.changes == second.changes
    assert np.array_equal(first.attributions, second.attributions)
    assert first.path_p_value == second.path_p_value
    assert np.array_equal(first.path_latent, second.path_latent)


def test_a_batch_walks_each_record_as_alone(mixed_variant: Variant) -> None:
    """The walk of every record at once (candidates of all rows in one pass, rows leaving as
    they reach normal) gives each record the walk it gets alone, already-normal ones included."""
    det = mixed_variant.detector
    records = [*mixed_variant.unusual[:5], *mixed_variant.normal[:2]]
    together = nearest_normal_records(det, records)
    assert any(cf.changes for cf in together) and any(not cf.changes for cf in together)
    for record, batched in zip(records, together, strict=True):
        alone = explain_record(det, record)
        assert [c.name for c in batched.changes] == [c.name for c in alone.changes]
        assert batched.reached == alone.reached and batched.path_t == alone.path_t
        assert batched.normal_score == pytest.approx(alone.normal_score, rel=1e-5, abs=1e-4)
        np.testing.assert_allclose(batched.attributions, alone.attributions, rtol=1e-4, atol=1e-4)
        assert_complete(det, record, batched)


def test_snap_gives_values_a_record_can_hold(mixed_variant: Variant) -> None:
    det = mixed_variant.detector
    rng = np.random.default_rng(0)
    out = snap(det.schema, rng.normal(size=(5, det.schema.width)))
    for spec, cols in zip(det.schema.fields, det.schema.slices, strict=True):
        block = out[:, cols]
        if spec.kind is FieldKind.CATEGORICAL:
            assert np.all(block.sum(axis=1) == 1.0) and np.all(block[:, -1] == 0.0)
        elif spec.kind is FieldKind.BOOLEAN:
            assert set(np.unique(block)) <= {0.0, 1.0}
