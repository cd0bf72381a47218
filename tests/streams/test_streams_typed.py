"""The typed fast path (streams/typed.py) gives every batch the orjson path's verdict or none:
scoring a batch with it and without it must give the same rejections, scores and flagged rows,
on generated JSON that is valid, subtly invalid (escapes, surrogates, number ranges, duplicate
keys, invalid UTF-8, nesting) or broken; and it does take ordinary batches."""

from __future__ import annotations

import random
from dataclasses import fields
from datetime import UTC, datetime

import msgspec
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.detector import Detector, DetectorConfig
from detector.encoding import ACCEPTED
from detector.schema import FieldKind, SchemaOptions
from detector.training import TrainingConfig
from streams.messages import DecodePolicy, PlainMessage
from streams.scoring import TopicBatch, score_messages
from streams.typed import MAX_LEARNT_FIELDS, TypedDecoder, known_columns, struct_type

COLUMNS = ("amount", "qty", "express", "country", "order_id", "ts", "label", "note")
NOW = datetime(2026, 12, 1, tzinfo=UTC)
POLICY = DecodePolicy(max_bytes=400)
# Two models: numbers, a boolean and a category; and numbers only (the rest excluded), which
# takes the typed path's all-numeric branch. The id, timestamp, excluded columns and "note"
# (free text, dropped as an identifier) are columns that are not features.
SCHEMAS = {
    "mixed": SchemaOptions(id_column="order_id", timestamp_column="ts", exclude=("label",)),
    "numeric": SchemaOptions(
        id_column="order_id", timestamp_column="ts", exclude=("label", "express", "country")
    ),
}


def reference_columns(n: int = 240) -> dict[str, list[object]]:
    rng = random.Random(0)
    return {
        "order_id": [f"o{i}" for i in range(n)],
        "ts": [1_790_000_000 + i for i in range(n)],
        "label": [0] * n,
        "note": [f"free text {i}" for i in range(n)],
        "amount": [rng.lognormvariate(3, 0.5) if i % 10 else None for i in range(n)],
        "qty": [rng.randint(1, 5) for _ in range(n)],
        "express": [rng.random() < 0.3 for _ in range(n)],
        "country": [rng.choice(["de", "fr", "nl"]) for _ in range(n)],
    }


def fit(options: SchemaOptions) -> Detector:
    config = DetectorConfig(training=TrainingConfig(max_steps=300, min_steps=100, patience=3))
    return Detector.fit(reference_columns(), options, config)


@pytest.fixture(scope="module")
def mixed() -> Detector:
    return fit(SCHEMAS["mixed"])


@pytest.fixture(scope="module")
def numeric() -> Detector:
    return fit(SCHEMAS["numeric"])


@pytest.fixture(params=sorted(SCHEMAS))
def detector(request: pytest.FixtureRequest) -> Detector:
    model: Detector = request.getfixturevalue(request.param)
    return model


def batch_of(values: list[bytes | None]) -> list[PlainMessage]:
    return [PlainMessage("t", 0, i, 1_790_000_000_000 + i, None, v) for i, v in enumerate(values)]


def score(detector: Detector, values: list[bytes | None], typed: bool | TypedDecoder) -> TopicBatch:
    """Scored with a new typed decoder (True), a given one, or orjson only (False)."""
    decoder = TypedDecoder(detector.schema) if typed is True else typed or None
    return score_messages("t", batch_of(values), detector, POLICY, NOW, typed=decoder)


def assert_same(a: TopicBatch, b: TopicBatch) -> None:
    assert [(r.message.offset, r.reason, r.detail) for r in a.rejections] == [
        (r.message.offset, r.reason, r.detail) for r in b.rejections
    ]
    assert [m.offset for m in a.scored_messages] == [m.offset for m in b.scored_messages]
    assert (a.scores is None) == (b.scores is None)
    if a.scores is not None and b.scores is not None:
        for f in fields(a.scores):
            x, y = getattr(a.scores, f.name), getattr(b.scores, f.name)
            if isinstance(x, np.ndarray):
                assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f.name
            else:
                assert x == y, f.name
    assert a.flagged == b.flagged


def test_the_schema_knows_the_columns_that_are_not_features(detector: Detector) -> None:
    features = set(detector.schema.names)
    assert features in ({"amount", "qty", "express", "country"}, {"amount", "qty"})
    assert set(known_columns(detector.schema)) == set(COLUMNS) - features


@pytest.mark.parametrize("kind", list(FieldKind))
def test_the_struct_types_take_what_the_encoder_accepts(kind: FieldKind) -> None:
    """Derived from detector.encoding.ACCEPTED: the same JSON values pass, but for integers
    beyond int64 where no float is accepted, which msgspec leaves to the reference path."""
    decode = msgspec.json.Decoder(struct_type(kind)).decode
    for raw in (b"1", b"-0", b"1.5", b"1e300", b'"a"', b"true", b"null", b"[1]", b"{}"):
        value = orjson.loads(raw)
        try:
            decoded = decode(raw)
        except msgspec.ValidationError:
            assert type(value) not in ACCEPTED[kind].types, raw
        else:
            assert type(value) in ACCEPTED[kind].types, raw
            assert decoded == value
    if float not in ACCEPTED[kind].types and int in ACCEPTED[kind].types:
        decode(b"9223372036854775807")
        with pytest.raises(msgspec.ValidationError):  # beyond int64
            decode(b"9223372036854775808")


