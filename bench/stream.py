"""Stream throughput, latency and memory, measured side by side on the embedded broker.

One run, one topic of --records JSON records with 30 numeric features (scikit-learn's
breast-cancer set resampled, 5 % malignant):

1. raw ceiling: a kafka-python consumer-group member that polls, decodes each value with
   orjson and commits after every batch, nothing else;
2. latentwatch end to end on the same topic: consume, decode, validate, score, persist flagged
   records to SQLite (or PostgreSQL with --postgres), dead-letter, commit (the consumer in
   this process, like the baseline); then the same with orjson decoding only (without the
   typed fast path of streams/typed.py). Steps 1 and 2 run --rounds times, alternated, each
   on a new consumer group reading the whole topic: the ratio of a round compares two runs a
   few seconds apart, and the median round is reported with the ratios of all;
3. end-to-end latency (message timestamp -> batch committed) at a steady --rate;
4. peak RSS of a `latentwatch consume` process that consumes the whole topic;
5. scale-out: two `latentwatch consume` processes in one group over the same topic.

    python bench/stream.py [--records 200000] [--rate 1000] [--seconds 20] [--rounds 3]
    python bench/stream.py --stages   # where the time goes: microseconds per record per stage
    python bench/stream.py --no-freeze  # without the consumer's garbage-collector freeze
    python bench/stream.py --stages --no-typed-decoding  # the stages of the orjson path
    python bench/stream.py --shadow  # the cost of a shadow model: consumers following the
        # registry with and without one, alternated; microseconds per consumed record
    python bench/stream.py --nearest-normal --malignant 0.025  # the cost of explaining
        # flagged records by their nearest normal record, at about the calibrated 1 % flagged
    python bench/stream.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test
        # flagged records to PostgreSQL: each run gets a throwaway database on that server
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from databases import throwaway_databases
from kafka import KafkaConsumer
from machine import describe
from sklearn.datasets import load_breast_cancer

import latentwatch.service
from detector import artifact
from detector.detector import Detector
from detector.schema import SchemaOptions
from latentwatch.embedded import EmbeddedBroker, free_port
from latentwatch.service import BackgroundConsumer
from latentwatch.settings import ConsumeSettings
from streams.consumer import BatchReport
from streams.kafka import ensure_topics
from streams.replay import replay_to
from streams.settings import KafkaSettings, LoopSettings

PARTITIONS = 4
MAX_RECORDS = 2000


def records(
    n: int, seed: int = 0, malignant: float = 0.05
) -> tuple[dict[str, list[object]], list[bytes]]:
    """Training columns (half the benign rows) and n encoded stream records, a share
    ``malignant`` of them malignant."""
    data = load_breast_cancer()
    names = [f.replace(" ", "_") for f in data.feature_names]
    benign = np.flatnonzero(data.target == 1)
    malignant_rows = np.flatnonzero(data.target == 0)
    train = benign[: len(benign) // 2]
    rng = random.Random(seed)
    pool = list(benign[len(benign) // 2 :])
    values = []
    for i in range(n):
        row = rng.choice(malignant_rows) if rng.random() < malignant else rng.choice(pool)
        rec = {"id": f"r{i}", **dict(zip(names, map(float, data.data[row]), strict=True))}
        values.append(orjson.dumps(rec))
    columns: dict[str, list[object]] = {
        "id": [f"t{i}" for i in train],
        **{n_: list(map(float, data.data[train, j])) for j, n_ in enumerate(names)},
    }
    return columns, values


@contextmanager
def databases(postgres: str | None, workdir: Path) -> Iterator[Callable[[str], str]]:
    """A factory of empty databases by name: SQLite files in ``workdir``, or throwaway
    databases on the ``postgres`` server (migrated, as `latentwatch db upgrade` does; dropped at
    the end)."""
    if postgres is None:
        yield lambda name: f"sqlite:///{workdir / (name + '.db')}"
        return
    with throwaway_databases(postgres) as new:
        yield lambda name: new(f"lw_bench_{name.replace('-', '_')}")


def produce(bootstrap: str, topic: str, values: list[bytes], rate: float | None = None) -> None:
    replay_to(bootstrap, values, topic, rate=rate, acks=1)


def raw_ceiling(
    bootstrap: str, topic: str, n: int, max_records: int, group: str = "bench-raw"
) -> float:
    """Records/s of a plain consumer-group member: poll, orjson decode, commit per batch.
    With the same garbage-collector policy as the service (start-up heap frozen)."""
    latentwatch.service.freeze_startup_heap()
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        fetch_max_wait_ms=50,
        metrics_enabled=False,
    )
    seen, first = 0, None
    try:
        while seen < n:
            batch = consumer.poll(timeout_ms=1000, max_records=max_records)
            for messages in batch.values():
                if first is None:
                    first = time.perf_counter()
                for m in messages:
                    orjson.loads(m.value)
                seen += len(messages)
            if batch:
                consumer.commit()
        assert first is not None
        return n / (time.perf_counter() - first)
    finally:
        consumer.close()


@dataclass(frozen=True)
class Round:
    """One raw run and the latentwatch runs right after it, on the same topic."""

    raw: float  # records/s
    e2e: float
    e2e_orjson: float
    flagged: int
    slowest_s: float

    @property
    def ratio(self) -> float:
        return self.e2e / self.raw

    def summary(self) -> str:
        return (
            f"raw {self.raw:,.0f}, latentwatch {self.e2e:,.0f} (ratio {self.ratio:.2f}), "
            f"orjson only {self.e2e_orjson:,.0f} ({self.e2e_orjson / self.raw:.2f}) records/s"
        )


def wait_consumed(consumer: BackgroundConsumer, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while consumer.consumed < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"latentwatch consumed {consumer.consumed} of {n}")
        time.sleep(0.05)


def end_to_end_rate(reports: list[BatchReport]) -> float:
    """Records/s from the first batch's start to the last batch's commit."""
    consumed = sum(r.consumed for r in reports)
    first_start = reports[0].committed_at - reports[0].duration_s
    return consumed / (reports[-1].committed_at - first_start)


def _consumed(port: int) -> float:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except OSError:
        return 0.0
    return sum(
        float(line.split()[-1])
        for line in body.decode().splitlines()
        if line.startswith("latentwatch_records_consumed_total{")
    )


def consumer_processes(
    settings: ConsumeSettings, processes: int, n: int, database: Callable[[str], str]
) -> tuple[float, float]:
    """Run `processes` `latentwatch consume` processes in one new group over the topic, until
    they consumed it all: (records/s from the first record to the last, largest peak RSS MB).
    Progress is read from their metrics endpoints every 0.1 s."""
    group = f"bench-processes-{processes}"
    ports = [free_port() for _ in range(processes)]
    db = database(group)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "latentwatch",
                "consume",
                "--model",
                str(settings.model),
                "--bootstrap",
                settings.kafka.bootstrap,
                "--topic",
                settings.kafka.topics[0],
                "--db",
                db,
                "--group",
                group,
                "--metrics-port",
                str(port),
                "--max-records",
                str(settings.loop.max_records),
                "--typed-decoding" if settings.loop.typed_decoding else "--no-typed-decoding",
                "--log-level",
                "warning",
            ],
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        first = last = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            time.sleep(0.1)
            consumed = sum(_consumed(port) for port in ports)
            if consumed > 0 and first is None:
                first = time.monotonic()
            if consumed >= n:
                last = time.monotonic()
                break
        if first is None or last is None:
            raise SystemExit(f"{processes} consumer process(es) did not consume the topic")
        peaks = []
        for proc in procs:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peaks.append(
                next(
                    int(line.split()[1])
                    for line in status.splitlines()
                    if line.startswith("VmHWM:")
                )
                / 1024
            )
        return n / (last - first), max(peaks)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


# (module, attribute, label): the consumer's stages, timed by --stages. Patched where they are
# looked up at call time, so the real consumer runs with timers around each.
STAGES = (
    ("streams.kafka", "KafkaSource.poll", "kafka-python fetch and record unpacking (poll)"),
    ("streams.typed", "TypedDecoder.columns", "typed decoding into columns (msgspec)"),
    ("streams.scoring", "decode_all", "JSON decoding and message checks (decode_all)"),
    ("detector.encoding", "records_to_columns", "fields out of the dicts (records_to_columns)"),
    ("detector.encoding", "encode_columns", "standardising, clipping, imputing (encode_columns)"),
    ("detector.detector", "encode_columns", "standardising, clipping, imputing (encode_columns)"),
    ("detector.detector", "Detector.score_encoded", "model maths (score_encoded)"),
    ("streams.scoring", "flagged_records", "explaining and building the flagged records"),
    ("streams.sql_sink", "SqlSink.write", "writing them to the database (one transaction a batch)"),
    ("streams.kafka", "KafkaSource.commit", "offset commit"),
    ("streams.consumer", "ConsumerLoop._account", "metrics and bookkeeping"),
    ("streams.consumer", "ConsumerLoop.process", "everything after poll (process), in all"),
)


def time_stages() -> dict[str, float]:
    """Wrap each stage with a timer; returns the dict the timers add seconds to. A poll that
    returns nothing (the idle tail once the topic is drained) is not counted; every other call
    is, whatever it returns."""
    import importlib  # noqa: PLC0415

    spent = dict.fromkeys((label for *_, label in STAGES), 0.0)
    for module_name, attribute, label in STAGES:
        owner: object = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        original = getattr(owner, name)

        def timed(
            *args: object,
            _f: Any = original,
            _label: str = label,
            _is_poll: bool = name == "poll",
            **kw: object,
        ) -> object:
            t = time.perf_counter()
            result = _f(*args, **kw)
            if not (_is_poll and not result):  # an empty poll is idle time, not work
                spent[_label] += time.perf_counter() - t
            return result

        setattr(owner, name, timed)
    return spent


def shadow_cost(
    settings: ConsumeSettings,
    detector: Detector,
    workdir: Path,
    database: Callable[[str], str],
    n: int,
    rounds: int,
    store: str,
) -> None:
    """Consumers that follow the registry, with and without a shadow model (the live model
    recalibrated to a 5 % false-alarm rate: the same network, another version), alternated on
    the same topic; each run on a new group and database."""
    from dataclasses import replace as evolve  # noqa: PLC0415

    from detector.calibration import threshold_for  # noqa: PLC0415
    from lifecycle.roles import Registry, register_directory  # noqa: PLC0415
    from lifecycle.store import DirectoryStore  # noqa: PLC0415
    from storage.database import ensure_schema, make_engine, session_factory  # noqa: PLC0415

    cal = detector.calibrations
    other = evolve(
        detector,
        calibrations=evolve(cal, threshold=threshold_for(cal.score, 0.05), fpr=0.05),
        config=evolve(detector.config, fpr=0.05),
        version="",
    )
    artifact.save(other, workdir / "shadow")

    def run(name: str, shadow: bool) -> tuple[float, int]:
        url = database(name)
        engine = make_engine(url)
        ensure_schema(engine, auto_upgrade=True)
        sessions = session_factory(engine)
        models = DirectoryStore(workdir / "store")
        live = register_directory(sessions, models, workdir / "model", actor="bench")[0]
        candidate = register_directory(sessions, models, workdir / "shadow", actor="bench")[0]
        registry = Registry(sessions, "bench", "bench")
        registry.promote(live.version)
        if shadow:
            registry.shadow(candidate.version)
        engine.dispose()
        following = replace(
            settings,
            model=None,
            registry="bench",
            db=url,
            kafka=replace(settings.kafka, group=f"g-{name}"),
        )
        with BackgroundConsumer(following) as consumer:
            wait_consumed(consumer, n, timeout_s=600)
        flagged = int(
            consumer.metric(
                "latentwatch_model_records_flagged_total",
                topic="bench",
                role="shadow",
                version=candidate.version,
            )
        )
        return end_to_end_rate(consumer.reports), flagged

    results = []
    for i in range(rounds):
        plain, _ = run(f"plain-{i}", shadow=False)
        with_shadow, shadow_flags = run(f"shadow-{i}", shadow=True)
        results.append((plain, with_shadow))
        print(
            f"round {i + 1}: {1e6 / plain:.1f} µs/record alone, {1e6 / with_shadow:.1f} with "
            f"a shadow model ({shadow_flags:,} shadow flags)",
            file=sys.stderr,
        )
    ratios = [plain / shadowed for plain, shadowed in results]
    mid = sorted(range(rounds), key=lambda k: ratios[k])[rounds // 2]
    plain, with_shadow = results[mid]
    print(describe())
    print(
        f"{n:,} records x 30 features on {PARTITIONS} partitions, embedded Tansu, consumers "
        f"following the registry, flagged records in {store}; {rounds} rounds alternated, "
        "the median round by ratio shown"
    )
    print("| measure | value |")
    print("|---|---|")
    print(f"| live model alone | {1e6 / plain:.1f} µs per record ({plain:,.0f} records/s) |")
    print(
        f"| live + shadow model | {1e6 / with_shadow:.1f} µs per record "
        f"({with_shadow:,.0f} records/s) |"
    )
    print(f"| cost ratio with a shadow model (target <= 2) | {ratios[mid]:.2f} |")
    print(f"| ratios of all rounds | {', '.join(f'{r:.2f}' for r in ratios)} |")


def nearest_normal_cost(
    settings: ConsumeSettings, database: Callable[[str], str], n: int, rounds: int, store: str
) -> None:
    """The consumer end to end with and without nearest normal records (issue 20's cost),
    alternated on the same topic, each run on a new group and database: the share of the
    throughput kept when flagged records are explained."""
    results = []
    flagged = 0
    for i in range(rounds):
        rates = {}
        for nearest in (False, True):
            name = f"nearest-{i}" if nearest else f"plain-{i}"
            run_settings = replace(
                settings,
                db=database(name),
                kafka=replace(settings.kafka, group=f"g-{name}"),
                loop=replace(settings.loop, nearest_normal=nearest),
            )
            with BackgroundConsumer(run_settings) as consumer:
                wait_consumed(consumer, n, timeout_s=600)
            rates[nearest] = end_to_end_rate(consumer.reports)
            flagged = sum(r.flagged for r in consumer.reports)
        results.append((rates[False], rates[True]))
        print(
            f"round {i + 1}: {rates[False]:,.0f} records/s without nearest normal records, "
            f"{rates[True]:,.0f} with ({rates[True] / rates[False]:.2f})",
            file=sys.stderr,
        )
    kept = [explained / plain for plain, explained in results]
    mid = sorted(range(rounds), key=lambda k: kept[k])[rounds // 2]
    plain, explained = results[mid]
    print(describe())
    print(
        f"{n:,} records x 30 features on {PARTITIONS} partitions, embedded Tansu, "
        f"{flagged:,} flagged ({flagged / n:.2%}), stored in {store}; {rounds} rounds "
        "alternated, the median round by throughput kept shown"
    )
    print("| measure | value |")
    print("|---|---|")
    print(f"| without nearest normal records | {plain:,.0f} records/s |")
    print(f"| with nearest normal records | {explained:,.0f} records/s |")
    print(f"| throughput kept (target >= 0.90) | {kept[mid]:.2f} |")
    print(f"| kept in all rounds | {', '.join(f'{k:.2f}' for k in kept)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="latency test, records/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="latency test duration")
    parser.add_argument(
        "--max-records",
        type=int,
        default=MAX_RECORDS,
        help="records per poll, for the raw loop and latentwatch alike",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="raw/latentwatch pairs, alternated on the same topic; the median round is shown",
    )
    parser.add_argument(
        "--stages",
        action="store_true",
        help="time each stage of the end-to-end run instead (slows it a little); no other tests",
    )
    parser.add_argument(
        "--no-freeze",
        action="store_true",
        help="do not freeze the start-up heap (raw and in-process runs): what the freeze buys",
    )
    parser.add_argument(
        "--no-typed-decoding",
        action="store_true",
        help="latentwatch with orjson decoding only (consume --no-typed-decoding)",
    )
    parser.add_argument(
        "--shadow",
        action="store_true",
        help="measure the cost of a shadow model (docs/lifecycle.md) instead; no other tests",
    )
    parser.add_argument(
        "--nearest-normal",
        action="store_true",
        help="measure the cost of nearest normal records (the consumer with and without them, "
        "alternated) instead; no other tests",
    )
    parser.add_argument(
        "--malignant",
        type=float,
        default=0.05,
        help="share of malignant records in the stream (0.025 flags about the calibrated 1 %%)",
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="write flagged records to PostgreSQL: a throwaway database per run on this server",
    )
    args = parser.parse_args()
    spent = time_stages() if args.stages else None
    store = "PostgreSQL" if args.postgres else "SQLite"
    if args.no_freeze:
        latentwatch.service.freeze_startup_heap = lambda: None
    torch.set_num_threads(1)
    columns, values = records(args.records, malignant=args.malignant)
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker() as broker,
        databases(args.postgres, Path(tmp)) as database,
    ):
        workdir = Path(tmp)
        detector = Detector.fit(columns, SchemaOptions(id_column="id"))
        artifact.save(detector, workdir / "model")
        ensure_topics(broker.bootstrap, ["bench", "latency"], partitions=PARTITIONS)
        produce(broker.bootstrap, "bench", values)

        settings = ConsumeSettings(
            model=workdir / "model",
            db=database("e2e"),
            kafka=KafkaSettings(broker.bootstrap, "bench-e2e", ("bench",)),
            loop=LoopSettings(
                max_records=args.max_records, typed_decoding=not args.no_typed_decoding
            ),
            metrics_port=None,
        )
        if args.shadow:
            shadow_cost(settings, detector, workdir, database, args.records, args.rounds, store)
            return
        if args.nearest_normal:
            nearest_normal_cost(settings, database, args.records, args.rounds, store)
            return
        if spent is not None:
            raw = raw_ceiling(broker.bootstrap, "bench", args.records, args.max_records)
            with BackgroundConsumer(settings) as consumer:
                wait_consumed(consumer, args.records, timeout_s=300)
            print(describe())
            print(
                f"raw ceiling {raw:,.0f} records/s; end to end with timers "
                f"{end_to_end_rate(consumer.reports):,.0f} records/s; "
                f"flagged records stored in {store}"
            )
            print("| stage | µs per record |")
            print("|---|---|")
            for label, seconds in spent.items():
                print(f"| {label} | {seconds / args.records * 1e6:.1f} |")
            return

        # Rounds alternate the raw loop and latentwatch (each on a new group, reading the
        # whole topic), so that both see the same drift of the machine and the broker.
        rounds = []
        for i in range(args.rounds):
            raw = raw_ceiling(
                broker.bootstrap, "bench", args.records, args.max_records, f"bench-raw-{i}"
            )
            round_settings = replace(
                settings,
                db=database(f"e2e-{i}"),
                kafka=replace(settings.kafka, group=f"bench-e2e-{i}"),
            )
            with BackgroundConsumer(round_settings) as consumer:
                wait_consumed(consumer, args.records, timeout_s=300)
            orjson_settings = replace(
                settings,
                db=database(f"e2e-orjson-{i}"),
                kafka=replace(settings.kafka, group=f"bench-e2e-orjson-{i}"),
                loop=replace(settings.loop, typed_decoding=False),
            )
            with BackgroundConsumer(orjson_settings) as orjson_consumer:
                wait_consumed(orjson_consumer, args.records, timeout_s=300)
            rounds.append(
                Round(
                    raw=raw,
                    e2e=end_to_end_rate(consumer.reports),
                    e2e_orjson=end_to_end_rate(orjson_consumer.reports),
                    flagged=sum(r.flagged for r in consumer.reports),
                    slowest_s=max(r.duration_s for r in consumer.reports),
                )
            )
            print(f"round {i + 1}: {rounds[-1].summary()}", file=sys.stderr)

        latency_settings = replace(
            settings,
            db=database("latency"),
            kafka=replace(settings.kafka, topics=("latency",), group="bench-latency"),
        )
        n_latency = int(args.rate * args.seconds)
        with BackgroundConsumer(latency_settings) as consumer:
            consumer.wait_for_partitions(PARTITIONS)  # else the join would count as latency
            produce(broker.bootstrap, "latency", values[:n_latency], rate=args.rate)
            wait_consumed(consumer, n_latency, timeout_s=60)
        latencies = np.concatenate(
            [r.committed_at - r.timestamps_ms / 1000 for r in consumer.reports]
        )
        _, rss = consumer_processes(settings, 1, args.records, database)
        two_processes, _ = consumer_processes(settings, 2, args.records, database)

    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    mid = sorted(rounds, key=lambda r: r.ratio)[len(rounds) // 2]  # the median round
    print(describe())
    print(
        f"{args.records:,} records x 30 features on {PARTITIONS} partitions, embedded Tansu, "
        f"kafka-python, polls of up to {args.max_records:,} records, 1 torch thread; "
        f"{mid.flagged:,} flagged, stored in {store}; {len(rounds)} rounds, the median round "
        "by ratio shown"
    )
    print("| measure | value |")
    print("|---|---|")
    print(f"| raw ceiling (poll + orjson + commit per batch) | {mid.raw:,.0f} records/s |")
    print(f"| latentwatch end to end | {mid.e2e:,.0f} records/s |")
    print(f"| slowest batch of the end-to-end run | {mid.slowest_s * 1000:.0f} ms |")
    print(f"| ratio (target >= 0.75) | {mid.ratio:.2f} |")
    print(f"| ratios of all rounds | {', '.join(f'{r.ratio:.2f}' for r in rounds)} |")
    print(
        f"| the same with orjson decoding only (--no-typed-decoding) | {mid.e2e_orjson:,.0f} "
        f"records/s, ratio {mid.e2e_orjson / mid.raw:.2f} |"
    )
    print(
        f"| latency p50 / p99 at {args.rate:,.0f} records/s (target p99 < 100 ms) "
        f"| {p50:.1f} / {p99:.1f} ms |"
    )
    print(f"| consumer peak RSS (target < 600 MB) | {rss:,.0f} MB |")
    print(
        f"| scale-out: 2 consumer processes in one group (both cores) | {two_processes:,.0f} "
        f"records/s = {two_processes / mid.raw:.2f} x the median round's raw ceiling |"
    )


if __name__ == "__main__":
    main()
