"""Turn records into the numeric matrix the model sees, and back into field values.

Pure functions of a :class:`~detector.schema.Schema`. Encoding is columnar because that is
where the speed is: one list per field, type-checked in one pass, converted by numpy. A record
with a value of the wrong type is not an exception: it gets a reason, its row is excluded from
scoring, and the rest of the batch goes on.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import NamedTuple, cast

import numpy as np

from detector.schema import Column, Columns, FieldKind, FieldSpec, Schema

# Standardised values beyond this many sigma-equivalents are clipped: the record is already
# extreme, and unbounded inputs would only destabilise the network.
CLIP_SIGMAS = 50.0
_FLOAT_MAX = sys.float_info.max


class Accepted(NamedTuple):
    """The values a field of one kind accepts: the (exact) Python types of decoded JSON, null
    included, and how a reason names them. The typed stream decoder derives its types from
    these (streams/typed.py)."""

    label: str
    types: frozenset[type]


ACCEPTED = {
    FieldKind.NUMERIC: Accepted("a number", frozenset({int, float, type(None)})),
    FieldKind.CATEGORICAL: Accepted("a string", frozenset({str, int, type(None)})),
    FieldKind.BOOLEAN: Accepted("a boolean", frozenset({bool, type(None)})),
}
_JSON_TYPE_NAMES = {
    bool: "boolean",
    str: "string",
    int: "number",
    float: "number",
    dict: "object",
    list: "array",
    type(None): "null",
}


@dataclass(frozen=True)
class EncodedBatch:
    """``matrix`` has one row per input record, missing values imputed; ``missing[i, j]`` says
    field j of row i was absent, null or not finite. Rows where ``valid`` is False must not be
    scored; ``reasons[i]`` says why row i is invalid."""

    matrix: np.ndarray  # float32 [n_rows, schema.width]
    missing: np.ndarray  # bool [n_rows, n_fields]
    valid: np.ndarray  # bool [n_rows]
    reasons: tuple[str | None, ...]


def _type_name(value: object) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _out_of_range(v: object) -> bool:
    """An integer that no float64 can hold (JSON allows it; numpy would raise)."""
    return type(v) is int and abs(v) > _FLOAT_MAX


def _check_types(
    spec: FieldSpec, values: Sequence[object], reasons: list[str | None]
) -> list[object]:
    """Values of the right type, with wrong ones replaced by None and reported in ``reasons``."""
    label, allowed = ACCEPTED[spec.kind]
    kinds = set(map(type, values))
    numeric_ints = spec.kind is FieldKind.NUMERIC and int in kinds
    if kinds <= allowed and not (numeric_ints and any(map(_out_of_range, values))):
        return list(values)
    clean: list[object] = []
    for i, v in enumerate(values):
        if type(v) in allowed and not (numeric_ints and _out_of_range(v)):
            clean.append(v)
        else:
            clean.append(None)
            if reasons[i] is None:
                got = "a number beyond the float range" if _out_of_range(v) else _type_name(v)
                reasons[i] = f"field {spec.name!r}: expected {label}, got {got}"
    return clean


def _numbers(spec: FieldSpec, values: Column, reasons: list[str | None]) -> np.ndarray:
    """A numeric field's values as float64 (null -> nan); a numeric array needs no check."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
        return values.astype(np.float64, copy=False)
    listed = values.tolist() if isinstance(values, np.ndarray) else values
    return np.asarray(_check_types(spec, listed, reasons), dtype=np.float64)


def _encode_boolean(spec: FieldSpec, values: Column, out: np.ndarray) -> np.ndarray:
    missing = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    raw = np.fromiter((v is True for v in values), dtype=np.float64, count=len(values))
    out[:, 0] = np.where(missing, spec.center, raw)  # impute the reference share of True
    return missing


def _encode_categorical(spec: FieldSpec, values: Column, out: np.ndarray) -> np.ndarray:
    index = {c: i for i, c in enumerate(spec.categories)}
    other = len(spec.categories)
    codes = np.fromiter(
        (-1 if v is None else index.get(v if type(v) is str else str(v), other) for v in values),
        dtype=np.int64,
        count=len(values),
    )
    missing = codes < 0
    rows = np.flatnonzero(~missing)
    out[rows, codes[rows]] = 1.0
    out[missing] = spec.category_shares  # impute the reference shares
    return missing


_ENCODERS = {FieldKind.BOOLEAN: _encode_boolean, FieldKind.CATEGORICAL: _encode_categorical}


