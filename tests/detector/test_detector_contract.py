"""The detector contract, checked on every fitted variant (numeric real data, mixed records).

Each check is a plain function of (detector, normal records, unusual records); the list is
applied to each variant by parametrize, so a new variant gets every check for free.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from detector.detector import Detector
from detector.explain import explain, explain_rows, top_feature_names
from tests.support.detector_data import VARIANT_FIXTURES, Variant

Check = Callable[[Variant], None]


def check_higher_is_more_anomalous(v: Variant) -> None:
    normal = v.detector.score_records(v.normal).score
    unusual = v.detector.score_records(v.unusual).score
    assert np.median(unusual) > np.percentile(normal, 90)


def check_outputs_are_in_range(v: Variant) -> None:
    s = v.detector.score_records(v.normal + v.unusual)
    assert s.valid.all()
    assert ((s.p_value >= 0) & (s.p_value <= 1)).all()
    assert ((s.severity >= 0) & (s.severity <= 100)).all()
    assert ((s.cluster >= 0) & (s.cluster < v.detector.mixture.n_components)).all()
    assert np.allclose(s.score, s.density + s.reconstruction)
    assert np.allclose(s.contributions.sum(axis=1), s.reconstruction)


def check_flag_agrees_with_p_value_and_threshold(v: Variant) -> None:
    s = v.detector.score_records(v.normal + v.unusual)
    cal = v.detector.calibrations
    assert np.array_equal(s.flagged, s.score > cal.threshold)
    assert np.array_equal(s.flagged, s.p_value < cal.fpr)


def check_batch_composition_does_not_change_a_score(v: Variant) -> None:
    records = v.normal[:20] + v.unusual[:5]
    together = v.detector.score_records(records).score
    alone = np.array([v.detector.score_records([r]).score[0] for r in records])
    reversed_ = v.detector.score_records(records[::-1]).score[::-1]
    assert np.allclose(together, alone, rtol=1e-5)
    assert np.allclose(together, reversed_, rtol=1e-5)


def check_bad_records_are_rejected_not_raised(v: Variant) -> None:
    field = v.detector.schema.fields[0].name
    bad: list[object] = [{field: {"nested": 1}}, [1, 2], None]
    s = v.detector.score_records([v.normal[0], *bad, v.normal[1]])
    assert s.valid.tolist() == [True, False, False, False, True]
    assert all(r for r in s.reasons[1:4])
    assert np.isnan(s.score[1:4]).all() and not s.flagged[1:4].any()


def check_scoring_is_deterministic(v: Variant) -> None:
    a = v.detector.score_records(v.unusual).score
    b = v.detector.score_records(v.unusual).score
    assert np.array_equal(a, b)


def check_explanations_name_fields_with_actual_and_expected(v: Variant) -> None:
    s = v.detector.score_records(v.unusual)
    row = int(np.argmax(s.score))
    e = explain(v.detector.schema, v.detector.latent_map, s, row, actual=v.unusual[row], top=3)
    names = v.detector.schema.names
    assert len(e.features) == min(3, len(names))
    assert [f.name for f in e.features] == top_feature_names(v.detector.schema, s, 3)[row]
    contributions = [f.contribution for f in e.features]
    assert contributions == sorted(contributions, reverse=True)
    assert all(f.name in names for f in e.features)
    assert all(f.actual == v.unusual[row].get(f.name) for f in e.features)
    assert e.cluster == s.cluster[row]
    assert len(e.latent) == v.detector.vae.config.latent_dim
    assert len(e.latent_2d) == 2


def check_batched_explanations_match_one_at_a_time(v: Variant) -> None:
    s = v.detector.score_records(v.unusual)
    rows = np.flatnonzero(s.valid)[:20].tolist()
    schema, latent_map = v.detector.schema, v.detector.latent_map
    batched = explain_rows(schema, latent_map, s, rows, actual=[v.unusual[r] for r in rows])
    single = [explain(schema, latent_map, s, r, actual=v.unusual[r]) for r in rows]
    assert len(batched) == len(rows) > 1
    for a, b in zip(batched, single, strict=True):
        assert a.features == b.features
        assert (a.cluster, a.cluster_distance, a.latent) == (
            b.cluster,
            b.cluster_distance,
            b.latent,
        )
        assert a.latent_2d == pytest.approx(b.latent_2d, abs=1e-12)
    assert len({e.latent for e in batched}) > 1  # each row explained with its own values


def check_unscored_rows_cannot_be_explained(v: Variant) -> None:
    s = v.detector.score_records([None])
    with pytest.raises(ValueError, match="row 0 was not scored: record must be an object"):
        explain(v.detector.schema, v.detector.latent_map, s, 0, actual={})


CHECKS: list[Check] = [
    check_higher_is_more_anomalous,
    check_outputs_are_in_range,
    check_flag_agrees_with_p_value_and_threshold,
    check_batch_composition_does_not_change_a_score,
    check_bad_records_are_rejected_not_raised,
    check_scoring_is_deterministic,
    check_explanations_name_fields_with_actual_and_expected,
    check_batched_explanations_match_one_at_a_time,
    check_unscored_rows_cannot_be_explained,
]


@pytest.mark.parametrize("variant_name", list(VARIANT_FIXTURES))
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_contract(check: Check, variant_name: str, request: pytest.FixtureRequest) -> None:
    check(request.getfixturevalue(VARIANT_FIXTURES[variant_name]))


def test_variants_are_real_detectors(numeric_detector: Detector, mixed_detector: Detector) -> None:
    assert numeric_detector.schema.names != mixed_detector.schema.names
