"""Routes over flagged records: the filtered list (JSON pages, or a CSV/JSONL export), one
record in full, and feedback on it. The SQL lives in ``storage.queries``."""

# No `from __future__ import annotations`: FastAPI must evaluate the parameter annotations,
# which use the settings of the enclosing router factory.

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import IntegrityError

from api.dependencies import SessionDep, SessionFactoryDep, invalid
from api.export import MEDIA_TYPES, export_lines
from api.params import MAX_INT64, NO_NUL, FilterDep, OrderingDep
from api.schemas import ErrorOut, FeedbackIn, FlaggedDetailOut, FlaggedPageOut, FlaggedSummaryOut
from api.settings import ApiSettings
from storage.models import FlaggedRecordRow
from storage.queries import CursorError, count_flagged_matching, get_flagged, page_flagged
from storage.repository import add_feedback

IdPath = Annotated[int, Path(ge=1, le=MAX_INT64, description="The flagged record's id.")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No flagged record with this id."}
}


def _not_found(flagged_id: int) -> HTTPException:
    return HTTPException(
        status.HTTP_404_NOT_FOUND,
        detail=f"flagged record {flagged_id} not found: it never existed or retention pruned it",
    )


def flagged_router(settings: ApiSettings) -> APIRouter:
    router = APIRouter(prefix="/api/flagged", tags=["flagged records"])

    @router.get(
        "",
        response_model=FlaggedPageOut,
        summary="List, filter and page flagged records, or export them",
        responses={
            200: {
                "description": "A page (format=json), or every matching row (format=csv|jsonl, "
                f"at most {settings.export_max_rows}; header X-Latentwatch-Truncated says if "
                "more matched).",
                "content": {"text/csv": {}, "application/x-ndjson": {}},
            }
        },
    )
    def list_flagged(  # noqa: PLR0917 - FastAPI passes parameters by keyword
        session: SessionDep,
        session_factory: SessionFactoryDep,
        flt: FilterDep,
        order: OrderingDep,
        limit: Annotated[
            int,
            Query(ge=1, le=settings.max_page_size, description="Records per page (format=json)."),
        ] = settings.default_page_size,
        cursor: Annotated[
            str | None,
            Query(
                max_length=512,
                pattern=NO_NUL,
                description="next_cursor of the previous page, with the same filters and order. "
                "Pages never skip or repeat a record, even while new ones are written.",
            ),
        ] = None,
        output_format: Annotated[
            Literal["json", "csv", "jsonl"],
            Query(alias="format", description="json: one page; csv/jsonl: all rows, streamed."),
        ] = "json",
    ) -> Response | FlaggedPageOut:
        try:
            if output_format == "json":
                page = page_flagged(session, flt, order, limit=limit, cursor=cursor)
                records = [FlaggedSummaryOut.model_validate(record) for record in page.records]
                return FlaggedPageOut(
                    records=records, next_cursor=page.next_cursor, count=len(records)
                )
            cap = settings.export_max_rows
            matching = count_flagged_matching(session, flt, order, cursor=cursor, at_most=cap + 1)
        except CursorError as exc:
            raise invalid("query", "cursor", str(exc), cursor) from None
        lines = export_lines(
            session_factory,
            flt,
            order,
            output_format,
            cursor=cursor,
            max_rows=cap,
            chunk_size=settings.export_chunk_size,
        )
        headers = {
            "Content-Disposition": f'attachment; filename="flagged.{output_format}"',
            "X-Latentwatch-Row-Limit": str(cap),
            "X-Latentwatch-Truncated": "true" if matching > cap else "false",
        }
        return StreamingResponse(lines, media_type=MEDIA_TYPES[output_format], headers=headers)

    @router.get(
        "/{flagged_id}",
        response_model=FlaggedDetailOut,
        summary="One flagged record in full: original record, explanation, feedback",
        responses=NOT_FOUND,
    )
    def get_one(flagged_id: IdPath, session: SessionDep) -> FlaggedDetailOut:
        detail = get_flagged(session, flagged_id)
        if detail is None:
            raise _not_found(flagged_id)
        return FlaggedDetailOut.model_validate(detail)

    @router.post(
        "/{flagged_id}/feedback",
        response_model=FlaggedDetailOut,
        status_code=status.HTTP_201_CREATED,
        summary="Mark a flagged record as a true or false alarm",
        responses=NOT_FOUND,
    )
    def post_feedback(
        flagged_id: IdPath, body: FeedbackIn, session_factory: SessionFactoryDep
    ) -> FlaggedDetailOut:
        with session_factory() as session:
            if session.get(FlaggedRecordRow, flagged_id) is None:
                raise _not_found(flagged_id)
        try:
            add_feedback(session_factory, flagged_id, body.label, body.note)
        except IntegrityError:  # pruned between the check and the insert
            raise _not_found(flagged_id) from None
        with session_factory() as session:
            detail = get_flagged(session, flagged_id)
        if detail is None:
            raise _not_found(flagged_id)
        return FlaggedDetailOut.model_validate(detail)

    return router
