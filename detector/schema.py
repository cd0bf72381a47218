"""The record schema learned from reference data.

A schema says which fields are features and how each one is turned into numbers. It is inferred
once, at training time, stored in the model manifest, and never re-inferred at scoring time: a
record is judged against the schema of the model that scores it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

import numpy as np

from detector.errors import DataError

# A sigma-equivalent spread from the 1st-99th percentile range: robust to the 1 % tails of the
# reference data, yet not blind to features that are constant for half of the rows (digits'
# pixels), where the IQR is zero.
_LOW_Q, _HIGH_Q = 1.0, 99.0
_RANGE_TO_SIGMA = 4.6527  # width of the central 98 % of a standard normal
# Categorical values seen in fewer than this share of rows go to the "other" bucket.
_MIN_CATEGORY_SHARE = 0.01
_MAX_CATEGORIES = 32
# A numeric field with at most this many distinct values has a resolution step (see _step).
_MAX_STEP_VALUES = 64
# A string field with more distinct values than this share of rows is an identifier, not a feature.
_MAX_DISTINCT_SHARE = 0.5


# One column of data: a list of values (any JSON type, None = missing) or a numpy array.
Column = Sequence[object] | np.ndarray
Columns = Mapping[str, Column]


class FieldKind(StrEnum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    BOOLEAN = "boolean"


@dataclass(frozen=True)
class FieldSpec:
    """One feature field. ``center``/``scale`` standardise numbers; ``categories`` are the
    frequent values of a categorical field (rarer ones share an "other" bucket); ``missing_rate``
    is the share of reference rows where the field was absent, null or not finite. For a
    categorical field, ``center`` is unused and the reference shares of the one-hot columns
    (used to impute a missing value) are ``category_shares``."""

    name: str
    kind: FieldKind
    center: float = 0.0
    scale: float = 1.0
    categories: tuple[str, ...] = ()
    category_shares: tuple[float, ...] = ()
    missing_rate: float = 0.0
    # The smallest gap between two distinct reference values, in the field's units (0: none
    # or continuous): integer codes, counts and 0/1 flags cannot be reconstructed more finely.
    step: float = 0.0

    @property
    def width(self) -> int:
        """Number of encoded columns: one value, or a one-hot over categories + "other"."""
        if self.kind is FieldKind.CATEGORICAL:
            return len(self.categories) + 1
        return 1


@dataclass(frozen=True)
class SchemaOptions:
    """What the user told us about the columns that are not features."""

    id_column: str | None = None
    timestamp_column: str | None = None
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Schema:
    fields: tuple[FieldSpec, ...]
    reference_rows: int = 0
    id_column: str | None = None
    timestamp_column: str | None = None
    excluded: tuple[str, ...] = ()
    # Columns seen in training that were dropped automatically, with the reason.
    dropped: tuple[tuple[str, str], ...] = field(default=())

    # Derived once per schema (they sit on the scoring path): cached_property stores into the
    # instance __dict__ directly, which a frozen dataclass allows.
    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @cached_property
    def numeric_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.kind is FieldKind.NUMERIC)

    @cached_property
    def width(self) -> int:
        return sum(f.width for f in self.fields)

    @cached_property
    def slices(self) -> tuple[slice, ...]:
        """The encoded columns of each field, in field order."""
        out, start = [], 0
        for f in self.fields:
            out.append(slice(start, start + f.width))
            start += f.width
        return tuple(out)

    @cached_property
    def categorical_slices(self) -> tuple[slice, ...]:
        """The encoded columns of each categorical field (their one-hot blocks)."""
        return tuple(
            s
            for f, s in zip(self.fields, self.slices, strict=True)
            if f.kind is FieldKind.CATEGORICAL
        )

    @cached_property
    def gaussian_columns(self) -> np.ndarray:
        """Encoded columns priced by a Gaussian residual: numbers and booleans."""
        return np.array(
            [
                s.start
                for f, s in zip(self.fields, self.slices, strict=True)
                if f.kind is not FieldKind.CATEGORICAL
            ],
            dtype=np.intp,
        )

    def column_steps(self) -> np.ndarray:
        """Per encoded column, the resolution step in encoded units (0 for none): a number's
        step over its scale, a boolean's 1, nothing for one-hot columns."""
        out = np.zeros(self.width)
        for f, s in zip(self.fields, self.slices, strict=True):
            if f.kind is FieldKind.NUMERIC:
                out[s.start] = f.step / f.scale
            elif f.kind is FieldKind.BOOLEAN:
                out[s.start] = f.step
        return out

    def missing_probabilities(self) -> np.ndarray:
        """Per field, the smoothed probability of a missing value in reference data: a field
        never missing in n rows gets 1/(n+2), so a missing value there costs about log(n) nats."""
        n = self.reference_rows
        counts = np.array([f.missing_rate * n for f in self.fields])
        return (counts + 1.0) / (n + 2.0)

    def fingerprint(self) -> str:
        """Short hash of field names and kinds: two models with the same fingerprint accept the
        same records."""
        text = json.dumps([[f.name, f.kind.value, list(f.categories)] for f in self.fields])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schema:
        fields = tuple(
            FieldSpec(
                name=f["name"],
                kind=FieldKind(f["kind"]),
                center=float(f["center"]),
                scale=float(f["scale"]),
                categories=tuple(f["categories"]),
                category_shares=tuple(float(x) for x in f["category_shares"]),
                missing_rate=float(f["missing_rate"]),
                step=float(f.get("step", 0.0)),
            )
            for f in data["fields"]
        )
        return cls(
            fields=fields,
            reference_rows=int(data["reference_rows"]),
            id_column=data.get("id_column"),
            timestamp_column=data.get("timestamp_column"),
            excluded=tuple(data.get("excluded", ())),
            dropped=tuple((str(a), str(b)) for a, b in data.get("dropped", ())),
        )


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _step(arr: np.ndarray) -> float:
    """The smallest gap between distinct values when there are few of them (codes, counts,
    flags), else 0: a continuous field has no resolution limit worth pricing."""
    distinct = np.unique(arr)
    if len(distinct) < 2 or len(distinct) > _MAX_STEP_VALUES:
        return 0.0
    return float(np.diff(distinct).min())


