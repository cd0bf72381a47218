"""Kafka keys through the API, on SQLite and PostgreSQL: binary keys (Java's Long serializer,
NUL bytes, bytes that are not UTF-8) are served as a readable form and their exact bytes
(base64), matched by the ``key`` filter, and come back intact from the CSV and JSONL
exports."""

from __future__ import annotations

import base64
import csv
import io
import json
import struct

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from storage.repository import write_flagged
from tests.support.api_data import flagged

KEYS: dict[bytes | None, str | None] = {
    struct.pack(">q", 7): "0000000000000007",
    b"a\x00b": "610062",
    b"\xff\xfe": "fffe",
    b'caf\xc3\xa9, "quoted"\nline': 'café, "quoted"\nline',
    None: None,
}


def test_keys_are_served_filterable_and_exported_intact(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    written = [flagged(i, key=key) for i, key in enumerate(KEYS)]
    write_flagged(sessions, written)
    by_id = {r.record_id: r.key for r in written}

    records = client.get("/api/flagged", params={"limit": 100}).json()["records"]
    assert len(records) == len(KEYS)
    for r in records:
        key = by_id[r["record_id"]]
        assert r["key"] == KEYS[key]
        assert r["key_base64"] == (None if key is None else base64.b64encode(key).decode())
        detail = client.get(f"/api/flagged/{r['id']}").json()
        assert (detail["key"], detail["key_base64"]) == (r["key"], r["key_base64"])

    for key, readable in KEYS.items():
        if readable is None:
            continue
        matched = client.get("/api/flagged", params={"key": readable}).json()["records"]
        assert [by_id[r["record_id"]] for r in matched] == [key]

    lines = client.get("/api/flagged", params={"format": "jsonl"}).text.splitlines()
    exported = [json.loads(line) for line in lines]
    assert {r["record_id"]: r["key_base64"] for r in exported} == {
        r["record_id"]: r["key_base64"] for r in records
    }
    rows = list(csv.DictReader(io.StringIO(client.get("/api/flagged?format=csv").text)))
    for row in rows:
        key = by_id[row["record_id"]]
        assert base64.b64decode(row["key_base64"]) == (key or b"")
        assert row["key"] == (KEYS[key] or "")
