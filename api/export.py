"""CSV and JSON-lines exports of a flagged-records query, streamed page by page: memory stays
flat however many rows match, and each page is its own short transaction."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any, Literal

from sqlalchemy.orm import Session, sessionmaker

from api.schemas import FlaggedSummaryOut
from storage.queries import FlaggedFilter, FlaggedSummary, Ordering, page_flagged

ExportFormat = Literal["csv", "jsonl"]
MEDIA_TYPES: dict[ExportFormat, str] = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson",
}
CSV_COLUMNS = tuple(FlaggedSummaryOut.model_fields)


def export_lines(
    session_factory: sessionmaker[Session],
    flt: FlaggedFilter,
    order: Ordering,
    export_format: ExportFormat,
    *,
    cursor: str | None,
    max_rows: int,
    chunk_size: int,
) -> Iterator[str]:
    """The export's text, a page at a time: the same records, in the same order, as paging
    the JSON API from ``cursor`` would give, up to ``max_rows``."""
    if export_format == "csv":
        yield _csv_line(CSV_COLUMNS)
    sent = 0
    while sent < max_rows:
        with session_factory() as session:
            page = page_flagged(
                session, flt, order, limit=min(chunk_size, max_rows - sent), cursor=cursor
            )
        lines = (_format(record, export_format) for record in page.records)
        yield "".join(lines)
        sent += len(page.records)
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def _format(record: FlaggedSummary, export_format: ExportFormat) -> str:
    out = FlaggedSummaryOut.model_validate(record)
    if export_format == "jsonl":
        return out.model_dump_json() + "\n"
    values = out.model_dump(mode="json")
    return _csv_line(_cell(values[name]) for name in CSV_COLUMNS)


def _cell(value: Any) -> Any:
    """Nested values (the explanation) as compact JSON text in one cell."""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return "" if value is None else value


def _csv_line(values: Any) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(values)
    return buffer.getvalue()