def _numeric_field(name: str, arr: np.ndarray, missing_rate: float) -> FieldSpec:
    lo, center, hi = np.percentile(arr, [_LOW_Q, 50.0, _HIGH_Q])
    scale = (hi - lo) / _RANGE_TO_SIGMA
    if not scale > 0:
        scale = float(arr.std())
    step = _step(arr)
    # never finer than the field's step: a rare 0/1 code has a 1-99 % range near zero, and one
    # unit would otherwise sit hundreds of "sigmas" out, clipped
    scale = max(scale, step)
    if not scale > 0:
        scale = 1.0  # a constant field: any change is news
    return FieldSpec(
        name,
        FieldKind.NUMERIC,
        center=float(center),
        scale=float(scale),
        missing_rate=missing_rate,
        step=step,
    )


def _infer_field(name: str, values: Column) -> FieldSpec | str:  # noqa: PLR0911
    """A FieldSpec for one column, or the reason it cannot be a feature."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiu":
        arr = values.astype(np.float64)
        finite = np.isfinite(arr)
        if not finite.any():
            return "always missing"
        return _numeric_field(name, arr[finite], 1.0 - finite.mean())
    present = [v for v in values if not _is_missing(v)]
    missing_rate = 1.0 - len(present) / len(values)
    if not present:
        return "always missing"
    kinds = set(map(type, present))
    if kinds == {bool}:
        share_true = sum(v is True for v in present) / len(present)
        return FieldSpec(
            name, FieldKind.BOOLEAN, center=share_true, missing_rate=missing_rate, step=1.0
        )
    if kinds <= {int, float}:
        return _numeric_field(name, np.asarray(present, dtype=np.float64), missing_rate)
    if kinds <= {str, int}:
        counts = Counter(str(v) for v in present)
        if len(counts) > max(_MAX_DISTINCT_SHARE * len(present), _MAX_CATEGORIES):
            return f"{len(counts)} distinct strings: looks like an identifier"
        frequent = sorted(
            v
            for v, c in counts.most_common(_MAX_CATEGORIES)
            if c >= _MIN_CATEGORY_SHARE * len(present)
        )
        shares = [counts[v] / len(present) for v in frequent]
        shares.append(1.0 - sum(shares))  # the "other" bucket
        return FieldSpec(
            name,
            FieldKind.CATEGORICAL,
            categories=tuple(frequent),
            category_shares=tuple(shares),
            missing_rate=missing_rate,
        )
    names = ", ".join(sorted(t.__name__ for t in kinds))
    return f"mixed or unsupported value types ({names})"


def infer_schema(columns: Columns, options: SchemaOptions) -> Schema:
    """Infer feature fields from reference columns (name -> values, one value per row).

    Numbers are standardised robustly (median, 1-99 % range), strings become categories,
    booleans stay booleans. The id, timestamp and excluded columns are never features.
    """
    if not columns:
        raise DataError("the data has no columns")
    n_rows = len(next(iter(columns.values())))
    if n_rows == 0:
        raise DataError("the data has no rows")
    for named in (options.id_column, options.timestamp_column, *options.exclude):
        if named is not None and named not in columns:
            raise DataError(
                f"column {named!r} named in the options is not in the data "
                f"(columns: {', '.join(sorted(columns)[:20])})"
            )
    skip = {options.id_column, options.timestamp_column, *options.exclude}
    fields: list[FieldSpec] = []
    dropped: list[tuple[str, str]] = []
    for name, values in columns.items():
        if name in skip:
            continue
        spec = _infer_field(name, values)
        if isinstance(spec, str):
            dropped.append((name, spec))
        else:
            fields.append(spec)
    if not fields:
        detail = "; ".join(f"{n}: {why}" for n, why in dropped[:5]) or "all columns were excluded"
        if len(dropped) > 5:
            detail += f"; and {len(dropped) - 5} more"
        raise DataError(f"no usable feature columns ({detail})")
    return Schema(
        fields=tuple(fields),
        reference_rows=n_rows,
        id_column=options.id_column,
        timestamp_column=options.timestamp_column,
        excluded=tuple(options.exclude),
        dropped=tuple(dropped),
    )
