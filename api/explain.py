"""Recompute an explanation: a record posted as JSON, explained against a model version (its
score, its nearest normal record, fields ordered by attributions). The API does not load
models itself: it is given an :data:`Explainer` (built where the service is wired, the CLI)."""

# No `from __future__ import annotations`: FastAPI must evaluate the parameter annotations.

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, Request, status

from api.params import NO_NUL
from api.schemas import ErrorOut, ExplainOut
from api.settings import ApiSettings

# (model version, record) -> the explanation; raises LookupError for a version it does not
# serve and ValueError (with the reason) for a record that model cannot score.
Explainer = Callable[[str, dict[str, Any]], dict[str, Any]]

VersionPath = Annotated[
    str, Path(max_length=128, pattern=NO_NUL, description="The model version to explain with.")
]


def explain_router(settings: ApiSettings, explainer: Explainer | None) -> APIRouter:
    router = APIRouter(prefix="/api/models", tags=["explanations"])

    @router.post(
        "/{version}/explain",
        response_model=ExplainOut,
        summary="Score and explain a record posted as JSON against a model version",
        responses={
            404: {"model": ErrorOut, "description": "This server does not serve that model."},
            413: {"model": ErrorOut, "description": "The record is too large."},
        },
    )
    async def explain(
        version: VersionPath,
        request: Request,
        record: Annotated[dict[str, Any], Body(description="The record, one JSON object.")],
    ) -> ExplainOut:
        size = int(request.headers.get("content-length") or 0)
        if size > settings.max_record_bytes or len(record) > settings.max_record_fields:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                detail=f"a record is at most {settings.max_record_bytes} bytes and "
                f"{settings.max_record_fields} fields",
            )
        if explainer is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                detail="this server explains with no model: start it with --model DIR",
            )
        try:
            out = explainer(version, record)
        except LookupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
        except ValueError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from None
        return ExplainOut.model_validate(out)

    return router
