"""The fast path of decoding a micro-batch: each JSON value straight into a typed struct of the
model's fields (msgspec), with no dict per record and no second pass to take the fields out of
it. Decoding and field extraction are the consumer's largest cost beyond the raw Kafka loop
(docs/benchmarks.md).

The reference path is :func:`streams.messages.decode_all` (orjson), then the type checks of
:func:`detector.encoding.encode_records`; this one gives a batch the same verdict or none. It
takes a batch only when every message is a JSON object within the size limit whose fields are
all known (the features; the id, timestamp, excluded and dropped columns of the training data;
fields it has learnt from batches the reference path judged), with values of the types the
schema accepts (:data:`detector.encoding.ACCEPTED`), and at least one feature present. Anything
else returns None and the caller takes the reference path, which finds out which message is bad
and why. Because unknown fields are refused rather than skipped, msgspec decodes every value of
a batch it takes in full, and its checks (UTF-8, surrogates, number range, nesting depth) are
at least as strict as orjson's; ``tests/streams/test_streams_typed.py`` checks the equivalence
on generated input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from operator import itemgetter
from typing import Annotated, Any, Union, cast

import msgspec
import numpy as np
from msgspec.structs import astuple

from detector.encoding import ACCEPTED
from detector.schema import Column, Columns, FieldKind, Schema

# orjson keeps integers as int within 64 bits; msgspec refuses bounds beyond int64, so a larger
# one takes the reference path.
_INT64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


def struct_type(kind: FieldKind) -> Any:
    """What the schema accepts for a field of this kind (:data:`detector.encoding.ACCEPTED`),
    spelt for msgspec: its ``float`` takes JSON integers too (as floats) and refuses booleans;
    an ``int`` where no float is accepted is bounded to int64."""
    accepted = ACCEPTED[kind].types
    spelt: list[Any] = [t for t in (float, str, bool, type(None)) if t in accepted]
    if int in accepted and float not in accepted:
        spelt.append(_INT64)
    return Union[tuple(spelt)]  # noqa: UP007  (a union built at run time)


def known_columns(schema: Schema) -> tuple[str, ...]:
    """Columns of the training data that are not features: a record may carry them."""
    features = set(schema.names)
    named = [schema.id_column, schema.timestamp_column, *schema.excluded]
    named += [name for name, _ in schema.dropped]
    return tuple(dict.fromkeys(n for n in named if n is not None and n not in features))


# Fields a stream's records carry beyond those of the training data (a producer that added a
# column) are learnt, up to this many, so that they do not send every batch down the reference
# path.
MAX_LEARNT_FIELDS = 256


class TypedDecoder:
    """Decodes the values of a micro-batch into the model's columns, or declines the batch."""

    def __init__(self, schema: Schema) -> None:
        numeric = [f for f in schema.fields if f.kind is FieldKind.NUMERIC]
        self._fields = (*numeric, *(f for f in schema.fields if f.kind is not FieldKind.NUMERIC))
        self._n_numeric = len(numeric)
        self._others = known_columns(schema)
        self._known = {*self._others, *schema.names}
        self._learnt = 0
        self._build()

    def _build(self) -> None:
        """The struct type: the other columns first (any JSON value, decoded in full), then the
        numeric features, then the rest. Fields are named by position and renamed to their
        keys, which need not be Python identifiers ("mean radius")."""
        keys = [*self._others, *(f.name for f in self._fields)]
        types = [Any] * len(self._others) + [struct_type(f.kind) for f in self._fields]
        struct = msgspec.defstruct(
            "Record",
            [(f"f{i}", kind, None) for i, kind in enumerate(types)],
            rename={f"f{i}": key for i, key in enumerate(keys)},
            forbid_unknown_fields=True,
            gc=False,  # short-lived and never in a cycle
        )
        self._decode = msgspec.json.Decoder(struct).decode
        first = len(self._others)
        self._numbers = itemgetter(slice(first, first + self._n_numeric))
        self._rest = itemgetter(slice(first + self._n_numeric, None))

    def learn(self, records: Sequence[Mapping[str, object]]) -> None:
        """Take the fields that these records (of a batch the reference path judged) carry beyond
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
        when the reference path must judge the batch."""
        if not values or not self._fields or None in values:
            return None
        payloads = cast(Sequence[bytes], values)
        if max(map(len, payloads)) > max_bytes:
            return None
        try:
            structs = list(map(self._decode, payloads))
        except msgspec.DecodeError:  # not JSON, not an object, a type or field not accepted
            return None
        n, numeric = len(structs), self._fields[: self._n_numeric]
        block = self._number_block(structs).reshape(n, len(numeric))
        present = ~np.isnan(block).all(axis=1)
        columns: dict[str, Column] = {f.name: block[:, j] for j, f in enumerate(numeric)}
        rest = self._fields[len(numeric) :]
        by_field = zip(*map(self._rest, map(astuple, structs)), strict=True) if rest else ()
        for spec, field_values in zip(rest, by_field, strict=True):
            present |= np.fromiter((v is not None for v in field_values), bool, count=n)
            columns[spec.name] = list(field_values)
        return columns if present.all() else None  # else a record with none of the features

    def _number_block(self, structs: list[Any]) -> np.ndarray:
        """The numeric features of all records, flat: ``fromiter`` takes the floats in one
        pass; a null (None) makes it fail, and ``np.array`` then turns nulls into nan."""
        numbers = chain.from_iterable(map(self._numbers, map(astuple, structs)))
        try:
            return np.fromiter(numbers, dtype=np.float64, count=len(structs) * self._n_numeric)
        except TypeError:
            numbers = chain.from_iterable(map(self._numbers, map(astuple, structs)))
            return np.array(list(numbers), dtype=np.float64)
