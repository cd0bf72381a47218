"""The model lifecycle over HTTP: the live model against its shadow over a time window, and
the topics that have one."""

# No `from __future__ import annotations`: FastAPI must evaluate the parameter annotations.

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from api.dependencies import SessionDep, invalid
from api.params import NO_NUL, TimeQuery, _utc
from api.schemas import ComparisonOut, ErrorOut, ModelSideOut, ShadowTopicsOut
from api.settings import ApiSettings
from lifecycle.compare import Comparison, compare_run, compare_window
from storage.comparison import shadow_topics

DEFAULT_WINDOW = timedelta(hours=24)
MAX_TOPICS = 100


def _window(start: str | None, end: str | None) -> tuple[datetime, datetime]:
    """The window asked for: by default the last 24 h before ``end`` (default: now)."""
    until = _utc("end", end) or datetime.now(UTC)
    since = _utc("start", start) or until - DEFAULT_WINDOW
    if since >= until:
        raise invalid("query", "start", "start must be before end", start)
    return since, until


def lifecycle_router(settings: ApiSettings) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["models"])

    @router.get(
        "/models/compare",
        response_model=ComparisonOut,
        summary="The live model against its shadow over a time window",
        responses={
            404: {"model": ErrorOut, "description": "No shadow scores in the window (or no run)."}
        },
    )
    def compare(  # noqa: PLR0917  (FastAPI passes each query parameter by name)
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
        run: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=128,
                pattern=NO_NUL,
                description="A backfill run (`latentwatch rescore --name`) instead of the shadow "
                "model: compared with the live flags of the records it re-scored, over its "
                "whole range (no start, end or version then).",
            ),
        ] = None,
    ) -> ComparisonOut:
        if run is not None:
            if start is not None or end is not None or version is not None:
                raise invalid(
                    "query",
                    "run",
                    "a run is compared over its own range: no start, end or version with it",
                    run,
                )
            found = compare_run(session, run)
            if found is None or found[1].topic != topic:
                raise HTTPException(
                    status.HTTP_404_NOT_FOUND,
                    detail=f"no backfill run {run!r} of {topic!r} (`latentwatch rescore`)",
                )
            result, ran = found
            return _out(topic, (ran.start, ran.end), result, run)
        since, until = _window(start, end)
        result_in_window = compare_window(session, topic, (since, until), version)
        if result_in_window is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                detail=f"no shadow scores of {topic!r} between {since.isoformat()} and "
                f"{until.isoformat()}: shadow a model with `latentwatch models shadow`",
            )
        return _out(topic, (since, until), result_in_window, "shadow")

    @router.get(
        "/models/compare/topics",
        response_model=ShadowTopicsOut,
        summary="The topics with shadow scores in a time window (what can be compared)",
    )
    def compared_topics(
        session: SessionDep, start: TimeQuery = None, end: TimeQuery = None
    ) -> ShadowTopicsOut:
        since, until = _window(start, end)
        topics = shadow_topics(session, (since, until), MAX_TOPICS)
        return ShadowTopicsOut(start=since, end=until, topics=topics)

    return router


def _out(
    topic: str, window: tuple[datetime, datetime], result: Comparison, run: str
) -> ComparisonOut:
    return ComparisonOut(
        topic=topic,
        run=run,
        start=window[0],
        end=window[1],
        scored=result.scored,
        live=ModelSideOut.model_validate(result.live),
        shadow=ModelSideOut.model_validate(result.shadow),
        both_flagged=result.both_flagged,
        either_flagged=result.either_flagged,
        overlap=result.overlap,
        rank_correlation=result.rank_correlation,
        unlabelled_shadow_only=result.unlabelled_shadow_only,
    )
