"""GET /api/flagged (filters, both sort orders, cursors, CSV/JSONL export) and
GET /api/flagged/{id}, on SQLite and PostgreSQL. Expected answers are computed in Python from
the records written."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.settings import ApiSettings
from storage import queries
from storage.records import FlaggedRecord
from storage.repository import write_flagged
from tests.support.api_client import local_client
from tests.support.api_data import T0, flagged, seed

COUNT = 60
START, END = T0 + timedelta(seconds=37 * 10), T0 + timedelta(seconds=37 * 30)
Predicate = Callable[[FlaggedRecord], bool]

# query parameters -> which records match
FILTERS: dict[str, tuple[dict[str, Any], Predicate]] = {
    "none": ({}, lambda r: True),
    "scored range": (
        {"start": START.isoformat(), "end": END.isoformat()},
        lambda r: START <= r.scored_time < END,
    ),
    "event range": (
        {"start": START.isoformat(), "end": END.isoformat(), "time_field": "event"},
        lambda r: r.event_time is not None and START <= r.event_time < END,
    ),
    "min severity": ({"min_severity": 80}, lambda r: r.severity >= 80),
    "record_score alias": ({"record_score": 80}, lambda r: r.severity >= 80),
    "topic": ({"topic": "logins"}, lambda r: r.topic == "logins"),
    "model version": (
        {"model_version": "0f9e8d7c6b5a"},
        lambda r: r.model_version == "0f9e8d7c6b5a",
    ),
    "cluster": ({"cluster": 2}, lambda r: r.cluster == 2),
    "top feature": ({"top_feature": "amount"}, lambda r: r.top_feature == "amount"),
    "combined": (
        {"topic": "payments", "min_severity": 50, "end": END.isoformat()},
        lambda r: r.topic == "payments" and r.severity >= 50 and r.scored_time < END,
    ),
}


@pytest.fixture
def written(sessions: sessionmaker[Session]) -> list[FlaggedRecord]:
    return seed(sessions, COUNT)


def page_all(client: TestClient, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Every record of a query, following next_cursor to the end."""
    records: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = params if cursor is None else {**params, "cursor": cursor}
        response = client.get("/api/flagged", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["count"] == len(body["records"])
        records += body["records"]
        cursor = body["next_cursor"]
        if cursor is None:
            return records
        assert body["count"] == params.get("limit", 10)  # only the last page is short


@pytest.mark.parametrize("name", FILTERS)
def test_filters_select_exactly_the_matching_records(
    client: TestClient, written: list[FlaggedRecord], name: str
) -> None:
    params, matches = FILTERS[name]
    expected = sorted((r for r in written if matches(r)), key=lambda r: r.scored_time, reverse=True)
    assert expected, "the filter should match something"
    got = page_all(client, {**params, "limit": 7})
    assert [r["record_id"] for r in got] == [r.record_id for r in expected]


@pytest.mark.parametrize(
    ("sort", "desc", "field"),
    [
        ("time", "true", "scored_time"),
        ("time", "false", "scored_time"),
        ("score", "true", "score"),
        ("score", "false", "score"),
    ],
)
def test_sorting_both_ways_with_ties_broken_by_id(
    client: TestClient, written: list[FlaggedRecord], sort: str, desc: str, field: str
) -> None:
    got = page_all(client, {"sort": sort, "desc": desc, "limit": 9})
    assert sorted(r["record_id"] for r in got) == sorted(r.record_id for r in written)
    keys = [(r[field], r["id"]) for r in got]
    assert keys == sorted(keys, reverse=desc == "true")
    assert len(set(keys)) == len(keys)


def test_event_time_sort_leaves_out_records_without_event_time(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    write_flagged(sessions, [flagged(1), flagged(2, event_time=None), flagged(3)])
    got = page_all(client, {"time_field": "event", "desc": "false"})
    assert [r["record_id"] for r in got] == ["log-1", "log-3"]
    assert len(page_all(client, {})) == 3


@pytest.mark.parametrize("name", ["none", "combined", "event range"])
@pytest.mark.parametrize("sort", ["time", "score"])
def test_jsonl_and_csv_exports_match_the_json_query(
    client: TestClient, written: list[FlaggedRecord], name: str, sort: str
) -> None:
    params = {**FILTERS[name][0], "sort": sort, "desc": "false"}
    pages = page_all(client, {**params, "limit": 11})

    jsonl = client.get("/api/flagged", params={**params, "format": "jsonl"})
    assert jsonl.status_code == 200
    assert jsonl.headers["content-type"] == "application/x-ndjson"
    assert jsonl.headers["x-latentwatch-truncated"] == "false"
    assert [json.loads(line) for line in jsonl.text.splitlines()] == pages

    exported = client.get("/api/flagged", params={**params, "format": "csv"})
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [int(row["id"]) for row in rows] == [r["id"] for r in pages]
    for row, record in zip(rows, pages, strict=True):
        assert json.loads(row["explanation"]) == record["explanation"]
        assert float(row["score"]) == record["score"]
        assert row["scored_time"] == record["scored_time"]
        assert row["label"] == (record["label"] or "")


def test_export_stops_at_the_row_cap_and_says_so(
    sessions: sessionmaker[Session], written: list[FlaggedRecord]
) -> None:
    app = create_app(ApiSettings(export_max_rows=25, export_chunk_size=10), sessions)
    with local_client(app) as capped:
        response = capped.get("/api/flagged", params={"format": "jsonl"})
        assert response.headers["x-latentwatch-truncated"] == "true"
        assert len(response.text.splitlines()) == 25
        # odd i with i % 3 == 0: 10 records, under the cap
        params = {"format": "csv", "topic": "logins", "cluster": 0}
        whole = capped.get("/api/flagged", params=params)
        assert whole.headers["x-latentwatch-truncated"] == "false"
        assert len(whole.text.splitlines()) == 1 + COUNT // 6


def test_export_resumes_from_a_cursor(client: TestClient, written: list[FlaggedRecord]) -> None:
    first = client.get("/api/flagged", params={"limit": 20}).json()
    rest = client.get("/api/flagged", params={"format": "jsonl", "cursor": first["next_cursor"]})
    ids = [json.loads(line)["id"] for line in rest.text.splitlines()]
    assert ids == [r["id"] for r in page_all(client, {})][20:]


def test_detail_has_the_record_position_explanation_and_feedback(
    client: TestClient, written: list[FlaggedRecord]
) -> None:
    summary = client.get("/api/flagged", params={"limit": 1}).json()["records"][0]
    source = next(r for r in written if r.record_id == summary["record_id"])

    detail = client.get(f"/api/flagged/{summary['id']}").json()

    assert detail["record"] == source.record
    assert (detail["topic"], detail["partition"], detail["offset"]) == (
        source.topic,
        source.partition,
        source.offset,
    )
    assert detail["explanation"] == summary["explanation"]
    features = detail["explanation"]["features"]
    assert [f["name"] for f in features] == [f["name"] for f in source.explanation["features"]]
    assert {"actual", "expected", "contribution", "share"} <= set(features[0])
    assert detail["density_p_value"] == source.density_p_value
    assert detail["reconstruction_p_value"] == source.reconstruction_p_value
    assert (detail["cluster"], detail["cluster_distance"]) == (
        source.cluster,
        source.cluster_distance,
    )
    assert detail["model_version"] == source.model_version
    assert detail["scored_time"] == source.scored_time.isoformat().replace("+00:00", "Z")
    assert detail["feedback"] == [] and detail["latest_feedback"] is None


def test_missing_record_is_404_with_a_message(
    client: TestClient, written: list[FlaggedRecord]
) -> None:
    response = client.get("/api/flagged/999999")
    assert response.status_code == 404
    assert "flagged record 999999 not found" in response.json()["detail"]
    response = client.post("/api/flagged/999999/feedback", json={"label": "true_alarm"})
    assert response.status_code == 404


@pytest.mark.parametrize("few", [0, 5, 10_000])
def test_pages_are_the_same_however_sqlite_is_helped_to_find_the_rows(
    client: TestClient, written: list[FlaggedRecord], monkeypatch: pytest.MonkeyPatch, few: int
) -> None:
    """On SQLite a page filtered by severity is picked from the passing rows when they are few
    (through the severity index), else by walking the sort order; a page sorted by score with
    equality filters that select many rows walks the score index. Same pages either way."""
    monkeypatch.setattr(queries, "_FEW_SEVERE", few)
    cases: list[tuple[dict[str, Any], Predicate]] = [
        ({"min_severity": 80}, lambda r: r.severity >= 80),
        ({"min_severity": 99, "sort": "score", "desc": "false"}, lambda r: r.severity >= 99),
        ({"topic": "payments", "sort": "score"}, lambda r: r.topic == "payments"),
        (
            {"topic": "logins", "min_severity": 60, "sort": "score", "desc": "false"},
            lambda r: r.topic == "logins" and r.severity >= 60,
        ),
    ]
    for params, matches in cases:
        expected = [r for r in written if matches(r)]
        assert expected, params
        key = (lambda r: r.score) if params.get("sort") == "score" else (lambda r: r.scored_time)
        expected.sort(key=key, reverse=params.get("desc") != "false")
        got = page_all(client, {**params, "limit": 4})
        assert [r["record_id"] for r in got] == [r.record_id for r in expected], params
