"""The app factory: the API routers (behind the bearer token when one is set), liveness and
readiness probes, and the explorer page with its static files. Every route of the schema
refuses query parameters it does not declare (``api.params.reject_unknown_query``)."""

from __future__ import annotations

import json
import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from api.dependencies import SessionFactoryDep, bearer_auth
from api.flagged import flagged_router
from api.overview import overview_router
from api.params import reject_unknown_query
from api.schemas import ErrorOut, HealthOut, ReadyOut, ValidationErrorOut
from api.settings import ApiSettings
from storage.database import current_revision, head_revision

STATIC_DIR = Path(__file__).parent / "static"
# The page loads only its own files: no CDN, no inline script, nothing sent elsewhere.
PAGE_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
log = logging.getLogger(__name__)
DESCRIPTION = """Flagged records of latentwatch: filter, page and export them, read why each was
flagged, and record whether it was a true or false alarm. Scores are in nats, higher = more
anomalous. With a token configured, send `Authorization: Bearer <token>` to every route except
/health and the explorer page's files (this schema included)."""


def _version() -> str:
    try:
        return version("latentwatch")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree without install
        return "0+unknown"


def create_app(settings: ApiSettings, session_factory: sessionmaker[Session]) -> FastAPI:
    """The API and explorer over the database that ``session_factory`` opens. Route code gets
    sessions through ``api.dependencies.get_session_factory``/``get_session`` (overridable)."""
    # With a token, the schema is served behind it too, and the interactive pages (which fetch
    # the schema without a token, and their scripts from a CDN) are off.
    public = not settings.token
    app = FastAPI(
        title="latentwatch",
        version=_version(),
        description=DESCRIPTION,
        openapi_url="/openapi.json" if public else None,
        docs_url="/docs" if public else None,
        redoc_url="/redoc" if public else None,
    )
    app.state.session_factory = session_factory
    app.state.settings = settings
    app.add_exception_handler(RequestValidationError, _validation_error)
    # The token is checked first: without it, a request learns nothing, not even its typos.
    auth = [Depends(bearer_auth(settings.token))] if settings.token else []
    known_query = [Depends(reject_unknown_query)]
    protected = [*auth, *known_query]
    refused: dict[int | str, dict[str, Any]] = {
        422: {
            "model": ValidationErrorOut,
            "description": "A bad or unknown parameter (or body field); detail names each.",
        }
    }
    unauthorized: dict[int | str, dict[str, Any]] = (
        {401: {"model": ErrorOut, "description": "Missing or wrong bearer token."}}
        if settings.token
        else {}
    )
    for router in (flagged_router(settings), overview_router(settings)):
        app.include_router(router, dependencies=protected, responses=refused | unauthorized)

    @app.get(
        "/health",
        response_model=HealthOut,
        tags=["probes"],
        summary="Liveness",
        responses=refused,
        dependencies=known_query,
    )
    def health() -> HealthOut:
        """The process answers; says nothing about the database (see /ready). No token."""
        return HealthOut(status="ok")

    @app.get(
        "/ready",
        response_model=ReadyOut,
        tags=["probes"],
        summary="Readiness: database reachable and its schema current",
        responses={
            **refused,
            **unauthorized,
            503: {"model": ReadyOut, "description": "Not ready; detail says why."},
        },
        dependencies=protected,
    )
    def ready(session_factory: SessionFactoryDep) -> ReadyOut | JSONResponse:
        head = head_revision()
        try:
            with session_factory() as session:
                bind = session.get_bind()
                current = current_revision(bind if isinstance(bind, Engine) else bind.engine)
        except SQLAlchemyError as exc:
            log.warning("readiness check: database unreachable: %s", exc)
            return _unavailable(f"database unreachable ({type(exc).__name__}): see the server log")
        if current != head:
            return _unavailable(
                f"database schema is at {current!r}, this version needs {head!r}: "
                "run `latentwatch db upgrade --db URL`"
            )
        return ReadyOut(status="ready", detail=f"database reachable, schema at {head}")

    if settings.token:

        @app.get("/openapi.json", include_in_schema=False, dependencies=auth)
        def openapi() -> dict[str, Any]:
            return app.openapi()

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def explorer() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_SECURITY_HEADERS)

    return app


async def _validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own 422 body, written as ASCII JSON: the input it echoes may hold an unpaired
    surrogate (a JSON body can), which UTF-8 cannot encode (the default handler would 500)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    body = json.dumps({"detail": jsonable_encoder(errors)}, ensure_ascii=True)
    return Response(body, status_code=422, media_type="application/json")


def _unavailable(detail: str) -> JSONResponse:
    body = ReadyOut(status="unavailable", detail=detail).model_dump()
    return JSONResponse(body, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
