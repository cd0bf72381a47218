"""Read record files (CSV, JSONL, Parquet) into columns, and write score tables.

CSV has no types, so cells are typed by what they hold, one by one: a cell that parses as a
number is a number, an empty cell or NA token is missing, anything else stays a string. So one
bad cell in a numeric column is that row's problem (``score`` gives it a reason and scores the
rest), not the column's. Two column rules keep text columns text: a column of true/false is
boolean, and in a column where most cells are not numbers the numeric-looking ones ("10", "7")
are codes and stay strings too; so do the columns a caller names (ids, a model's categorical
fields). JSONL keeps JSON's own types. A JSONL line that is not valid JSON does not stop the
file: its row carries a reason.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from common.errors import LatentwatchError, os_error_reason
from detector.encoding import plain_value
from detector.errors import DataError
from detector.schema import Column

_NA = frozenset({"", "na", "n/a", "nan", "null", "none", "-"})
_BOOL = {"true": True, "false": False}
SUPPORTED = (".csv", ".jsonl", ".ndjson", ".parquet")


class OutputError(LatentwatchError):
    """An output file cannot be written (its folder cannot be created, no permission, ...)."""


@dataclass
class Table:
    """Columnar data: ``columns[name][i]`` is row i's value; ``reasons[i]`` marks a bad row."""

    columns: dict[str, Column]
    n_rows: int
    reasons: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.reasons:
            self.reasons = [None] * self.n_rows

    def row(self, i: int) -> dict[str, Any]:
        return {name: plain_value(values[i]) for name, values in self.columns.items()}

    def rows(self) -> Iterator[dict[str, Any]]:
        for i in range(self.n_rows):
            if self.reasons[i] is None:
                yield self.row(i)


def _number(cell: str) -> float | str:
    try:
        return float(cell)
    except ValueError:
        return cell


def _type_csv_column(cells: list[str], keep_raw: bool) -> Column:
    missing = [c.strip().lower() in _NA for c in cells]
    text = [None if m else c for c, m in zip(cells, missing, strict=True)]
    if keep_raw:
        return text
    try:  # the usual column, all numbers: one numpy call
        return np.array(["nan" if c is None else c for c in text], dtype=np.float64)
    except ValueError:
        pass
    lowered = [None if c is None else c.strip().lower() for c in text]
    if all(c is None or c in _BOOL for c in lowered):
        return [None if c is None else _BOOL[c] for c in lowered]
    typed = [None if c is None else _number(c) for c in text]
    numbers = sum(type(v) is float for v in typed)
    if 2 * numbers < len(cells) - sum(missing):  # mostly text: a column of codes
        return text
    return typed


def _read_csv(path: Path, keep_raw: frozenset[str]) -> Table:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path} is empty")
        if len(set(header)) != len(header):
            raise DataError(f"{path}: the header repeats a column name")
        raw: list[list[str]] = [[] for _ in header]
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}, line {line_no}: {len(row)} cells, the header has {len(header)}"
                )
            for cells, cell in zip(raw, row, strict=True):
                cells.append(cell)
    columns = {
        name: _type_csv_column(cells, name in keep_raw)
        for name, cells in zip(header, raw, strict=True)
    }
    return Table(columns=columns, n_rows=len(raw[0]) if raw else 0)


def _read_jsonl(path: Path) -> Table:
    records: list[Mapping[str, Any]] = []
    reasons: list[str | None] = []
    with path.open("rb") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                records.append({})
                reasons.append(f"line {line_no}: not valid JSON ({exc})")
                continue
            if isinstance(value, dict):
                records.append(value)
                reasons.append(None)
            else:
                records.append({})
                reasons.append(f"line {line_no}: a record must be a JSON object")
    return records_table(records, reasons)


def records_table(
    records: Sequence[Mapping[str, Any]], reasons: list[str | None] | None = None
) -> Table:
    """Decoded JSON records as columns, fields in order of first appearance: a JSONL file's,
    and a topic's (``latentwatch train --from-topic``), so the same records train the same
    model either way."""
    names: dict[str, None] = {}
    for rec in records:
        names.update(dict.fromkeys(rec))
    columns: dict[str, Column] = {n: [r.get(n) for r in records] for n in names}
    return Table(columns=columns, n_rows=len(records), reasons=reasons or [])


def _read_parquet(path: Path) -> Table:
    try:
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.parquet as pq  # noqa: PLC0415
    except ImportError:
        raise DataError(
            "reading .parquet needs pyarrow: pip install 'latentwatch[parquet]'"
        ) from None
    try:
        table = pq.read_table(path)
    except pa.ArrowException as exc:  # damaged, truncated or not Parquet at all
        raise DataError(f"{path} is not a readable Parquet file: {exc}") from None
    return Table(
        columns={n: table.column(n).to_pylist() for n in table.column_names}, n_rows=table.num_rows
    )


def read_table(path: str | Path, keep_raw: Sequence[str] = ()) -> Table:
    """Read a record file; ``keep_raw`` CSV columns (ids, categorical fields) stay strings
    exactly as written, even where they look like numbers."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a data file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            table = _read_csv(path, frozenset(keep_raw))
        elif suffix in (".jsonl", ".ndjson"):
            table = _read_jsonl(path)
        elif suffix == ".parquet":
            table = _read_parquet(path)
        else:
            raise DataError(
                f"{path}: unsupported file type {suffix!r} (use one of {', '.join(SUPPORTED)})"
            )
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason})") from None
    except (csv.Error, OSError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if table.n_rows == 0:
        raise DataError(f"{path} has no data rows")
    return table


def write_csv(path: str | Path, header: Sequence[str], rows: Iterator[Sequence[Any]]) -> None:
    """Write rows (the folder is created if needed); floats keep full precision (shortest repr
    that round-trips)."""
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
    except OSError as exc:  # no permission, a file where a folder belongs, a full disk
        raise OutputError(f"cannot write {out}: {os_error_reason(exc)}") from None
