"""Schema inference and feature encoding: types, missing values, bad values, unknown fields."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from detector.encoding import (
    CLIP_SIGMAS,
    decode_field,
    encode_columns,
    encode_records,
    records_to_columns,
)
from detector.errors import DataError
from detector.schema import FieldKind, Schema, SchemaOptions, infer_schema


def _schema(**columns: list[object]) -> Schema:
    return infer_schema(columns, SchemaOptions())


def test_infers_kinds_from_values() -> None:
    schema = infer_schema(
        {
            "amount": [1.5, 2.0, 3, None],
            "region": ["eu", "us", "eu", "eu"],
            "express": [True, False, None, True],
            "label": [0, 1, 0, 0],
            "id": ["a", "b", "c", "d"],
        },
        SchemaOptions(id_column="id", exclude=("label",)),
    )
    kinds = {f.name: f.kind for f in schema.fields}
    assert kinds == {
        "amount": FieldKind.NUMERIC,
        "region": FieldKind.CATEGORICAL,
        "express": FieldKind.BOOLEAN,
    }
    assert schema.id_column == "id"
    assert schema.excluded == ("label",)
    assert schema.fields[0].missing_rate == pytest.approx(0.25)


def test_numeric_standardisation_is_robust_to_outliers() -> None:
    values = [float(v) for v in np.random.default_rng(0).normal(100.0, 5.0, 2000)]
    spread_before = infer_schema({"x": values}, SchemaOptions()).fields[0].scale
    polluted = values + [1e9] * 5  # 0.25 % absurd values barely move the 1-99 % range
    field = infer_schema({"x": polluted}, SchemaOptions()).fields[0]
    assert field.center == pytest.approx(100.0, abs=0.5)
    assert field.scale == pytest.approx(spread_before, rel=0.05)
    assert field.scale == pytest.approx(5.0, rel=0.15)  # sigma-equivalent units


def test_extreme_values_are_clipped() -> None:
    schema = _schema(x=[float(v) for v in range(100)])
    batch = encode_records(schema, [{"x": 1e300}, {"x": -1e300}])
    assert batch.matrix[:, 0].tolist() == [CLIP_SIGMAS, -CLIP_SIGMAS]


def test_rare_categories_share_an_other_bucket() -> None:
    values = ["a"] * 500 + ["b"] * 495 + ["rare"] * 5  # rare: 0.5 % < 1 %
    field = _schema(c=values).fields[0]
    assert field.categories == ("a", "b")
    batch = encode_records(_schema(c=values), [{"c": "a"}, {"c": "rare"}, {"c": "never-seen"}])
    assert batch.matrix.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]


def test_identifier_like_strings_are_dropped_with_a_reason() -> None:
    schema = _schema(x=[1.0, 2.0] * 50, uuid=[f"u{i}" for i in range(100)])
    assert schema.names == ("x",)
    assert schema.dropped[0][0] == "uuid"
    assert "identifier" in schema.dropped[0][1]


def test_missing_and_non_finite_values_are_imputed_and_flagged() -> None:
    schema = _schema(x=[0.0, 10.0, 20.0, 30.0, 40.0], flag=[True, True, False, True, True])
    batch = encode_records(
        schema, [{"x": None, "flag": None}, {"x": math.nan}, {"x": math.inf}, {}, {"x": 20.0}]
    )
    assert batch.valid.all()
    assert batch.missing.tolist() == [
        [True, True],
        [True, True],
        [True, True],
        [True, True],
        [False, True],
    ]
    assert batch.matrix[0, 0] == 0.0  # the median, in standardised units
    assert batch.matrix[0, 1] == pytest.approx(0.8)  # the reference share of True


def test_missing_category_is_imputed_with_reference_shares() -> None:
    schema = _schema(c=["a"] * 75 + ["b"] * 25)
    batch = encode_records(schema, [{"c": None}])
    assert batch.matrix[0].tolist() == pytest.approx([0.75, 0.25, 0.0])
    assert batch.missing[0, 0]


def test_wrong_types_give_a_reason_and_the_rest_of_the_batch_scores() -> None:
    schema = _schema(x=[1.0, 2.0, 3.0], c=["a", "b", "a"], b=[True, False, True])
    batch = encode_records(
        schema,
        [
            {"x": "1.5", "c": "a", "b": True},
            {"x": 1.0, "c": ["a"], "b": True},
            {"x": 1.0, "c": "a", "b": "yes"},
            {"x": True, "c": "a", "b": False},
            {"x": 2.0, "c": "b", "b": False},
            "not a record",
        ],
    )
    assert batch.valid.tolist() == [False, False, False, False, True, False]
    assert batch.reasons[0] == "field 'x': expected a number, got string"
    assert batch.reasons[1] == "field 'c': expected a string, got array"
    assert batch.reasons[2] == "field 'b': expected a boolean, got string"
    assert batch.reasons[3] == "field 'x': expected a number, got boolean"
    assert batch.reasons[4] is None
    assert batch.reasons[5] == "record must be an object, got string"
    assert not batch.matrix[~batch.valid].any()


def _clean_records(n: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(3)
    return [
        {"x": float(v), "y": int(w), "c": "ab"[i % 2], "z": None if i % 5 == 0 else float(v)}
        for i, (v, w) in enumerate(zip(rng.normal(size=n), rng.integers(0, 9, size=n), strict=True))
    ]


def test_records_encode_like_the_numeric_columns_the_typed_decoder_gives() -> None:
    records: list[object] = list(_clean_records(50))
    schema = _schema(**{n: [r[n] for r in records] for n in ("x", "y", "c", "z")})  # type: ignore[index]
    assert schema.numeric_names == ("x", "y", "z")
    numeric = {
        n: np.array([r[n] for r in records], dtype=np.float64)  # type: ignore[index]
        for n in schema.numeric_names
    }
    columns = encode_columns(schema, {**numeric, "c": [r["c"] for r in records]}, 50)  # type: ignore[index]
    batch = encode_records(schema, records)
    assert np.array_equal(batch.matrix, columns.matrix)
    assert np.array_equal(batch.missing, columns.missing)
    assert batch.reasons == columns.reasons
    assert batch.missing[0, schema.names.index("z")]


_UNUSUAL_RECORDS: list[object] = [
    {"x": "1.5", "y": 1, "c": "a", "z": 1.0},  # a numeric string
    {"x": True, "y": 1, "c": "a", "z": 1.0},  # a boolean where a number belongs
    {"y": 1, "c": "a", "z": 1.0},  # a field absent
    {"x": 2**2000, "y": 1, "c": "a", "z": 1.0},  # beyond float64
    "not a record",
]


@pytest.mark.parametrize("fields", [("x", "y", "z"), ("x", "y", "c", "z")])
@pytest.mark.parametrize("unusual", [None, *_UNUSUAL_RECORDS])
def test_records_encode_as_their_fields_listed_one_by_one(
    fields: tuple[str, ...], unusual: object
) -> None:
    """Numeric fields are read from one row-major block when every record is a dict holding
    numbers or nulls in all of them; the encoding must be, value for value, that of the lists
    of each field's values, and a batch with one record the block cannot take must come out as
    the lists give it (reasons included)."""
    records: list[dict[str, object]] = [{k: r[k] for k in fields} for r in _clean_records(30)]
    schema = _schema(**{n: [r[n] for r in records] for n in fields})
    edge_values = [math.nan, math.inf, -math.inf, 2**60, -0.0, None, 0, 1e300]
    for i, value in enumerate(edge_values):
        records[i]["x"] = value
        records[i + 10]["z"] = value
    batch_records: list[object] = list(records)
    if unusual is not None:
        batch_records[20] = unusual
    listed = {
        n: [r.get(n) if isinstance(r, dict) else None for r in batch_records] for n in schema.names
    }
    reasons: list[str | None] = [
        None if isinstance(r, dict) else "record must be an object, got string"
        for r in batch_records
    ]
    expected = encode_columns(schema, listed, len(batch_records), reasons)
    batch = encode_records(schema, batch_records)
    assert isinstance(records_to_columns(schema, batch_records)[0]["x"], np.ndarray) is (
        unusual is None
    )
    assert np.array_equal(batch.matrix, expected.matrix)
    assert np.array_equal(batch.missing, expected.missing)
    assert np.array_equal(batch.valid, expected.valid)
    assert batch.reasons == expected.reasons
    assert batch.missing[:3, schema.names.index("x")].all()  # nan and infinities are missing


@pytest.mark.parametrize("bad", _UNUSUAL_RECORDS)
def test_an_unusual_record_leaves_the_others_encoded_as_without_it(bad: object) -> None:
    records: list[object] = list(_clean_records(20))
    schema = _schema(**{n: [r[n] for r in records] for n in ("x", "y", "c", "z")})  # type: ignore[index]
    clean = encode_records(schema, records)
    records[7] = bad
    batch = encode_records(schema, records)
    others = np.arange(20) != 7
    assert np.array_equal(batch.matrix[others], clean.matrix[others])
    assert np.array_equal(batch.missing[others], clean.missing[others])
    assert batch.reasons[:7] + batch.reasons[8:] == (None,) * 19
    assert batch.valid.sum() >= 19


def test_an_integer_beyond_the_float_range_is_a_wrong_value_not_a_crash() -> None:
    schema = _schema(x=[1.0, 2.0, 3.0], c=["a", "b", "a"])
    batch = encode_records(schema, [{"x": 10**400, "c": 10**400}, {"x": -(10**400)}, {"x": 2}])
    assert batch.valid.tolist() == [False, False, True]
    assert batch.reasons[0] == "field 'x': expected a number, got a number beyond the float range"


def test_unknown_fields_are_ignored_and_absent_columns_are_missing() -> None:
    schema = _schema(x=[1.0, 2.0, 3.0], y=[4.0, 5.0, 6.0])
    with_extra = encode_records(schema, [{"x": 2.0, "y": 5.0, "surprise": "ignored"}])
    plain = encode_records(schema, [{"x": 2.0, "y": 5.0}])
    assert np.array_equal(with_extra.matrix, plain.matrix)
    columnar = encode_columns(schema, {"x": [2.0]}, 1)
    assert columnar.missing.tolist() == [[False, True]]


def test_numpy_columns_and_lists_encode_identically() -> None:
    values = [0.5, 1.5, None, 3.0]
    schema = _schema(x=values)
    as_array = encode_columns(schema, {"x": np.array([0.5, 1.5, np.nan, 3.0])}, 4)
    as_list = encode_columns(schema, {"x": values}, 4)
    assert np.array_equal(as_array.matrix, as_list.matrix)
    assert np.array_equal(as_array.missing, as_list.missing)


def test_an_all_numeric_matrix_encodes_like_the_per_field_path() -> None:
    """Numeric arrays need no per-value check; lists are checked value by value. Both must give
    the same matrix and missing flags: nan, infinities, clipped extremes, an integer column, an
    absent column."""
    rng = np.random.default_rng(3)
    schema = _schema(
        x=rng.normal(10, 2, 40).tolist(), y=rng.normal(0, 1, 40).tolist(), k=list(range(40))
    )
    x = np.array([1.0, np.nan, np.inf, -np.inf, 1e9, -1e9, 10.5, 0.0])
    y = np.array([0.1, 0.2, np.nan, 0.4, 0.5, 0.6, 0.7, 0.8])
    k = np.array([0, 5, 39, 400, -3, 7, 8, 9], dtype=np.int64)
    fast = encode_columns(schema, {"x": x, "y": y, "k": k}, 8)
    y_list = [None if np.isnan(v) else v for v in y.tolist()]
    general = encode_columns(schema, {"x": x.tolist(), "y": y_list, "k": k.tolist()}, 8)
    assert np.array_equal(fast.matrix, general.matrix)
    assert np.array_equal(fast.missing, general.missing)
    assert fast.reasons == general.reasons and fast.valid.all()
    assert fast.missing[:, 0].tolist() == [False, True, True, True, False, False, False, False]
    assert np.abs(fast.matrix).max() == pytest.approx(CLIP_SIGMAS)
    absent = encode_columns(schema, {"x": x, "y": y}, 8)  # k absent: missing
    assert absent.missing[:, 2].all()


def test_decoding_inverts_encoding() -> None:
    schema = _schema(
        x=[10.0, 20.0, 30.0, 40.0], c=["a", "b", "b", "b"], b=[True, False, True, True]
    )
    batch = encode_records(schema, [{"x": 25.0, "c": "a", "b": False}])
    decoded = [
        decode_field(f, batch.matrix[:, s])[0]
        for f, s in zip(schema.fields, schema.slices, strict=True)
    ]
    assert decoded[0] == pytest.approx(25.0)
    assert decoded[1:] == ["a", False]


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({}, "the data has no columns"),
        ({"x": []}, "the data has no rows"),
        ({"x": [None, None]}, "no usable feature columns (x: always missing)"),
        ({"x": [{"a": 1}, {"a": 2}]}, "no usable feature columns (x: mixed or unsupported"),
    ],
)
def test_unusable_data_is_a_clear_error(columns: dict[str, list[object]], message: str) -> None:
    with pytest.raises(DataError, match="^" + re.escape(message)):
        infer_schema(columns, SchemaOptions())


def test_named_option_columns_must_exist() -> None:
    with pytest.raises(DataError, match="column 'label' named in the options is not in the data"):
        infer_schema({"x": [1.0, 2.0]}, SchemaOptions(exclude=("label",)))


def test_schema_round_trips_through_its_dict_form() -> None:
    schema = infer_schema(
        {"x": [1.0, None, 3.0], "c": ["a", "b", "a"], "b": [True, False, True]},
        SchemaOptions(),
    )
    again = Schema.from_dict(schema.to_dict())
    assert again == schema
    assert again.fingerprint() == schema.fingerprint()