def ordinary(n: int) -> list[bytes | None]:
    columns = reference_columns(n)
    return [orjson.dumps({k: v[i] for k, v in columns.items()}) for i in range(n)]


def test_ordinary_batches_take_the_typed_path_and_score_the_same(detector: Detector) -> None:
    values = ordinary(50)
    values[3] = orjson.dumps({"amount": 10_000.0, "qty": 40, "express": True, "country": "xx"})
    values[4] = orjson.dumps({"amount": None, "qty": 2, "country": 7})  # null, absent, an int
    decoder = TypedDecoder(detector.schema)
    assert decoder.columns(values, POLICY.max_bytes) is not None
    typed, shipped = score(detector, values, True), score(detector, values, False)
    assert typed.flagged, "the far-out record should be flagged"
    assert_same(typed, shipped)


@pytest.mark.parametrize(
    "bad",
    [
        b'{"express": 1, "amount": 1}',  # a number where a boolean belongs
        b'{"country": 1.5, "amount": 1}',  # a fraction for a category
        b'{"country": 18446744073709551615, "amount": 1}',  # beyond int64 (orjson keeps it)
        b'{"express": null, "country": null}',  # none of the features
    ],
)
def test_a_batch_the_mixed_model_cannot_take_is_left_to_the_orjson_path(
    mixed: Detector, bad: bytes
) -> None:
    assert_left_to_orjson(mixed, bad)


@pytest.mark.parametrize(
    "bad",
    [
        b'{"amount": 1, "coupon": "x"}',  # a field the model never saw
        b'{"amount": 1, "coupon": 1e999}',  # ... holding a number beyond float64
        b'{"amount": 1, "coupon": "\xff"}',  # ... or text that is not UTF-8
        b'{"amount": "12"}',  # a string where a number belongs
        b'{"amount": true}',  # a boolean where a number belongs
        b'{"amount": 1e400}',  # a number beyond float64
        b'{"order_id": "o1"}',  # none of the features
        b'{"amount": null, "qty": null}',  # none of the features either (both null)
        b'{"order_id": "\xff", "amount": 1}',  # not UTF-8, in a column that is not a feature
        b'{"order_id": [1e999], "amount": 1}',  # a number beyond float64, nested
        b"[1, 2]",
        b"not json",
        None,
        b'{"amount": 1, "note": "' + b"x" * 500 + b'"}',  # beyond the size limit
    ],
)
def test_a_batch_with_anything_unusual_is_left_to_the_orjson_path(
    detector: Detector, bad: bytes | None
) -> None:
    assert_left_to_orjson(detector, bad)


def assert_left_to_orjson(detector: Detector, bad: bytes | None) -> None:
    values = [*ordinary(5), bad]
    assert TypedDecoder(detector.schema).columns(values, POLICY.max_bytes) is None
    assert_same(score(detector, values, True), score(detector, values, False))


def test_fields_a_stream_adds_are_learnt_and_then_decoded_in_full(detector: Detector) -> None:
    decoder = TypedDecoder(detector.schema)
    values = [orjson.dumps({**orjson.loads(v or b""), "coupon": "x"}) for v in ordinary(20)]
    assert decoder.columns(values, POLICY.max_bytes) is None  # unknown: the orjson path
    assert_same(score(detector, values, decoder), score(detector, values, False))
    assert decoder.columns(values, POLICY.max_bytes) is not None  # learnt
    assert_same(score(detector, values, decoder), score(detector, values, False))
    # a learnt field is decoded in full, like the columns of the training data
    bad = [*values, b'{"amount": 1, "coupon": [1e999]}']
    assert decoder.columns(bad, POLICY.max_bytes) is None
    assert_same(score(detector, bad, decoder), score(detector, bad, False))


def test_at_most_so_many_fields_are_learnt(numeric: Detector) -> None:
    decoder = TypedDecoder(numeric.schema)
    many = [orjson.dumps({"amount": 1.0, f"k{i}": i}) for i in range(MAX_LEARNT_FIELDS + 50)]
    score(numeric, many, decoder)
    taken = [decoder.columns([v], POLICY.max_bytes) is not None for v in many]
    assert sum(taken) == MAX_LEARNT_FIELDS


def test_field_names_need_not_be_python_identifiers() -> None:
    columns = reference_columns()
    renamed = {
        "mean amount": columns["amount"],
        "class": columns["qty"],
        "order id": columns["order_id"],
    }
    model = Detector.fit(
        renamed,
        SchemaOptions(id_column="order id"),
        DetectorConfig(training=TrainingConfig(max_steps=200, min_steps=100, patience=3)),
    )
    values: list[bytes | None] = [
        orjson.dumps({k: v[i] for k, v in renamed.items()}) for i in range(30)
    ]
    decoder = TypedDecoder(model.schema)
    assert decoder.columns(values, POLICY.max_bytes) is not None
    assert decoder.columns([b'{"f0": 1.0, "f1": 2}'], POLICY.max_bytes) is None
    assert_same(score(model, values, decoder), score(model, values, False))


