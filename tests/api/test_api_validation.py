"""Every bad parameter is a 422 naming the parameter with a message, never a 500; so is a query
parameter the route does not take (a typo would otherwise be ignored). Checks of values that
need no data run on one SQLite app; unknown parameters, and checks that reach the database
(cursors, bucket ranges), run on both engines."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import Request
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.params import check_query_names
from api.settings import ApiSettings
from storage.database import make_engine, session_factory, upgrade
from storage.queries import FlaggedFilter, Ordering, _fingerprint
from storage.repository import write_flagged
from tests.support.api_client import local_client
from tests.support.api_data import flagged, seed

LIST = "/api/flagged"
# (path, query parameters, the parameter the error must name, words the message must contain)
BAD_QUERIES: list[tuple[str, dict[str, Any], str, str]] = [
    (LIST, {"start": "yesterday"}, "start", "not an ISO-8601 time"),
    (LIST, {"end": "2026-13-01T00:00:00Z"}, "end", "not an ISO-8601 time"),
    (LIST, {"end": "1700000000"}, "end", "not an ISO-8601 time"),  # no epoch seconds
    (LIST, {"start": "2026-11-02T00:00:00Z", "end": "2026-11-01T00:00:00Z"}, "end", "not before"),
    (LIST, {"start": "2026-11-01T00:00:00Z", "end": "2026-11-01T00:00:00Z"}, "end", "not before"),
    (LIST, {"start": "0001-01-01T00:00:00+05:00"}, "start", "years 1..9999"),
    (LIST, {"limit": -1}, "limit", "greater than or equal to 1"),
    (LIST, {"limit": 0}, "limit", "greater than or equal to 1"),
    (LIST, {"limit": 501}, "limit", "less than or equal to 500"),
    (LIST, {"limit": "ten"}, "limit", "integer"),
    (LIST, {"sort": "severity"}, "sort", "'time' or 'score'"),
    (LIST, {"desc": "sideways"}, "desc", "boolean"),
    (LIST, {"format": "xml"}, "format", "'json', 'csv' or 'jsonl'"),
    (LIST, {"time_field": "kafka"}, "time_field", "'scored' or 'event'"),
    (LIST, {"min_severity": -1}, "min_severity", "greater than or equal to 0"),
    (LIST, {"min_severity": 100.5}, "min_severity", "less than or equal to 100"),
    (LIST, {"min_severity": "nan"}, "min_severity", "finite"),
    (LIST, {"record_score": 101}, "record_score", "less than or equal to 100"),
    (LIST, {"min_severity": 50, "record_score": 60}, "record_score", "not both"),
    (LIST, {"cluster": -1}, "cluster", "greater than or equal to 0"),
    (LIST, {"cluster": 2**40}, "cluster", "less than or equal to"),
    (LIST, {"topic": "pay\x00ments"}, "topic", "pattern"),
    (LIST, {"topic": "t" * 256}, "topic", "at most 255"),
    (LIST, {"model_version": "v" * 65}, "model_version", "at most 64"),
    (LIST, {"top_feature": "f" * 1001}, "top_feature", "at most 1000"),
    # an empty value is refused alike for every kind of parameter, not "equal to empty"
    (LIST, {"topic": ""}, "topic", "at least 1 character"),
    (LIST, {"model_version": ""}, "model_version", "at least 1 character"),
    (LIST, {"top_feature": ""}, "top_feature", "at least 1 character"),
    (LIST, {"min_severity": ""}, "min_severity", "valid number"),
    (LIST, {"cluster": ""}, "cluster", "valid integer"),
    (LIST, {"start": ""}, "start", "not an ISO-8601 time"),
    ("/api/evaluate", {"model_version": ""}, "model_version", "at least 1 character"),
    (LIST, {"format": "csv", "top_feature": "f" * 1001}, "top_feature", "at most 1000"),
    (LIST, {"cursor": "not-a-cursor"}, "cursor", "not one this API issued"),
    (LIST, {"cursor": "W10"}, "cursor", "not one this API issued"),  # base64 of "[]"
    ("/api/flagged/0", {}, "flagged_id", "greater than or equal to 1"),
    ("/api/flagged/abc", {}, "flagged_id", "integer"),
    (f"/api/flagged/{2**64}", {}, "flagged_id", "less than or equal to"),
    ("/api/stats", {"bucket": "hourly"}, "bucket", "whole number followed by s, m, h or d"),
    ("/api/stats", {"bucket": "0m"}, "bucket", "from 1s to 366d"),
    ("/api/stats", {"bucket": "-5m"}, "bucket", "whole number"),
    ("/api/stats", {"bucket": "400d"}, "bucket", "from 1s to 366d"),
    ("/api/stats", {"bucket": "1h", "start": "soon"}, "start", "not an ISO-8601 time"),
    (
        "/api/stats",
        {"bucket": "7d", "start": "0001-01-02T00:00:00Z", "end": "0001-01-09T00:00:00Z"},
        "bucket",
        "would start before year 1",
    ),
    ("/api/evaluate", {"model_version": "v" * 65}, "model_version", "at most 64"),
    ("/api/models/" + "v" * 65, {}, "version", "at most 64"),
]
BAD_FEEDBACK: list[tuple[Any, str, str]] = [
    ({"label": "maybe"}, "label", "'true_alarm' or 'false_alarm'"),
    ({}, "label", "Field required"),
    ({"label": "true_alarm", "note": "n" * 2001}, "note", "at most 2000"),
    ({"label": "true_alarm", "note": "a\x00b"}, "note", "NUL"),
    ({"label": "true_alarm", "note": 5}, "note", "string"),
    ({"label": "true_alarm", "severity": 3}, "severity", "Extra inputs"),
    ("true_alarm", "body", "dictionary"),
]
# (the id in POST /api/flagged/{id}/feedback, words the message must contain); a well-formed id
# of no record is a 404 (test_api_flagged.py)
BAD_FEEDBACK_IDS: list[tuple[str, str]] = [
    ("0", "greater than or equal to 1"),
    ("-3", "greater than or equal to 1"),
    ("abc", "integer"),
    ("1.5", "integer"),
    (str(2**64), "less than or equal to"),
]
EVERY_FILTER = "cluster, cursor, desc, end, format, key, limit, min_severity, model_version"
# (method, path, query parameters, the unknown one the error must name, words of the message)
UNKNOWN_QUERIES: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("GET", LIST, {"severity": 50}, "severity", "did you mean 'min_severity'?"),
    ("GET", LIST, {"min_score": 3}, "min_score", f"this route takes {EVERY_FILTER}"),
    ("GET", LIST, {"format": "csv", "severity": 50}, "severity", "'min_severity'"),
    ("GET", LIST, {"format": "jsonl", "page": 2}, "page", "cursor"),
    ("GET", "/api/flagged/1", {"verbose": "1"}, "verbose", "takes no query parameters"),
    ("POST", "/api/flagged/1/feedback", {"label": "true_alarm"}, "label", "no query parameters"),
    ("GET", "/api/stats", {"topics": "payments"}, "topics", "did you mean 'topic'?"),
    ("GET", "/api/stats", {"bucket": "1h", "interval": "5m"}, "interval", "bucket, cluster"),
    ("GET", "/api/evaluate", {"topic": "payments"}, "topic", "this route takes model_version"),
    ("GET", "/api/models", {"version": "a1b2c3d4e5f6"}, "version", "no query parameters"),
    ("GET", "/api/models/a1b2c3d4e5f6", {"manifest": "no"}, "manifest", "no query parameters"),
    ("GET", "/ready", {"verbose": "1"}, "verbose", "no query parameters"),
    ("GET", "/health", {"verbose": "1"}, "verbose", "no query parameters"),
]


def assert_422(response: Any, parameter: str, words: str) -> None:
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(parameter in map(str, e["loc"]) and words in e["msg"] for e in errors), errors


@pytest.fixture(scope="module")
def shared_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    url = f"sqlite:///{tmp_path_factory.mktemp('validation') / 'latentwatch.db'}"
    upgrade(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    write_flagged(sessions, [flagged(i) for i in range(3)])
    with local_client(create_app(ApiSettings(max_page_size=500), sessions)) as client:
        yield client
    engine.dispose()


@pytest.mark.parametrize(("path", "params", "parameter", "words"), BAD_QUERIES)
def test_bad_query_parameters_are_422_with_a_message(
    shared_client: TestClient, path: str, params: dict[str, Any], parameter: str, words: str
) -> None:
    assert_422(shared_client.get(path, params=params), parameter, words)


@pytest.mark.parametrize(("body", "parameter", "words"), BAD_FEEDBACK)
def test_bad_feedback_is_422_with_a_message(
    shared_client: TestClient, body: Any, parameter: str, words: str
) -> None:
    assert_422(shared_client.post("/api/flagged/1/feedback", json=body), parameter, words)


@pytest.mark.parametrize(("flagged_id", "words"), BAD_FEEDBACK_IDS)
def test_bad_feedback_id_is_422_with_a_message(
    shared_client: TestClient, flagged_id: str, words: str
) -> None:
    response = shared_client.post(
        f"/api/flagged/{flagged_id}/feedback", json={"label": "true_alarm"}
    )
    assert_422(response, "flagged_id", words)


@pytest.mark.parametrize(("method", "path", "params", "parameter", "words"), UNKNOWN_QUERIES)
def test_unknown_query_parameters_are_422_naming_them_and_the_valid_ones(
    client: TestClient, method: str, path: str, params: dict[str, Any], parameter: str, words: str
) -> None:
    body = {"label": "true_alarm"} if method == "POST" else None
    response = client.request(method, path, params=params, json=body)
    assert_422(response, parameter, words)
    assert len(response.json()["detail"]) == 1  # the known parameters are not blamed


def test_every_unknown_query_parameter_is_named(client: TestClient) -> None:
    params = {"severity": 50, "min_score": 3, "topic": "payments"}
    response = client.get(LIST, params=params)
    assert response.status_code == 422
    assert {e["loc"][1] for e in response.json()["detail"]} == {"severity", "min_score"}
    # the page and its files are not API routes: links to them may carry anything
    assert client.get("/", params={"from": "newsletter"}).status_code == 200


def test_every_documented_query_parameter_is_known(client: TestClient) -> None:
    """The routes' own list of query parameters agrees with /openapi.json: a parameter a route
    documents is never refused as unknown (its value may still be refused)."""
    schema = client.get("/openapi.json").json()
    seen: set[str] = set()
    for template, operations in schema["paths"].items():
        path = template.replace("{flagged_id}", "1").replace("{version}", "a1b2c3d4e5f6")
        for method, operation in operations.items():
            names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            body = {"label": "true_alarm"} if method == "post" else None
            response = client.request(method, path, params=dict.fromkeys(names, "1"), json=body)
            assert response.status_code < 500, (method, path, response.text)
            if response.status_code == 422:
                kinds = {e["type"] for e in response.json()["detail"]}
                assert "extra_forbidden" not in kinds, (method, path, response.text)
            seen.update(names)
    # an alias, a filter of a sub-dependency, a route's own parameter
    assert {"format", "min_severity", "desc", "bucket"} <= seen


def test_with_a_token_unknown_parameters_are_checked_after_it(
    sessions: sessionmaker[Session],
) -> None:
    with local_client(create_app(ApiSettings(token="s3cret-token-0123456"), sessions)) as client:
        assert client.get(LIST, params={"severity": 50}).status_code == 401
        authorised = {"Authorization": "Bearer s3cret-token-0123456"}
        response = client.get(LIST, params={"severity": 50}, headers=authorised)
        assert_422(response, "severity", "min_severity")
        assert_422(client.get("/health", params={"x": 1}), "x", "no query parameters")


def test_the_unknown_parameter_check_refuses_to_run_outside_an_api_route() -> None:
    request = Request({"type": "http", "query_string": b"x=1", "headers": []})
    with pytest.raises(RuntimeError, match="API routes only"):
        asyncio.run(check_query_names(request))


def test_unpaired_surrogate_in_a_note_is_422(shared_client: TestClient) -> None:
    body = b'{"label": "true_alarm", "note": "broken \\ud800 text"}'
    response = shared_client.post(
        "/api/flagged/1/feedback", content=body, headers={"Content-Type": "application/json"}
    )
    assert_422(response, "note", "unicode")


def test_cursor_from_another_query_is_refused(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    seed(sessions, 30)
    cursor = client.get(LIST, params={"limit": 5, "topic": "payments"}).json()["next_cursor"]
    assert client.get(LIST, params={"cursor": cursor, "topic": "payments"}).status_code == 200
    # an export may resume from a JSON page's cursor: same filters and order
    export = {"cursor": cursor, "topic": "payments", "format": "csv"}
    assert client.get(LIST, params=export).status_code == 200
    others = [
        {"topic": "logins"},
        {"topic": "payments", "sort": "score"},
        {"topic": "payments", "desc": "false"},
        {"topic": "payments", "time_field": "event"},
    ]
    for other in others:
        assert_422(client.get(LIST, params={**other, "cursor": cursor}), "cursor", "other filters")
    tampered = cursor[:-3] + ("AAA" if not cursor.endswith("AAA") else "BBB")
    assert client.get(LIST, params={"cursor": tampered, "topic": "payments"}).status_code == 422


def hand_made_cursor(key: object, last_id: int) -> str:
    """A cursor as the API encodes one, for the unfiltered newest-first query."""
    text = json.dumps([1, _fingerprint(FlaggedFilter(), Ordering()), key, last_id])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("key", "last_id"),
    [
        ("2026-11-01T00:00:00Z", 2**63),  # beyond any database's integer
        ("2026-11-01T00:00:00Z", -1),
        ("0001-01-01T00:00:00+05:00", 1),  # no UTC equivalent
        ("9999-12-31T23:00:00-05:00", 1),
        ("2026-11-01T00:00:00", 1),  # naive
        (1.5, 1),  # a score where a time belongs
    ],
)
def test_a_hand_made_cursor_with_the_right_fingerprint_is_422(
    client: TestClient, key: object, last_id: int
) -> None:
    """Cursors are not secret: one built by hand for the same query passes the fingerprint
    check, so its key and id are checked too, before they reach the database."""
    cursor = hand_made_cursor(key, last_id)
    assert_422(client.get(LIST, params={"cursor": cursor}), "cursor", "not one this API")


def test_a_hand_made_cursor_inside_the_ranges_pages_like_an_issued_one(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    seed(sessions, 3)
    cursor = hand_made_cursor("9999-12-31T00:00:00+00:00", 2**63 - 1)
    response = client.get(LIST, params={"cursor": cursor, "limit": 10})
    assert response.status_code == 200, response.text
    assert response.json()["count"] == 3  # everything is older than year 9999


def test_too_many_buckets_is_422_naming_the_remedy(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    seed(sessions, 5)
    params = {"bucket": "1s", "start": "2026-01-01T00:00:00Z", "end": "2026-11-02T00:00:00Z"}
    assert_422(client.get("/api/stats", params=params), "bucket", "larger bucket")
    # without start/end the range is the data's: 5 records within minutes fit in 1s buckets
    assert client.get("/api/stats", params={"bucket": "1s"}).status_code == 200


def test_settings_refuse_inconsistent_bounds() -> None:
    with pytest.raises(ValueError, match="token is empty"):
        ApiSettings(token=" ")
    with pytest.raises(ValueError, match="trusted_hosts"):
        ApiSettings(trusted_hosts=())
    with pytest.raises(ValueError, match="default_page_size"):
        ApiSettings(default_page_size=600, max_page_size=500)
