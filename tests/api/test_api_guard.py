"""What every request meets before any route work (api/guard.py, api/probes.py): the Host
check against DNS rebinding, the query-string bounds, repeated parameters, the security headers
on every answer (static files, refusals and error pages included), HEAD probes, and /ready
answering on time when the database hangs."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.dependencies import get_session_factory
from api.guard import host_name, host_trusted
from api.server import serving_settings
from api.settings import ApiSettings, ApiSettingsError
from storage.database import make_engine, session_factory, upgrade
from storage.repository import write_flagged
from tests.support.api_client import local_client
from tests.support.api_data import flagged

# a page of this many unknown parameters held the event loop for ~0.8 s and answered 2.4 MB
OVERSIZE = "&".join(f"a{i}=1" for i in range(8_000))
HEADERS = ("x-content-type-options", "x-frame-options", "referrer-policy")


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('guard') / 'latentwatch.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = session_factory(engine)
    write_flagged(factory, [flagged(i) for i in range(3)])
    yield factory
    engine.dispose()


@pytest.fixture(scope="module")
def client(sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    with local_client(create_app(ApiSettings(), sessions)) as test_client:
        yield test_client


@pytest.mark.parametrize("path", ["/api/flagged", "/health", "/", "/static/explorer.js"])
def test_an_untrusted_host_is_refused_everywhere(client: TestClient, path: str) -> None:
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 sends
    Host: evil.example. Loopback is the protection when no token is set."""
    refused = client.get(path, headers={"Host": "evil.example:8000"})
    assert refused.status_code == 400
    assert "'evil.example' is not one this server answers to" in refused.json()["detail"]
    assert "--trusted-host" in refused.json()["detail"]
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST."):
        assert client.get(path, headers={"Host": host}).status_code == 200, host


def test_trusted_hosts_are_configurable(sessions: sessionmaker[Session]) -> None:
    settings = ApiSettings(trusted_hosts=("*.corp.example", "explorer.example"))
    with TestClient(create_app(settings, sessions)) as client:
        assert client.get("/health", headers={"Host": "api.corp.example"}).status_code == 200
        assert client.get("/health", headers={"Host": "explorer.example"}).status_code == 200
        for other in ("corp.example", "localhost", "explorer.example.evil"):
            assert client.get("/health", headers={"Host": other}).status_code == 400, other
    assert host_name("[::1]:8000") == "::1" and host_trusted("x", ["*"])


def test_serving_settings_answer_loopback_and_the_bind_address_and_refuse_an_open_door() -> None:
    assert serving_settings("127.0.0.1", None).trusted_hosts == ("localhost", "127.0.0.1", "::1")
    lan = serving_settings("10.1.2.3", "a-token-of-16-chars", ("lw.corp.example",))
    assert lan.trusted_hosts[-2:] == ("10.1.2.3", "lw.corp.example")
    assert "0.0.0.0" not in serving_settings("0.0.0.0", "a-token-of-16-chars").trusted_hosts
    for host in ("0.0.0.0", "::", "10.1.2.3", "lw.corp.example"):
        with pytest.raises(ApiSettingsError, match="without an API token"):
            serving_settings(host, None)


@pytest.mark.parametrize(
    ("token", "words"),
    [("", "empty"), ("   ", "empty"), ("short", "fewer than 16"), ("with space 0123456", "ASCII")],
)
def test_settings_refuse_a_token_that_cannot_protect(token: str, words: str) -> None:
    with pytest.raises(ApiSettingsError, match=words):
        ApiSettings(token=token)


@pytest.mark.parametrize("path", ["/api/flagged", "/api/flagged/1", "/health", "/"])
def test_oversize_query_strings_get_a_short_answer_before_any_work(path: str) -> None:
    """An app whose sessions are unbound: any route work that reached the database would be a
    500, and FastAPI's own validation answers a list, not the guard's one line."""
    with local_client(create_app(ApiSettings(), sessionmaker())) as client:
        many = client.get(f"{path}?{OVERSIZE}")
        assert many.status_code == 414  # 8,000 parameters are 70 KB: the size check comes first
        assert "longer than the 32768 allowed" in many.json()["detail"]
        assert len(many.content) < 300
        few_but_many = client.get(f"{path}?{'&'.join(f'p{i}=1' for i in range(33))}")
        assert few_but_many.status_code == 400
        assert "33 parameters, more than the 32 allowed" in few_but_many.json()["detail"]
        assert all(h in many.headers for h in HEADERS)


def test_a_repeated_parameter_is_refused_not_silently_the_last(client: TestClient) -> None:
    response = client.get("/api/flagged?topic=payments&topic=logins&limit=2")
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "topic"] and error["type"] == "repeated"
    assert error["msg"] == "query parameter 'topic' is given 2 times: give it once"
    assert error["input"] == ["payments", "logins"]


def test_security_headers_on_every_answer(sessions: sessionmaker[Session]) -> None:
    app = create_app(ApiSettings(), sessions)

    def broken() -> None:
        raise RuntimeError("a bug")

    with local_client(app) as client:
        answers = {
            "page": client.get("/"),
            "static": client.get("/static/explorer.css"),
            "data": client.get("/api/flagged"),
            "404": client.get("/api/flagged/999"),
            "unknown path": client.get("/nothing-here"),
            "docs": client.get("/docs"),
        }
    app.dependency_overrides[get_session_factory] = broken
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        answers["500"] = client.get("/api/flagged")
    assert answers["500"].status_code == 500
    for name, response in answers.items():
        assert response.headers["x-content-type-options"] == "nosniff", name
        assert response.headers["x-frame-options"] == "DENY", name
        assert response.headers["referrer-policy"] == "no-referrer", name
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"], name
    assert answers["page"].headers["content-security-policy"].startswith("default-src 'self'")
    assert answers["static"].headers["content-type"].startswith("text/css")
    assert answers["data"].headers["content-security-policy"].startswith("default-src 'none'")
    assert answers["data"].headers["cache-control"] == "no-store"
    assert "cdn.jsdelivr.net" in answers["docs"].headers["content-security-policy"]


def test_probes_and_the_page_answer_head(client: TestClient) -> None:
    for path in ("/health", "/ready", "/"):
        response = client.head(path)
        assert response.status_code == 200, path
        assert response.content == b""


def test_ready_answers_503_in_time_when_the_database_hangs() -> None:
    """A server that accepts the connection and never answers: /ready must not hang with it.
    Probes arriving meanwhile share the one check in flight."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes handshakes; nobody ever answers
    port = silent.getsockname()[1]
    engine = make_engine(f"postgresql+psycopg://lw@127.0.0.1:{port}/lw?connect_timeout=3")
    settings = ApiSettings(ready_timeout_s=0.3)
    try:
        with local_client(create_app(settings, session_factory(engine))) as client:
            answers = [client.get("/ready") for _ in range(3)]
            checks = [t for t in threading.enumerate() if t.name == "latentwatch-ready"]
            assert client.get("/health").status_code == 200
    finally:
        silent.close()
        engine.dispose()
    for answer in answers:
        assert answer.status_code == 503
        assert answer.json() == {
            "status": "unavailable",
            "detail": "database did not answer within 0.3 s",
        }
    assert len(checks) == 1
