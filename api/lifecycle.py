"""The model lifecycle over HTTP: the live model against its shadow over a time window."""

# No `from __future__ import annotations`: FastAPI must evaluate the parameter annotations.

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from api.dependencies import SessionDep, invalid
from api.params import NO_NUL, TimeQuery, _utc
from api.schemas import ComparisonOut, ErrorOut, ModelSideOut
from api.settings import ApiSettings
from lifecycle.compare import compare_window

DEFAULT_WINDOW = timedelta(hours=24)


def lifecycle_router(settings: ApiSettings) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["models"])

    @router.get(
        "/models/compare",
        response_model=ComparisonOut,
        summary="The live model against its shadow over a time window",
        responses={404: {"model": ErrorOut, "description": "No shadow scores in the window."}},
    )
    def compare(
        session: SessionDep,
        topic: Annotated[str, Query(min_length=1, max_length=255, pattern=NO_NUL)],
        start: TimeQuery = None,
        end: TimeQuery = None,
        version: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=64,
                pattern=NO_NUL,
                description="The shadow model (default: the one that scored last).",
            ),
        ] = None,
    ) -> ComparisonOut:
        until = _utc("end", end) or datetime.now(UTC)
        since = _utc("start", start) or until - DEFAULT_WINDOW
        if since >= until:
            raise invalid("query", "start", "start must be before end", start)
        result = compare_window(session, topic, (since, until), version)
        if result is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                detail=f"no shadow scores of {topic!r} between {since.isoformat()} and "
                f"{until.isoformat()}: shadow a model with `latentwatch models shadow`",
            )
        return ComparisonOut(
            topic=topic,
            start=since,
            end=until,
            scored=result.scored,
            live=ModelSideOut.model_validate(result.live),
            shadow=ModelSideOut.model_validate(result.shadow),
            both_flagged=result.both_flagged,
            either_flagged=result.either_flagged,
            overlap=result.overlap,
            rank_correlation=result.rank_correlation,
            unlabelled_shadow_only=result.unlabelled_shadow_only,
        )

    return router