# Generated JSON text, built by hand so that it can hold what serializers never write.
_PLAIN_NUMBERS = st.one_of(st.integers(-(10**6), 10**6).map(str), st.floats(-1e6, 1e6).map(repr))
_EDGE_NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(
        [
            "1e400",
            "-1E400",
            "1e-400",
            "2.5E+3",
            "-0",
            "0.1e1",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775809",
            "18446744073709551616",
            "1" + "0" * 400,
            "01",
            "1.",
            "-",
            "NaN",
            "Infinity",
        ]
    ),
)
_NUMBERS = st.one_of(_PLAIN_NUMBERS, _EDGE_NUMBERS)
_STRINGS = st.one_of(
    st.sampled_from(['"de"', '"fr"', '"xx"', '""']),
    st.text(max_size=8).map(lambda t: orjson.dumps(t).decode()),
    st.sampled_from(['"\\ud800"', '"\\udc00"', '"\\ud83d\\ude00"', '"\\u0041"', '"\\q"', '"a\tb"']),
)
_SCALARS = st.one_of(_NUMBERS, _STRINGS, st.sampled_from(["true", "false", "null"]))


def _key(name: str) -> st.SearchStrategy[str]:
    """The name as JSON text, sometimes with its first letter escaped (the same key)."""
    return st.sampled_from([f'"{name}"', f'"{name}"', f'"\\u{ord(name[0]):04x}{name[1:]}"'])


def _object(pairs: st.SearchStrategy[tuple[str, str]], max_size: int) -> st.SearchStrategy[str]:
    return st.lists(pairs, max_size=max_size).map(
        lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}"
    )


_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"),
        _object(st.tuples(st.sampled_from(COLUMNS).flatmap(_key), children), 3),
    ),
    max_leaves=6,
)
# Records that are right but for a twist or two, so that the typed path takes many of them and
# the edge cases meet both decoders there: a field no model knows holding anything, a feature
# holding any scalar (edge numbers, big integers, strings), a column that is not a feature
# holding anything, a key given twice.
_RIGHT = {
    "amount": st.one_of(_PLAIN_NUMBERS, st.just("null")),
    "qty": st.one_of(_PLAIN_NUMBERS, st.just("null")),
    "express": st.sampled_from(["true", "false", "null"]),
    "country": st.one_of(st.sampled_from(['"de"', '"fr"', '"xx"', "7", "null"])),
}
_RIGHT_PAIRS = st.sampled_from(sorted(_RIGHT)).flatmap(
    lambda name: st.tuples(_key(name), _RIGHT[name])
)
_TWISTS = st.one_of(
    st.tuples(_key("extra"), _VALUES),
    st.tuples(st.sampled_from(sorted(_RIGHT)).flatmap(_key), _SCALARS),
    st.tuples(st.sampled_from(COLUMNS).flatmap(_key), _VALUES),
)
_RECORDS = st.tuples(
    st.lists(_RIGHT_PAIRS, min_size=1, max_size=6), st.lists(_TWISTS, max_size=2), st.randoms()
).map(
    lambda t: (
        "{"
        + ",".join(f"{k}:{v}" for k, v in sorted(t[0] + t[1], key=lambda _: t[2].random()))
        + "}"
    )
)


@st.composite
def _message_values(draw: st.DrawFn) -> bytes | None:
    text = draw(st.one_of(_RECORDS, _RECORDS, _RECORDS, _VALUES, st.just("[" * 1100 + "]" * 1100)))
    raw = bytearray(text.encode())
    how = draw(st.sampled_from(["as is"] * 12 + ["insert", "cut", "bom", "tombstone"]))
    if how == "insert":
        at = draw(st.integers(0, len(raw)))
        raw[at:at] = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b" ", b",", b"\x00"]))
    elif how == "cut" and raw:
        del raw[draw(st.integers(0, len(raw) - 1)) :]
    elif how == "bom":
        raw[:0] = b"\xef\xbb\xbf"
    elif how == "tombstone":
        return None
    return bytes(raw)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=_message_values())
def test_typed_and_orjson_paths_agree_on_each_generated_value(
    detector: Detector, value: bytes | None
) -> None:
    """A value with two ordinary records: where one decoder's leniency would show at once."""
    values = [*ordinary(2), value]
    assert_same(score(detector, values, True), score(detector, values, False))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(values=st.lists(_message_values(), min_size=1, max_size=5))
def test_typed_and_orjson_paths_agree_on_generated_batches(
    detector: Detector, values: list[bytes | None]
) -> None:
    """Twice with the same decoder: the second time with what it learnt from the first."""
    decoder = TypedDecoder(detector.schema)
    shipped = score(detector, values, False)
    assert_same(score(detector, values, decoder), shipped)
    assert_same(score(detector, values, decoder), shipped)