def encode_columns(
    schema: Schema,
    columns: Columns,
    n_rows: int,
    reasons: list[str | None] | None = None,
) -> EncodedBatch:
    """Encode columnar data. Absent columns count as missing; extra columns are ignored.

    ``reasons`` may carry reasons found earlier (e.g. a row that was not an object). The
    numeric fields are standardised together, as one matrix: a few array operations for the
    batch rather than a few per field.
    """
    reasons = list(reasons) if reasons is not None else [None] * n_rows
    matrix = np.zeros((n_rows, schema.width), dtype=np.float32)
    missing = np.zeros((n_rows, len(schema.fields)), dtype=bool)
    absent: list[object] = [None] * n_rows
    numeric: list[int] = []  # indices of the numeric fields
    raw: list[np.ndarray] = []  # their values
    for j, (spec, cols) in enumerate(zip(schema.fields, schema.slices, strict=True)):
        values = columns.get(spec.name, absent)
        if spec.kind is FieldKind.NUMERIC:
            numeric.append(j)
            raw.append(_numbers(spec, values, reasons))
            continue
        listed = values.tolist() if isinstance(values, np.ndarray) else values
        block = np.zeros((n_rows, spec.width), dtype=np.float64)
        missing[:, j] = _ENCODERS[spec.kind](spec, _check_types(spec, listed, reasons), block)
        matrix[:, cols] = block
    if numeric:
        specs = [schema.fields[j] for j in numeric]
        centers = np.array([s.center for s in specs], dtype=np.float64)
        scales = np.array([s.scale for s in specs], dtype=np.float64)
        stacked = np.column_stack(raw)
        not_finite = ~np.isfinite(stacked)
        z = np.clip((stacked - centers) / scales, -CLIP_SIGMAS, CLIP_SIGMAS)
        matrix[:, _span([schema.slices[j].start for j in numeric])] = np.where(not_finite, 0.0, z)
        missing[:, _span(numeric)] = not_finite  # imputed with the median (0)
    if reasons.count(None) == n_rows:  # the usual batch: one C call instead of n checks
        valid = np.ones(n_rows, dtype=bool)
    else:
        valid = np.fromiter((r is None for r in reasons), dtype=bool, count=n_rows)
        matrix[~valid] = 0.0
    return EncodedBatch(matrix=matrix, missing=missing, valid=valid, reasons=tuple(reasons))


def _span(indices: list[int]) -> slice | list[int]:
    """Increasing indices as a slice when they are consecutive: numpy writes a block of columns
    much faster than columns picked one by one."""
    if indices[-1] - indices[0] == len(indices) - 1:
        return slice(indices[0], indices[-1] + 1)
    return indices


def _numeric_rows(names: Sequence[str], records: Sequence[object]) -> np.ndarray | None:
    """The named fields of every record as one row-major float64 block (null -> nan), or None
    when a record is not a dict, lacks one of the fields or holds anything but a number or null:
    the columns built field by field then find out which record and why.

    Records usually come as decoded JSON dicts holding every field. One C-level lookup per record
    touches each record once, where a list per field touches every record once per field."""
    if not names or set(map(type, records)) != {dict}:
        return None
    try:
        rows = list(map(itemgetter(*names), cast(Sequence[dict[str, object]], records)))
    except KeyError:
        return None
    flat = list(chain.from_iterable(rows)) if len(names) > 1 else rows
    if not set(map(type, flat)) <= ACCEPTED[FieldKind.NUMERIC].types:
        return None
    try:
        block = np.fromiter(flat, dtype=np.float64, count=len(flat))
    except OverflowError:  # an integer beyond float64
        return None
    return block.reshape(len(records), len(names))


def records_to_columns(
    schema: Schema, records: Sequence[object]
) -> tuple[dict[str, Column], list[str | None]]:
    """Transpose records (mappings) to the schema's columns; a record that is not a mapping gets
    a reason and empty values. The numeric fields come as arrays from one block when
    :func:`_numeric_rows` can take them all, else as lists like the other fields."""
    reasons: list[str | None] = [None] * len(records)
    numeric = schema.numeric_names
    block = _numeric_rows(numeric, records)
    columns: dict[str, Column] = {}
    rows: list[Mapping[str, object]]
    if block is not None:
        columns = {name: block[:, j] for j, name in enumerate(numeric)}
        rows = cast(list[Mapping[str, object]], records)  # every one a dict: checked
    else:
        rows = []
        empty: Mapping[str, object] = {}
        for i, rec in enumerate(records):
            if isinstance(rec, Mapping):
                rows.append(rec)
            else:
                rows.append(empty)
                reasons[i] = f"record must be an object, got {_type_name(rec)}"
    for name in schema.names:
        if name not in columns:
            columns[name] = [r.get(name) for r in rows]
    return columns, reasons


def encode_records(schema: Schema, records: Sequence[object]) -> EncodedBatch:
    """Encode a batch of records (mappings of field name to value)."""
    columns, reasons = records_to_columns(schema, records)
    return encode_columns(schema, columns, len(records), reasons)


def plain_value(value: object) -> object:
    """A value as plain JSON-able Python: numpy scalars unwrapped, non-finite floats None (the
    same "missing" that encoding gives them)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def decode_field(spec: FieldSpec, block: np.ndarray) -> list[object]:
    """Field values from encoded (or reconstructed) columns of one field: the inverse of
    encoding, used to show the value the model expected."""
    if spec.kind is FieldKind.NUMERIC:
        return (block[:, 0].astype(np.float64) * spec.scale + spec.center).tolist()
    if spec.kind is FieldKind.BOOLEAN:
        return (block[:, 0] >= 0.5).tolist()
    labels = [*spec.categories, "(other)"]
    return [labels[i] for i in np.argmax(block, axis=1)]
