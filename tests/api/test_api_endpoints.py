"""Stats, models, feedback, evaluate, probes and the bearer token, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.settings import ApiSettings
from storage.database import make_engine, session_factory
from storage.evaluation import evaluate
from storage.records import StreamCount
from storage.repository import add_feedback, write_flagged
from tests.support.api_client import local_client
from tests.support.api_data import MODEL_A, MODEL_B, T0, flagged, seed


def test_stats_count_per_bucket_and_topic(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    written = seed(sessions, 100)  # one record every 37 s from T0: about 62 minutes
    per_10m = Counter((r.scored_time - T0) // timedelta(minutes=10) for r in written)

    body = client.get("/api/stats", params={"bucket": "10m"}).json()

    assert body["bucket_seconds"] == 600 and body["total"] == 100
    assert [b["count"] for b in body["buckets"]] == [per_10m[i] for i in range(7)]
    assert body["buckets"][0]["start"] == "2026-11-01T12:00:00Z"
    assert {t["topic"]: t["count"] for t in body["topics"]} == {"payments": 50, "logins": 50}
    # no stream counts stored: nothing consumed is known, so no share
    assert {(b["consumed"], b["flagged_share"]) for b in body["buckets"]} == {(0, None)}


def test_stats_give_the_flagged_share_of_scored_records(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    """Consumers store what they consumed per topic and minute; the stats divide by it."""
    seed(sessions, 100)  # payments and logins alternate, one record every 37 s from T0
    counts = [
        StreamCount(topic, T0 + timedelta(minutes=m), 1000, 990, 0, 10)
        for m in range(62)
        for topic in ("payments", "logins", "quiet")
    ]
    write_flagged(sessions, [], counts=counts[:100])
    write_flagged(sessions, [], counts=counts[100:])
    write_flagged(sessions, [], counts=[StreamCount("quiet", T0, 500, 500, 0, 0)])  # adds up

    body = client.get("/api/stats", params={"bucket": "10m"}).json()
    first = body["buckets"][0]
    assert first["consumed"] == 3 * 10 * 1000 + 500 and first["scored"] == 3 * 10 * 990 + 500
    assert first["flagged_share"] == pytest.approx(first["count"] / first["scored"])
    last = body["buckets"][-1]  # minutes 60 and 61
    assert last["consumed"] == 3 * 2 * 1000
    topics = {t["topic"]: t for t in body["topics"]}
    assert [t["topic"] for t in body["topics"]] == ["logins", "payments", "quiet"]
    assert topics["payments"]["scored"] == 62 * 990
    assert topics["payments"]["flagged_share"] == pytest.approx(50 / (62 * 990))
    assert topics["quiet"]["count"] == 0 and topics["quiet"]["consumed"] == 62 * 1000 + 500
    assert topics["quiet"]["flagged_share"] == 0.0

    one_topic = {"bucket": "1h", "topic": "payments", "start": "2026-11-01T12:00:00Z"}
    body = client.get("/api/stats", params=one_topic).json()
    assert [b["scored"] for b in body["buckets"]] == [60 * 990, 2 * 990]
    # counts are per minute: no answer for smaller buckets or for event times
    body = client.get("/api/stats", params={"bucket": "30s"}).json()
    assert {b["consumed"] for b in body["buckets"]} == {None}
    assert body["topics"][0]["consumed"] is not None
    body = client.get("/api/stats", params={"bucket": "1h", "time_field": "event"}).json()
    assert {b["consumed"] for b in body["buckets"]} | {t["scored"] for t in body["topics"]} == {
        None
    }


def test_stats_fill_empty_buckets_of_the_asked_range_and_apply_filters(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    seed(sessions, 100)
    params = {
        "bucket": "1h",
        "start": "2026-11-01T09:30:00Z",
        "end": "2026-11-01T15:00:00Z",
        "topic": "logins",
    }
    body = client.get("/api/stats", params=params).json()
    starts = [b["start"][11:16] for b in body["buckets"]]
    assert starts == ["09:00", "10:00", "11:00", "12:00", "13:00", "14:00"]
    assert [b["count"] for b in body["buckets"]] == [0, 0, 0, 49, 1, 0]
    assert body["topics"] == [
        {
            "topic": "logins",
            "count": 50,
            "share_of_flagged": 1.0,
            "consumed": 0,
            "scored": 0,
            "flagged_share": None,
        }
    ]


def test_stats_on_event_time_and_on_an_empty_database(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    assert client.get("/api/stats").json()["buckets"] == []
    write_flagged(sessions, [flagged(1, event_time=T0 - timedelta(days=365 * 60)), flagged(2)])
    # 1966-11-16T12:00Z: before the epoch, where truncating division would round up a day
    params = {"time_field": "event", "bucket": "1d", "start": "1966-11-15", "end": "1966-11-18"}
    body = client.get("/api/stats", params=params).json()
    assert body["total"] == 1
    unknown = {"consumed": None, "scored": None, "flagged_share": None}  # event times
    assert body["buckets"] == [
        {"start": "1966-11-15T00:00:00Z", "count": 0, **unknown},
        {"start": "1966-11-16T00:00:00Z", "count": 1, **unknown},
        {"start": "1966-11-17T00:00:00Z", "count": 0, **unknown},
    ]
    body = client.get("/api/stats", params={"time_field": "event", "bucket": "366d"}).json()
    assert body["total"] == 2 and sum(b["count"] for b in body["buckets"]) == 2


def test_models_list_versions_with_manifests_and_counts(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    seed(sessions, 20)
    models = client.get("/api/models").json()
    assert {m["version"]: m["flagged"] for m in models} == {MODEL_A.version: 16, MODEL_B.version: 4}
    clusters = models[0]["manifest"]["latent_map"]["clusters"]
    assert [c["cluster"] for c in clusters] == [0, 1, 2]
    assert models[0]["first_seen"] == "2026-11-01T12:00:00Z"
    one = client.get(f"/api/models/{MODEL_B.version}")
    assert one.status_code == 200 and one.json()["manifest"] == MODEL_B.manifest
    missing = client.get("/api/models/feedfeedfeed")
    assert missing.status_code == 404 and "GET /api/models" in missing.json()["detail"]


def test_feedback_round_trip_and_evaluation(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    seed(sessions, 10)
    ids = [r["id"] for r in client.get("/api/flagged").json()["records"]]

    first = client.post(f"/api/flagged/{ids[0]}/feedback", json={"label": "false_alarm"})
    assert first.status_code == 201
    changed = client.post(
        f"/api/flagged/{ids[0]}/feedback", json={"label": "true_alarm", "note": "card was stolen"}
    )
    assert changed.status_code == 201
    body = changed.json()
    assert [f["label"] for f in body["feedback"]] == ["true_alarm", "false_alarm"]
    assert body["latest_feedback"]["note"] == "card was stolen"
    assert body["label"] == "true_alarm"
    assert client.get(f"/api/flagged/{ids[0]}").json()["feedback"] == body["feedback"]
    client.post(f"/api/flagged/{ids[1]}/feedback", json={"label": "false_alarm", "note": None})

    listed = {r["id"]: r["label"] for r in client.get("/api/flagged").json()["records"]}
    assert (listed[ids[0]], listed[ids[1]], listed[ids[2]]) == ("true_alarm", "false_alarm", None)
    evaluation = client.get("/api/evaluate").json()
    assert evaluation == {
        "model_version": None,
        "flagged": 10,
        "labelled": 2,
        "true_alarms": 1,
        "false_alarms": 1,
        "precision": 0.5,
        "labelled_share": 0.2,
    }
    with sessions() as session:  # the function the CLI uses agrees
        assert evaluate(session).precision == 0.5


def test_evaluate_per_model_version(client: TestClient, sessions: sessionmaker[Session]) -> None:
    seed(sessions, 10)  # records 4 and 9 are MODEL_B's
    records = client.get("/api/flagged", params={"model_version": MODEL_B.version}).json()[
        "records"
    ]
    for record in records:
        add_feedback(sessions, record["id"], "true_alarm")
    by_b = client.get("/api/evaluate", params={"model_version": MODEL_B.version}).json()
    assert (by_b["flagged"], by_b["labelled"], by_b["precision"]) == (2, 2, 1.0)
    by_a = client.get("/api/evaluate", params={"model_version": MODEL_A.version}).json()
    assert (by_a["flagged"], by_a["labelled"], by_a["precision"]) == (8, 0, None)


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_not_ready_when_the_schema_is_missing(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # never migrated
    with local_client(create_app(ApiSettings(), session_factory(engine))) as client:
        response = client.get("/ready")
    engine.dispose()
    assert response.status_code == 503
    assert "latentwatch db upgrade" in response.json()["detail"]


def test_not_ready_when_the_database_is_unreachable() -> None:
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2")
    with local_client(create_app(ApiSettings(), session_factory(engine))) as client:
        response = client.get("/ready")
        assert client.get("/health").status_code == 200
    assert response.status_code == 503
    assert response.json()["detail"].startswith("database unreachable")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/flagged"),
        ("GET", "/api/flagged/1"),
        ("POST", "/api/flagged/1/feedback"),
        ("GET", "/api/stats"),
        ("GET", "/api/evaluate"),
        ("GET", "/api/models"),
        ("GET", "/ready"),
        ("GET", "/openapi.json"),
    ],
)
def test_token_is_required_everywhere_but_health_and_page(
    sessions: sessionmaker[Session], method: str, path: str
) -> None:
    write_flagged(sessions, [flagged(1)], [MODEL_A])
    body = {"label": "true_alarm"} if method == "POST" else None
    with local_client(create_app(ApiSettings(token="s3cret-token-0123456"), sessions)) as client:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic czNjcmV0"},
            {"Authorization": "Bearer s3cret-tokén".encode("latin-1")},
        ):
            refused = client.request(method, path, headers=headers, json=body)
            assert refused.status_code == 401, headers
            assert refused.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer" in refused.json()["detail"]
        ok = client.request(
            method, path, headers={"Authorization": "Bearer s3cret-token-0123456"}, json=body
        )
        assert ok.status_code in (200, 201), ok.text
        for open_path in ("/health", "/", "/static/explorer.js", "/static/explorer.css"):
            assert client.get(open_path).status_code == 200, open_path
        for interactive_docs in ("/docs", "/redoc"):  # they would fetch the schema without a token
            assert client.get(interactive_docs).status_code == 404


def test_the_schema_behind_the_token_is_the_full_api_description(
    sessions: sessionmaker[Session],
) -> None:
    with local_client(create_app(ApiSettings(token="s3cret-token-0123456"), sessions)) as client:
        schema = client.get(
            "/openapi.json", headers={"Authorization": "Bearer s3cret-token-0123456"}
        )
    assert schema.status_code == 200
    assert {"/api/flagged", "/api/flagged/{flagged_id}", "/health"} <= set(schema.json()["paths"])


def test_without_a_token_no_header_is_needed(client: TestClient) -> None:
    assert client.get("/api/flagged").status_code == 200
    assert (
        client.get("/api/flagged", headers={"Authorization": "Bearer anything"}).status_code == 200
    )


def test_page_is_served_with_a_policy_that_forbids_other_origins(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="/static/explorer.js"' in page.text
