"""Serving the app: ``run_api`` for ``latentwatch api`` (blocks, stops on SIGINT/SIGTERM), and
``serve_in_thread`` for the demo and the tests (a free port, a handle to stop it);
``serve_app_in_thread`` serves an app built by the caller (tests with their own settings)."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.explain import Explainer
from api.settings import LOOPBACK_HOSTS, ApiSettings, ApiSettingsError
from storage.database import ensure_schema, make_engine, session_factory

log = logging.getLogger(__name__)
WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # noqa: S104 - names of "every address", not a bind


def serving_settings(
    host: str, token: str | None, trusted_hosts: tuple[str, ...] = ()
) -> ApiSettings:
    """The settings for serving on ``host``: refused without a token beyond loopback (anyone
    who reaches the port could read and label flagged records). The Host names answered are
    the loopback ones, ``host`` itself when it is one address, and ``trusted_hosts``."""
    if token is None and not _is_loopback(host):
        raise ApiSettingsError(
            f"refusing to serve on {host or 'every address'} without an API token: anyone who "
            "can reach the port could read and label flagged records. Give a token "
            "(--token-file FILE or LATENTWATCH_API_TOKEN), or serve on 127.0.0.1"
        )
    names = [*LOOPBACK_HOSTS, *([] if host in WILDCARD_HOSTS else [host]), *trusted_hosts]
    return ApiSettings(token=token, trusted_hosts=tuple(dict.fromkeys(names)))


def run_api(
    db_url: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    trusted_hosts: tuple[str, ...] = (),
    *,
    explainer: Explainer | None = None,
) -> None:
    """Serve the API and explorer for the database at ``db_url`` until interrupted (see
    :func:`serving_settings`). The schema is checked first (SQLite is upgraded; PostgreSQL
    must be: ``latentwatch db upgrade``)."""
    settings = serving_settings(host, token, trusted_hosts)
    engine = make_engine(db_url)
    try:
        ensure_schema(engine)
        app = create_app(settings, session_factory(engine), explainer)
        log.info("answering requests for the hosts %s", ", ".join(settings.trusted_hosts))
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        engine.dispose()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ApiServer:
    """A running in-process server; ``url`` has no trailing slash. Stop it with ``close()``
    (or use it as a context manager)."""

    def __init__(
        self,
        server: uvicorn.Server,
        thread: threading.Thread,
        sock: socket.socket,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._server, self._thread, self._socket = server, thread, sock
        self._on_close = on_close
        host, port = sock.getsockname()[:2]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def close(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)
        self._socket.close()
        if self._on_close is not None:
            self._on_close()
        if self._thread.is_alive():
            raise RuntimeError(f"API server at {self.url} did not stop within {timeout_s}s")

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def serve_in_thread(
    db_url: str, host: str = "127.0.0.1", port: int = 0, *, token: str | None = None
) -> ApiServer:
    """Serve the API and explorer for ``db_url`` from a daemon thread (what ``run_api`` serves);
    ``port=0`` picks a free port. Returns once the server accepts connections."""
    settings = serving_settings(host, token)
    engine = make_engine(db_url)
    try:
        ensure_schema(engine)
        app = create_app(settings, session_factory(engine))
        return serve_app_in_thread(app, host, port, on_close=engine.dispose)
    except BaseException:
        engine.dispose()
        raise


def serve_app_in_thread(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    start_timeout_s: float = 10.0,
    on_close: Callable[[], None] | None = None,
) -> ApiServer:
    """Serve ``app`` from a daemon thread; ``port=0`` picks a free port. Returns once the server
    accepts connections; ``on_close`` runs after it stopped."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))  # bound here, so the port is known before uvicorn starts
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="latentwatch-api", daemon=True
    )
    thread.start()
    bound_port = sock.getsockname()[1]
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(start_timeout_s)
            sock.close()
            raise RuntimeError(
                f"API server on {host}:{bound_port} did not start within {start_timeout_s}s: "
                "see the log above"
            )
        time.sleep(0.01)
    return ApiServer(server, thread, sock, on_close)
