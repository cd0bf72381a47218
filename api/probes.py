"""Liveness and readiness probes. /health says the process answers; /ready says the database
answers, within a short time, at the schema this version needs. The database check runs in a
worker thread: a database that accepts connections but never answers (a hung server, a
dropped network path) makes /ready answer 503 on time instead of hanging the probe with it."""

# No `from __future__ import annotations`: FastAPI evaluates the route annotations.

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from api.dependencies import SessionFactoryDep
from api.schemas import ErrorOut, HealthOut, ReadyOut
from storage.database import current_revision, head_revision

log = logging.getLogger(__name__)
PROBE_METHODS = ["GET", "HEAD"]  # load balancers and uptime checkers often send HEAD


def database_state(session_factory: sessionmaker[Session], head: str) -> tuple[bool, str]:
    """Whether the database answers and is at migration ``head``, and why not."""
    try:
        with session_factory() as session:
            bind = session.get_bind()
            current = current_revision(bind if isinstance(bind, Engine) else bind.engine)
    except SQLAlchemyError as exc:
        log.warning("readiness check: database unreachable: %s", exc)
        return False, f"database unreachable ({type(exc).__name__}): see the server log"
    if current != head:
        return False, (
            f"database schema is at {current!r}, this version needs {head!r}: "
            "run `latentwatch db upgrade --db URL`"
        )
    return True, f"database reachable, schema at {head}"


class ReadinessCheck:
    """One database check at a time, each in a daemon thread (a hung one must not keep the
    process from exiting); probes arriving while it runs wait for that same check."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.head = head_revision()
        self._pending: concurrent.futures.Future[tuple[bool, str]] | None = None
        self._lock = threading.Lock()

    def _start(self, session_factory: sessionmaker[Session]) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._pending is None or self._pending.done():
                future: concurrent.futures.Future[tuple[bool, str]] = concurrent.futures.Future()

                def run() -> None:
                    try:
                        future.set_result(database_state(session_factory, self.head))
                    except BaseException as exc:  # handed to the waiting probe
                        future.set_exception(exc)

                threading.Thread(target=run, name="latentwatch-ready", daemon=True).start()
                self._pending = future
            return self._pending

    async def __call__(self, session_factory: sessionmaker[Session]) -> tuple[bool, str]:
        pending = asyncio.wrap_future(self._start(session_factory))
        try:
            return await asyncio.wait_for(asyncio.shield(pending), self.timeout_s)
        except TimeoutError:
            log.warning("readiness check: no answer from the database in %ss", self.timeout_s)
            return False, f"database did not answer within {self.timeout_s:g} s"


def probes_router(
    readiness: ReadinessCheck,
    responses: dict[int | str, dict[str, Any]],
    token_check: list[Any],
    query_check: list[Any],
) -> APIRouter:
    """``responses``: what every route can answer besides its own; ``token_check`` guards
    /ready (with a token configured), ``query_check`` refuses unknown query parameters."""
    router = APIRouter(tags=["probes"])

    def health() -> HealthOut:
        """The process answers; says nothing about the database (see /ready). No token."""
        return HealthOut(status="ok")

    async def ready(session_factory: SessionFactoryDep) -> ReadyOut | Response:
        """The database answers within the readiness timeout, at the schema this version
        needs. With a token configured, it needs the token."""
        ok, detail = await readiness(session_factory)
        if ok:
            return ReadyOut(status="ready", detail=detail)
        body = ReadyOut(status="unavailable", detail=detail).model_dump()
        return JSONResponse(body, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)

    not_ready: dict[int | str, dict[str, Any]] = {
        503: {"model": ReadyOut, "description": "Not ready; detail says why."}
    }
    if token_check:
        not_ready[401] = {"model": ErrorOut, "description": "Missing or wrong bearer token."}
    for method in PROBE_METHODS:  # one operation each, so each has its own operation id
        router.add_api_route(
            "/health",
            health,
            methods=[method],
            operation_id=f"health_{method.lower()}",
            response_model=HealthOut,
            summary="Liveness",
            responses=responses,
            dependencies=query_check,
        )
        router.add_api_route(
            "/ready",
            ready,
            methods=[method],
            operation_id=f"ready_{method.lower()}",
            response_model=ReadyOut,
            summary="Readiness: database reachable, in time, and its schema current",
            responses={**responses, **not_ready},
            dependencies=[*token_check, *query_check],
        )
    return router
