"""Two prototype changes to the consumer, measured against the shipped one in alternating rounds.

Neither is in the service; this script keeps the measurement behind docs/benchmarks.md
rerunnable. On one topic (the records of bench/stream.py), each round runs, with fresh consumer
groups and databases:

* raw: the raw ceiling of bench/stream.py (poll, orjson, commit per poll);
* shipped: latentwatch's consumer as it is;
* typed: records decoded straight into typed structs by msgspec (one pass: no dicts, no
  `numeric_block`), when every field of the model is numeric and every message of the batch
  decodes; anything else takes the shipped path. It still checks UTF-8 (msgspec skips unknown
  fields without) and falls back on records that hold none of the model's fields;
* deferred: the database write and the offset commit wait while polls come back full, up to
  10,000 records or 0.25 s, so one transaction and one commit cover several polls;
* typed+deferred: both.

These are measurements, not designs: the deferred loop ignores rebalances (a partition revoked
with records pending would be committed by its new owner only after redelivery), and the typed
path does not reproduce every verdict of the shipped one on adversarial input.

    python bench/stream_variants.py [--records 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from itertools import chain
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson
import torch
from machine import describe
from stream import (
    MAX_RECORDS,
    PARTITIONS,
    end_to_end_rate,
    produce,
    raw_ceiling,
    records,
    wait_consumed,
)

import streams.consumer as consumer_module
from detector import artifact
from detector.detector import Detector
from detector.schema import SchemaOptions
from latentwatch.embedded import EmbeddedBroker
from latentwatch.service import BackgroundConsumer, ConsumeSettings
from streams.consumer import ConsumerLoop
from streams.kafka import ensure_topics
from streams.scoring import TopicBatch, flagged_records, score_messages

FLUSH_RECORDS = 10_000
FLUSH_INTERVAL_S = 0.25
_decoders: dict[int, Any] = {}


def typed_score_messages(
    topic: str,
    messages: Sequence[Any],
    detector: Detector,
    policy: Any,
    now: datetime,
    *,
    explained_features: int = 5,
) -> TopicBatch:
    """score_messages with msgspec's typed decoding for all-numeric schemas."""
    schema = detector.schema
    names = schema.numeric_names
    plain = not policy.required_fields and not policy.schema_versions
    if len(names) != len(schema.names) or not plain:
        return score_messages(
            topic, messages, detector, policy, now, explained_features=explained_features
        )
    if id(schema) not in _decoders:
        struct = msgspec.defstruct("Record", [(n, float | None, None) for n in names])
        _decoders[id(schema)] = msgspec.json.Decoder(struct)
    decode = _decoders[id(schema)].decode
    values = [m.value for m in messages]
    try:
        if any(v is None or len(v) > policy.max_bytes for v in values):
            raise ValueError("tombstone or oversized")
        b"".join(values).decode("utf-8")  # object boundaries are ASCII: same verdict per value
        structs = [decode(v) for v in values]
    except (msgspec.DecodeError, ValueError):
        return score_messages(
            topic, messages, detector, policy, now, explained_features=explained_features
        )
    flat = list(chain.from_iterable(map(msgspec.structs.astuple, structs)))
    block = np.array(flat, dtype=np.float64).reshape(len(structs), len(names))
    if np.isnan(block).all(axis=1).any():  # {} and all-null look alike: the shipped path says
        return score_messages(
            topic, messages, detector, policy, now, explained_features=explained_features
        )
    scores = detector.score_columns({n: block[:, j] for j, n in enumerate(names)}, len(messages))
    rows = np.flatnonzero(scores.flagged)
    decoded: list[Any] = [None] * len(messages)
    for i in rows.tolist():
        decoded[i] = orjson.loads(values[i])
    flagged = flagged_records(
        detector,
        messages,
        decoded,
        scores,
        rows=rows,
        now=now,
        explained_features=explained_features,
    )
    return TopicBatch(topic, len(messages), [], list(messages), scores, flagged)


def deferred_process(self: ConsumerLoop, messages: Sequence[Any], stop: Any) -> None:
    """ConsumerLoop.process that persists and commits once per FLUSH_RECORDS or
    FLUSH_INTERVAL_S while polls come back full (and at once when one does not)."""
    started = time.perf_counter()
    p = self.__dict__.setdefault("_pending", {"batches": [], "messages": [], "at": started})
    p["batches"] += self.score(messages)
    p["messages"] += messages
    full = len(messages) >= self.settings.max_records
    if full and len(p["messages"]) < FLUSH_RECORDS and started - p["at"] < FLUSH_INTERVAL_S:
        return
    del self.__dict__["_pending"]
    self.persist_and_commit(p["batches"], p["messages"], p["at"], stop)


@contextmanager
def variant(typed: bool, deferred: bool) -> Iterator[None]:
    shipped_process, shipped_score = ConsumerLoop.process, consumer_module.score_messages
    if deferred:
        ConsumerLoop.process = deferred_process  # type: ignore[method-assign]
    if typed:
        consumer_module.score_messages = typed_score_messages
    try:
        yield
    finally:
        ConsumerLoop.process = shipped_process  # type: ignore[method-assign]
        consumer_module.score_messages = shipped_score


VARIANTS: dict[str, tuple[bool, bool]] = {
    "shipped": (False, False),
    "typed": (True, False),
    "deferred": (False, True),
    "typed+deferred": (True, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(describe())
    columns, values = records(args.records)
    rates: dict[str, list[float]] = {"raw": [], **{name: [] for name in VARIANTS}}
    commits: dict[str, list[int]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        workdir = Path(tmp)
        detector = Detector.fit(columns, SchemaOptions(id_column="id"))
        artifact.save(detector, workdir / "model")
        ensure_topics(broker.bootstrap, ["bench"], partitions=PARTITIONS)
        produce(broker.bootstrap, "bench", values)
        for round_ in range(args.rounds):
            rates["raw"].append(
                raw_ceiling(broker.bootstrap, "bench", args.records, MAX_RECORDS, f"raw-{round_}")
            )
            for name, (typed, deferred) in VARIANTS.items():
                settings = ConsumeSettings(
                    model=workdir / "model",
                    bootstrap=broker.bootstrap,
                    topics=("bench",),
                    db=f"sqlite:///{workdir / f'{name}-{round_}.db'}",
                    group=f"{name}-{round_}",
                    metrics_port=None,
                )
                with variant(typed, deferred), BackgroundConsumer(settings) as consumer:
                    wait_consumed(consumer, args.records, timeout_s=300)
                rates[name].append(end_to_end_rate(consumer.reports))
                commits[name].append(len(consumer.reports))
            print(
                f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()),
                flush=True,
            )

    def ratio(name: str) -> list[float]:
        return [e / r for e, r in zip(rates[name], rates["raw"], strict=True)]

    print(f"\n{args.records:,} records on {PARTITIONS} partitions, {args.rounds} rounds, medians")
    print("\n| consumer | records/s | ratio to the raw ceiling (each round) | commits |")
    print("|---|---|---|---|")
    print(f"| raw ceiling | {statistics.median(rates['raw']):,.0f} | 1 | one per poll |")
    for name in VARIANTS:
        each = ", ".join(f"{x:.2f}" for x in ratio(name))
        print(
            f"| {name} | {statistics.median(rates[name]):,.0f} | "
            f"{statistics.median(ratio(name)):.2f} ({each}) | "
            f"{statistics.median(commits[name]):.0f} |"
        )


if __name__ == "__main__":
    main()
