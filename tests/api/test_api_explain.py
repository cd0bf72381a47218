"""The nearest normal record over HTTP: GET /api/flagged/{id} of a record the consumer's path
stored (and of one stored before it existed), and POST /api/models/{version}/explain (a record
posted as JSON, explained against a model version; size limits, unknown models, the token)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.settings import ApiSettings
from latentwatch.explaining import ModelExplainer
from storage.repository import write_flagged
from streams.messages import PlainMessage
from streams.scoring import flagged_records
from tests.support.api_client import local_client
from tests.support.api_data import flagged
from tests.support.cancer_model import Model

TOKEN = "t" * 32


@pytest.fixture(scope="module")
def explainer(cancer_model: Model) -> ModelExplainer:
    return ModelExplainer([cancer_model.path])


@pytest.fixture
def served(sessions: sessionmaker[Session], explainer: ModelExplainer) -> Iterator[TestClient]:
    with local_client(create_app(ApiSettings(), sessions, explainer)) as client:
        yield client


def assert_adds_up(walk: dict[str, object]) -> None:
    total = sum(c["attribution"] for c in walk["changes"])  # type: ignore[attr-defined,index]
    difference = walk["score"] - walk["normal_score"]  # type: ignore[operator]
    assert total == pytest.approx(difference, rel=1e-6)


def test_a_stored_flagged_record_shows_its_nearest_normal_record(
    served: TestClient, sessions: sessionmaker[Session], cancer_model: Model
) -> None:
    det = cancer_model.detector
    records = cancer_model.anomalous[:6]
    scores = det.score_records(records)
    assert scores.flagged.any()
    messages = [
        PlainMessage("t", 0, i, 1_790_000_000_000, None, orjson.dumps(r))
        for i, r in enumerate(records)
    ]
    rows = flagged_records(
        det, messages, scores, record_of=records.__getitem__, now=datetime.now(UTC)
    )
    write_flagged(sessions, [*rows, flagged(1)])  # the last: stored before issue 20
    page = served.get("/api/flagged", params={"limit": 100}).json()["records"]
    for summary in page:
        detail = served.get(f"/api/flagged/{summary['id']}").json()
        walk = detail["explanation"]["nearest_normal"]
        if summary["topic"] != "t":  # an old row renders, without one
            assert walk is None and detail["explanation"]["features"]
            continue
        assert walk["changes"] and walk["normal_score"] < walk["score"]
        assert (walk["normal_p_value"] >= det.calibrations.fpr) == walk["reached"]
        assert [p["t"] for p in walk["path"]] == sorted(p["t"] for p in walk["path"])
        assert_adds_up(walk)
        first = walk["changes"][0]
        assert detail["explanation"]["features"][0]["name"] == first["name"]
        assert first["actual"] == detail["record"][first["name"]]


def test_a_posted_record_is_explained_against_a_model_version(
    served: TestClient, cancer_model: Model
) -> None:
    version = cancer_model.detector.version
    odd = dict(cancer_model.normal[0])
    odd["mean_area"] = float(odd["mean_area"]) * 8  # type: ignore[arg-type]
    answer = served.post(f"/api/models/{version}/explain", json=odd)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_version"] == version and body["flagged"]
    walk = body["explanation"]["nearest_normal"]
    assert walk["reached"] and walk["changes"][0]["name"] == "mean_area"
    assert walk["changes"][0]["normal"] < odd["mean_area"]
    assert_adds_up(walk)

    scores = cancer_model.detector.score_records(cancer_model.normal[:40])
    calm = cancer_model.normal[int((~scores.flagged).nonzero()[0][0])]
    quiet = served.post(f"/api/models/{version}/explain", json=calm).json()
    assert not quiet["flagged"] and quiet["explanation"]["nearest_normal"]["changes"] == []


def test_explain_refuses_unknown_models_bad_records_and_large_ones(
    served: TestClient, sessions: sessionmaker[Session], cancer_model: Model
) -> None:
    version = cancer_model.detector.version
    record = cancer_model.normal[0]
    assert served.post("/api/models/nope/explain", json=record).status_code == 404
    bad = served.post(f"/api/models/{version}/explain", json={**record, "mean_area": "big"})
    assert bad.status_code == 422 and "mean_area" in bad.json()["detail"]
    assert served.post(f"/api/models/{version}/explain", json=[1, 2]).status_code == 422
    wide = {f"f{i}": i for i in range(ApiSettings().max_record_fields + 1)}
    assert served.post(f"/api/models/{version}/explain", json=wide).status_code == 413
    with local_client(create_app(ApiSettings(), sessions)) as plain:
        answer = plain.post(f"/api/models/{version}/explain", json=record)
        assert answer.status_code == 404 and "--model" in answer.json()["detail"]


def test_explain_needs_the_token(
    sessions: sessionmaker[Session], explainer: ModelExplainer, cancer_model: Model
) -> None:
    url = f"/api/models/{cancer_model.detector.version}/explain"
    with local_client(create_app(ApiSettings(token=TOKEN), sessions, explainer)) as client:
        assert client.post(url, json=cancer_model.normal[0]).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert client.post(url, json=cancer_model.normal[0], headers=auth).status_code == 200
