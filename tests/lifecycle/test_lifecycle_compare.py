"""Live against shadow: the arithmetic on a case computed by hand, and the same numbers through
storage and GET /api/models/compare on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.settings import ApiSettings
from lifecycle.compare import compare
from storage import registry
from storage.backfill import BackfillRun, save_batch, start_or_resume
from storage.comparison import StoredPair
from storage.models import FlaggedRecordRow
from storage.records import ModelScore, RunCount
from storage.registry import RegisteredModel
from storage.repository import add_feedback, write_flagged
from tests.support.cli_run import run as run_cli
from tests.support.flagged_records import make_record

T = datetime(2026, 12, 4, 10, 0, 30, tzinfo=UTC)
LIVE, SHADOW = "aaaaaaaaaaaa", "bbbbbbbbbbbb"

# Four records either model flagged, of 100 scored: (live score, shadow score, live flag,
# shadow flag, the user's label of the live flag).
CASE = [
    (10.0, 4.0, True, False, True),  # r1: live only, a true alarm
    (8.0, 9.0, True, True, False),  # r2: both, a false alarm
    (3.0, 7.0, False, True, None),  # r3: shadow only
    (1.0, 6.0, False, True, None),  # r4: shadow only
]
# By hand: flag rates 2/100 and 3/100; overlap 1/4; Spearman of the ranks (4,3,2,1) and
# (1,4,3,2): d = (3,-1,-1,-1), sum d² = 12, rho = 1 - 6*12 / (4*(16-1)) = -0.2; live precision
# 1/2 over 2 labelled; shadow precision 0/1 over its 1 labelled flag (r2); 2 shadow-only flags
# unlabelled.
EXPECTED = {
    "scored": 100,
    "both_flagged": 1,
    "either_flagged": 4,
    "overlap": 0.25,
    "rank_correlation": -0.2,
    "unlabelled_shadow_only": 2,
}
EXPECTED_LIVE = {"flagged": 2, "flag_rate": 0.02, "labelled": 2, "precision": 0.5, "fpr": 0.01}
EXPECTED_SHADOW = {"flagged": 3, "flag_rate": 0.03, "labelled": 1, "precision": 0.0, "fpr": 0.05}


def test_compare_by_hand() -> None:
    pairs = [StoredPair(s, live, f, lf, label) for live, s, lf, f, label in CASE]
    result = compare(100, (2, 3), pairs, (LIVE, SHADOW), (0.01, 0.05))
    for name, value in EXPECTED.items():
        assert getattr(result, name) == pytest.approx(value), name
    for side, expected in ((result.live, EXPECTED_LIVE), (result.shadow, EXPECTED_SHADOW)):
        for name, value in expected.items():
            assert getattr(side, name) == pytest.approx(value), name


def _register(sessions: sessionmaker[Session], version: str, fpr: float) -> None:
    registry.register(
        sessions,
        RegisteredModel(version, f"file:///store/{version}", T, "t", {"fpr": fpr}),
    )


def test_compare_api_and_cli_on_stored_rows(
    sessions: sessionmaker[Session], db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _register(sessions, LIVE, 0.01)
    _register(sessions, SHADOW, 0.05)
    live_flags = [
        make_record(i, topic="t", scored_time=T, model_version=LIVE)
        for i, case in enumerate(CASE)
        if case[2]
    ]
    scores = [
        ModelScore(
            "shadow",
            SHADOW,
            "t",
            0,
            i,
            1_793_000_000_000 + i,
            f"tx-{i}",
            T,
            s,
            50.0,
            0.1,
            f,
            LIVE,
            live,
            lf,
        )
        for i, (live, s, lf, f, _) in enumerate(CASE)
    ]
    # a row of another shadow run, and one outside the window: both left out
    scores.append(ModelScore("backfill-x", SHADOW, "t", 0, 9, 1, None, T, 1.0, 1.0, 1.0, True))
    scores.append(
        ModelScore("shadow", SHADOW, "t", 0, 8, 1, None, T - timedelta(days=3), 1.0, 1.0, 1.0, True)
    )
    counts = [
        RunCount("shadow", SHADOW, "t", T.replace(second=0), 60, 2, 1),
        RunCount("shadow", SHADOW, "t", T.replace(second=0) + timedelta(minutes=1), 40, 1, 1),
    ]
    write_flagged(sessions, live_flags, scores=scores, run_counts=counts)
    with sessions() as session:
        ids = dict(session.execute(select(FlaggedRecordRow.offset, FlaggedRecordRow.id)).all())
    add_feedback(sessions, ids[0], "false_alarm", now=T)  # superseded by the newer label
    add_feedback(sessions, ids[0], "true_alarm", now=T + timedelta(minutes=1))
    add_feedback(sessions, ids[1], "false_alarm", now=T)

    settings = ApiSettings()
    # the API answers loopback Host names only
    with TestClient(create_app(settings, sessions), base_url="http://127.0.0.1") as client:
        window = {"start": "2026-12-04T00:00:00Z", "end": "2026-12-05T00:00:00Z"}
        body = client.get("/api/models/compare", params={"topic": "t", **window}).json()
        for name, value in EXPECTED.items():
            assert body[name] == pytest.approx(value), name
        for side, expected in (("live", EXPECTED_LIVE), ("shadow", EXPECTED_SHADOW)):
            for name, value in expected.items():
                assert body[side][name] == pytest.approx(value), (side, name)
        assert (body["live"]["version"], body["shadow"]["version"]) == (LIVE, SHADOW)
        missing = client.get("/api/models/compare", params={"topic": "other", **window})
        assert missing.status_code == 404
        assert "no shadow scores of 'other'" in missing.json()["detail"]
        # the route is not taken for a model version
        assert client.get("/api/models/compare").status_code == 422
        # the topics to compare: those with shadow scores in the window
        topics = client.get("/api/models/compare/topics", params=window).json()
        assert topics["topics"] == ["t"]
        earlier = {"start": "2026-12-01T00:00:00Z", "end": "2026-12-01T01:00:00Z"}
        assert client.get("/api/models/compare/topics", params=earlier).json()["topics"] == []

    code, out, err = run_cli(
        capsys,
        "models",
        "compare",
        "--db",
        db_url,
        "--topic",
        "t",
        "--since",
        "2026-12-04T00:00Z",
        "--until",
        "2026-12-05T00:00Z",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("t: 100 records scored by both")
    assert lines[2].split()[:5] == ["live", LIVE, "1.00", "%", "2"]
    assert "50.00 % (2 labelled)" in lines[2]
    assert lines[3].split()[:5] == ["shadow", SHADOW, "5.00", "%", "3"]
    assert "overlap 25.00 %" in lines[4] and "correlation -0.200" in lines[4]


# A backfill run "bf" of SHADOW over t's records of [T, T + 1 h) (Kafka time), 50 scored:
# (offset, live score or None, run score or None). The live model flagged offsets 0-2 (and 9,
# a record from before the range: left out); the run flags 1-3. By hand: flag rates 3/50 and
# 3/50; both flag 1 and 2 of 0-3 (overlap 2/4); the rank correlation over the records both
# flagged, (8, 3) against (9, 5): 1.0; labels: 0 true, 1 false alarm, so live precision 1/2
# over 2, the run's 0/1 over 1 (offset 1); offset 3, only the run's, unlabelled.
RUN_CASE = [(0, 10.0, None), (1, 8.0, 9.0), (2, 3.0, 5.0), (3, None, 7.0)]


def test_a_backfill_run_compares_with_the_live_flags_of_its_records(
    sessions: sessionmaker[Session], db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _register(sessions, LIVE, 0.01)
    _register(sessions, SHADOW, 0.05)
    start_ms = int(T.timestamp() * 1000)
    live = [
        make_record(o, topic="t", model_version=LIVE, kafka_timestamp=start_ms + o, score=s)
        for o, s, _ in RUN_CASE
        if s is not None
    ]
    before = make_record(9, topic="t", model_version=LIVE, kafka_timestamp=start_ms - 1)
    write_flagged(sessions, [*live, before])
    run = BackfillRun("bf", SHADOW, "t", T, T + timedelta(hours=1), {0: 0})
    start_or_resume(sessions, run, T + timedelta(hours=2))
    scores = [
        ModelScore("bf", SHADOW, "t", 0, o, start_ms + o, None, T, s, 50.0, 0.1, True)
        for o, _, s in RUN_CASE
        if s is not None
    ]
    counts = [RunCount("bf", SHADOW, "t", T.replace(second=0) + timedelta(hours=2), 50, 3)]
    save_batch(sessions, "bf", scores, counts, {0: 10})
    with sessions() as session:
        ids = dict(session.execute(select(FlaggedRecordRow.offset, FlaggedRecordRow.id)).all())
    add_feedback(sessions, ids[0], "true_alarm", now=T)
    add_feedback(sessions, ids[1], "false_alarm", now=T)

    with TestClient(create_app(ApiSettings(), sessions), base_url="http://127.0.0.1") as client:
        body = client.get("/api/models/compare", params={"topic": "t", "run": "bf"}).json()
        assert body["run"] == "bf"
        assert (body["start"], body["end"]) == ("2026-12-04T10:00:30Z", "2026-12-04T11:00:30Z")
        expected = {
            "scored": 50,
            "both_flagged": 2,
            "either_flagged": 4,
            "overlap": 0.5,
            "rank_correlation": 1.0,
            "unlabelled_shadow_only": 1,
        }
        for name, value in expected.items():
            assert body[name] == pytest.approx(value), name
        assert body["live"] | {"precision": None} == {
            "version": LIVE,
            "fpr": 0.01,
            "flagged": 3,
            "flag_rate": 0.06,
            "labelled": 2,
            "precision": None,
        }
        assert body["live"]["precision"] == pytest.approx(0.5)
        assert (body["shadow"]["version"], body["shadow"]["flagged"]) == (SHADOW, 3)
        assert (body["shadow"]["labelled"], body["shadow"]["precision"]) == (1, 0.0)
        # another topic's name, or a window beside the run: refused
        other = client.get("/api/models/compare", params={"topic": "u", "run": "bf"})
        assert other.status_code == 404
        both = {"topic": "t", "run": "bf", "start": "2026-12-04T00:00:00Z"}
        assert client.get("/api/models/compare", params=both).status_code == 422

    code, out, err = run_cli(
        capsys, "models", "compare", "--db", db_url, "--topic", "t", "--run", "bf"
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("t: 50 records backfill run bf re-scored")
    assert lines[2].split()[:5] == ["live", LIVE, "1.00", "%", "3"]
    assert lines[3].split()[:5] == ["run", SHADOW, "5.00", "%", "3"]
    assert "overlap 50.00 %" in lines[4] and "correlation 1.000" in lines[4]
