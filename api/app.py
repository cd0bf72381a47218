"""The app factory: the API routers (behind the bearer token when one is set), liveness and
readiness probes, and the explorer page with its static files, all behind ``api.guard`` (Host
names, query-string bounds, security headers). Every route of the schema refuses query
parameters it does not declare, or gets twice (``api.params.check_query_names``)."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp

from api.dependencies import bearer_auth
from api.explain import Explainer, explain_router
from api.flagged import flagged_router
from api.guard import RequestGuard
from api.lifecycle import lifecycle_router
from api.overview import overview_router
from api.params import check_query_names
from api.probes import PROBE_METHODS, ReadinessCheck, probes_router
from api.schemas import ErrorOut, ValidationErrorOut
from api.settings import ApiSettings

STATIC_DIR = Path(__file__).parent / "static"
DESCRIPTION = """Flagged records of latentwatch: filter, page and export them, read why each was
flagged, and record whether it was a true or false alarm. Scores are in nats, higher = more
anomalous; a score that is infinite is served as the string "Infinity" (or "-Infinity"), as
the schema of each number field says. With a token configured, send
`Authorization: Bearer <token>` to every route except /health and the explorer page's files
(this schema included)."""


def _version() -> str:
    try:
        return version("latentwatch")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree without install
        return "0+unknown"


class _GuardedApp(FastAPI):
    """FastAPI with :class:`api.guard.RequestGuard` outside everything else, so that its
    headers reach even the answers of Starlette's own error handler."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestGuard(super().build_middleware_stack(), self.state.settings)


def create_app(
    settings: ApiSettings,
    session_factory: sessionmaker[Session],
    explainer: Explainer | None = None,
) -> FastAPI:
    """The API and explorer over the database that ``session_factory`` opens. Route code gets
    sessions through ``api.dependencies.get_session_factory``/``get_session`` (overridable);
    ``explainer`` explains posted records (none: that route answers 404)."""
    # With a token, the schema is served behind it too, and the interactive pages (which fetch
    # the schema without a token, and their scripts from a CDN) are off.
    public = not settings.token
    app = _GuardedApp(
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
    known_query = [Depends(check_query_names)]
    protected = [*auth, *known_query]
    everywhere = _guard_responses(settings) | {
        422: {
            "model": ValidationErrorOut,
            "description": "A bad, unknown or repeated parameter, or a body that is not the "
            "JSON the route takes; detail names each.",
        }
    }
    unauthorized: dict[int | str, dict[str, Any]] = (
        {401: {"model": ErrorOut, "description": "Missing or wrong bearer token."}}
        if settings.token
        else {}
    )
    # the lifecycle's /api/models/compare before overview's /api/models/{version}
    routers = (
        flagged_router(settings),
        lifecycle_router(settings),
        overview_router(settings),
        explain_router(settings, explainer),
    )
    for router in routers:
        app.include_router(router, dependencies=protected, responses=everywhere | unauthorized)
    readiness = ReadinessCheck(settings.ready_timeout_s)
    app.include_router(probes_router(readiness, everywhere, auth, known_query))

    if settings.token:

        @app.get("/openapi.json", include_in_schema=False, dependencies=auth)
        def openapi() -> dict[str, Any]:
            return app.openapi()

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.api_route("/", methods=PROBE_METHODS, include_in_schema=False)
    def explorer() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    return app


def _guard_responses(settings: ApiSettings) -> dict[int | str, dict[str, Any]]:
    """What ``api.guard`` answers for any route, documented on each."""
    return {
        400: {
            "model": ErrorOut,
            "description": "The Host header names a host this server does not answer to "
            "(--trusted-host), or the query string has more than "
            f"{settings.max_query_params} parameters.",
        },
        414: {
            "model": ErrorOut,
            "description": f"The query string is longer than {settings.max_query_bytes} bytes.",
        },
    }


async def _validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own 422 body, written as ASCII JSON: the input it echoes may hold an unpaired
    surrogate (a JSON body can), which UTF-8 cannot encode (the default handler would 500)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    body = json.dumps({"detail": jsonable_encoder(errors)}, ensure_ascii=True)
    return Response(body, status_code=422, media_type="application/json")
