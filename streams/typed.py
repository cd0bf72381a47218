"""The fast path of decoding a micro-batch: each JSON value straight into a typed struct of the
model's fields (msgspec), with no dict per record and no second pass to take the fields out of
it. Decoding and field extraction were the consumer's largest cost beyond the raw Kafka loop
(docs/benchmarks.md).

It gives a batch the verdict of the orjson path (:func:`streams.messages.decode_all`, then the
schema's type checks in :mod:`detector.encoding`) or no verdict at all. It takes a batch only
when every message is a JSON object within the size limit whose fields are all known (the
features; the id, timestamp, excluded and dropped columns of the training data; fields it has
learnt from batches the orjson path judged), with values of the types the schema accepts, and
at least one feature present. Anything else returns None and the
caller takes the orjson path, which finds out which message is bad and why. Because unknown
fields are refused rather than skipped, msgspec decodes every value of a batch it takes in full,
and its checks (UTF-8, surrogates, number range, nesting depth) are at least as strict as
orjson's; ``tests/streams/test_streams_typed.py`` checks the equivalence on generated input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from operator import itemgetter
from typing import Annotated, Any, cast

import msgspec
import numpy as np

from detector.schema import Column, Columns, FieldKind, Schema

# orjson keeps integers as int within 64 bits and the encoder turns an int category into its
# text; msgspec refuses bounds beyond int64, so larger ones take the orjson path.
_INT64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
# What the schema accepts for each kind (detector.encoding._EXPECTED), null included.
_FIELD_TYPES: dict[FieldKind, Any] = {
    FieldKind.NUMERIC: float | None,  # an int is taken as its float, a boolean refused
    FieldKind.BOOLEAN: bool | None,
    FieldKind.CATEGORICAL: str | _INT64 | None,
}


def known_columns(schema: Schema) -> tuple[str, ...]:
    """Columns of the training data that are not features: a record may carry them."""
    features = set(schema.names)
    named = [schema.id_column, schema.timestamp_column, *schema.excluded]
    named += [name for name, _ in schema.dropped]
    return tuple(dict.fromkeys(n for n in named if n is not None and n not in features))


# Fields a stream's records carry beyond those of the training data (a producer that added a
# column) are learnt, up to this many, so that they do not send every batch down the orjson path.
MAX_LEARNT_FIELDS = 256


class TypedDecoder:
    """Decodes the values of a micro-batch into the model's columns, or declines the batch."""

    def __init__(self, schema: Schema) -> None:
        self._fields = schema.fields
        self._all_numeric = all(f.kind is FieldKind.NUMERIC for f in schema.fields)
        self._others = known_columns(schema)
        self._known = {*self._others, *schema.names}
        self._learnt = 0
        self._build()

    def _build(self) -> None:
        """The struct type: the other columns first (any JSON value, decoded in full), then the
        features. Fields are named by position and renamed to their keys, which need not be
        Python identifiers ("mean radius")."""
        keys = [*self._others, *(f.name for f in self._fields)]
        types = [Any] * len(self._others) + [_FIELD_TYPES[f.kind] for f in self._fields]
        struct = msgspec.defstruct(
            "Record",
            [(f"f{i}", kind, None) for i, kind in enumerate(types)],
            rename={f"f{i}": key for i, key in enumerate(keys)},
            forbid_unknown_fields=True,
            gc=False,  # short-lived and never in a cycle
        )
        self._decode = msgspec.json.Decoder(struct).decode
        self._features = itemgetter(slice(len(self._others), None))

    def learn(self, records: Sequence[Mapping[str, object]]) -> None:
        """Take the fields that these records (of a batch the orjson path judged) carry beyond
        the known ones as known from now on, up to MAX_LEARNT_FIELDS in all."""
        unseen = set().union(*records) - self._known
        room = MAX_LEARNT_FIELDS - self._learnt
        if not unseen or room <= 0:
            return
        new = sorted(unseen)[:room]
        self._others = (*self._others, *new)
        self._known.update(new)
        self._learnt += len(new)
        self._build()

    def columns(self, values: Sequence[bytes | None], max_bytes: int) -> Columns | None:
        """The batch's feature columns (numeric ones as float64 arrays, null -> nan), or None
        when the orjson path must judge the batch."""
        if not values or not self._fields or None in values:
            return None
        payloads = cast(Sequence[bytes], values)
        if max(map(len, payloads)) > max_bytes:
            return None
        try:
            structs = list(map(self._decode, payloads))
        except msgspec.DecodeError:  # not JSON, not an object, a type or field not accepted
            return None
        n, width = len(structs), len(self._fields)
        if self._all_numeric:
            block = self._numeric_block(structs).reshape(n, width)
            if np.isnan(block).all(axis=1).any():  # a record with none of the features
                return None
            return {f.name: block[:, j] for j, f in enumerate(self._fields)}
        rows = list(map(self._features, map(msgspec.structs.astuple, structs)))
        columns: dict[str, Column] = {}
        present = np.zeros(n, dtype=bool)
        for spec, values_of_field in zip(self._fields, zip(*rows, strict=True), strict=True):
            if spec.kind is FieldKind.NUMERIC:
                column = np.array(values_of_field, dtype=np.float64)
                present |= ~np.isnan(column)
                columns[spec.name] = column
            else:
                present |= np.fromiter((v is not None for v in values_of_field), bool, count=n)
                columns[spec.name] = list(values_of_field)
        return columns if present.all() else None

    def _numeric_block(self, structs: list[Any]) -> np.ndarray:
        """The feature values of all records, flat: ``fromiter`` takes the floats in one pass;
        a null (None) makes it fail, and ``np.array`` then turns nulls into nan."""
        values = chain.from_iterable(map(self._features, map(msgspec.structs.astuple, structs)))
        try:
            return np.fromiter(values, dtype=np.float64, count=len(structs) * len(self._fields))
        except TypeError:
            rows = map(self._features, map(msgspec.structs.astuple, structs))
            return np.array(list(chain.from_iterable(rows)), dtype=np.float64)
