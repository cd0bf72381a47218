"""`latentwatch demo`: the whole path on embedded defaults, started and stopped in one process.

Embedded broker (Tansu) on a free loopback port -> train on real data (the breast-cancer set
that ships with scikit-learn: benign tumours are "normal") -> replay a stream of held-out
normal records with injected anomalies (malignant tumours) and a few malformed messages ->
the consumer scores it, stores flagged records in SQLite, dead-letters the malformed ones,
serves Prometheus metrics (and the query API) -> a summary against the injected truth.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from api.server import serve_in_thread
from detector import artifact
from detector.detector import Detector, DetectorConfig
from detector.schema import Columns, SchemaOptions
from latentwatch.embedded import EmbeddedBroker
from latentwatch.progress import training_progress
from latentwatch.service import BackgroundConsumer
from latentwatch.settings import ConsumeSettings
from storage.database import make_engine, session_factory
from storage.models import FlaggedRecordRow
from streams.consumer import RunTotals
from streams.kafka import ensure_topics
from streams.replay import replay_to
from streams.settings import KafkaSettings

T = TypeVar("T")
TOPIC = "patients"
PARTITIONS = 2
MALFORMED = [
    b"not json",
    b'{"mean_radius": NaN}',
    b"[1, 2, 3]",
    b'{"mean_radius": "large"}',
    b"\xff\xfe",
]


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path = Path(".demo")
    repeat: int = 20  # the held-out stream is replayed this many times
    anomaly_share: float = 0.05
    rate: float = 1000.0  # records per second
    seed: int = 0
    keep_running: bool = False  # keep metrics and API up until Ctrl-C


@dataclass(frozen=True)
class DemoData:
    train: dict[str, list[Any]]
    stream: list[dict[str, Any]]
    anomalous_ids: set[str]


@dataclass
class DemoResult:
    sent: int
    totals: RunTotals
    flagged_ids: set[str]
    anomalous_ids: set[str]
    latencies_s: np.ndarray
    elapsed_s: float
    urls: dict[str, str] = field(default_factory=dict)


def demo_data(options: DemoOptions) -> DemoData:
    """Three quarters of the benign records to train on; the rest, repeated, with malignant
    records injected at ``anomaly_share``, as the stream."""
    from sklearn.datasets import load_breast_cancer  # noqa: PLC0415  (only the demo needs it)

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    rng = random.Random(options.seed)
    benign = [i for i in range(len(data.target)) if data.target[i] == 1]
    malignant = [i for i in range(len(data.target)) if data.target[i] == 0]
    rng.shuffle(benign)
    half = len(benign) * 3 // 4  # the more reference rows, the better the calibration

    def record(i: int, rid: str) -> dict[str, Any]:
        return {"id": rid, **{n: float(v) for n, v in zip(names, data.data[i], strict=True)}}

    train_rows = [record(i, f"train-{i}") for i in benign[:half]]
    stream: list[dict[str, Any]] = []
    anomalous: set[str] = set()
    for r in range(options.repeat):
        normal = [record(i, f"b{i}-{r}") for i in benign[half:]]
        n_bad = max(1, round(len(normal) * options.anomaly_share / (1 - options.anomaly_share)))
        bad = [record(i, f"m{i}-{r}") for i in rng.sample(malignant, n_bad)]
        anomalous.update(str(b["id"]) for b in bad)
        chunk = normal + bad
        rng.shuffle(chunk)
        stream += chunk
    columns = {name: [row[name] for row in train_rows] for name in ["id", *names]}
    return DemoData(train=columns, stream=stream, anomalous_ids=anomalous)


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    if len(values) == 0:
        return float("nan"), float("nan")
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def summary_table(result: DemoResult) -> Table:
    flagged, truth = result.flagged_ids, result.anomalous_ids
    hits = len(flagged & truth)
    precision = hits / len(flagged) if flagged else float("nan")
    recall = hits / len(truth) if truth else float("nan")
    p50, p99 = _percentiles(result.latencies_s)
    t = result.totals
    table = Table(title="latentwatch demo", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("messages sent", f"{result.sent:,}"),
        ("consumed", f"{t.consumed:,}"),
        ("scored", f"{t.scored:,}"),
        ("flagged (stored in SQLite)", f"{t.flagged:,}"),
        ("rejected (dead-lettered)", f"{t.rejected:,}"),
        ("injected anomalies", f"{len(truth):,}"),
        ("precision vs injected truth", f"{precision:.3f}"),
        ("recall vs injected truth", f"{recall:.3f}"),
        (
            "records/s (consumed / wall time, at the replay rate)",
            f"{t.consumed / result.elapsed_s:,.0f}",
        ),
        ("end-to-end latency p50 / p99", f"{p50 * 1000:.1f} / {p99 * 1000:.1f} ms"),
    ]
    rows += [(name, url) for name, url in result.urls.items()]
    for row in rows:
        table.add_row(*row)
    return table


def train_and_save(
    columns: Columns,
    model_dir: Path,
    console: Console,
    config: DetectorConfig | None = None,
) -> Detector:
    """Train on the columns (their ``id`` column identifies records), save, say so."""
    config = config or DetectorConfig()
    with training_progress(config.training.max_steps, console) as progress:
        detector = Detector.fit(columns, SchemaOptions(id_column="id"), config, progress)
    artifact.save(detector, model_dir)
    console.print(
        f"trained model {detector.version} on {detector.report.rows} normal records "
        f"({detector.mixture.n_components} reference clusters, calibrated on "
        f"{detector.report.holdout_rows} held-out rows), saved to {model_dir}"
    )
    return detector


def off_main_thread(call: Callable[[], T], stop: threading.Event | None = None) -> T:
    """Make a Kafka call in a worker thread and wait for it here. kafka-python catches
    BaseException around its socket I/O, so a Ctrl-C (a KeyboardInterrupt, raised in the main
    thread) landing inside a Kafka call of the main thread is taken for a lost connection and
    the demo runs on. On Ctrl-C, ``stop`` asks a call that can end early to end, and we wait."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # re-raised in the main thread, below
            failure.append(exc)

    worker = threading.Thread(target=run, name="demo-kafka", daemon=True)
    try:
        worker.start()
        worker.join()
    except BaseException:  # Ctrl-C, maybe even while the thread was starting
        if stop is not None:
            stop.set()
        if worker.is_alive():
            worker.join()
        raise
    if failure:
        raise failure[0]
    return outcome[0]


def send(
    bootstrap: str,
    topic: str,
    messages: list[dict[str, Any]] | list[dict[str, Any] | bytes],
    rate: float,
    consumer: BackgroundConsumer,
    *,
    key_field: str | None = None,
) -> float:
    """Replay the messages (keyed by ``key_field``, if given: each key's partition is then
    fixed) and wait until the consumer has consumed them too (at most a minute); the wall time
    taken."""
    started = time.monotonic()
    expected = consumer.consumed + len(messages)
    stop = threading.Event()
    records = itertools.takewhile(lambda _: not stop.is_set(), messages)
    off_main_thread(
        lambda: replay_to(bootstrap, records, topic, rate=rate, key_field=key_field), stop
    )
    deadline = time.monotonic() + 60
    while consumer.consumed < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return time.monotonic() - started


def _flagged_ids(db_url: str) -> set[str]:
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session:
            ids = session.scalars(
                select(FlaggedRecordRow.record_id).where(FlaggedRecordRow.topic == TOPIC)
            )
            return {str(i) for i in ids}
    finally:
        engine.dispose()


def fresh_database(workdir: Path) -> str:
    """The URL of an empty SQLite file in ``workdir`` (a previous run's file removed)."""
    db_path = workdir / "latentwatch.db"
    for stale in (
        db_path,
        db_path.with_name(db_path.name + "-wal"),
        db_path.with_name(db_path.name + "-shm"),
    ):
        stale.unlink(missing_ok=True)  # a killed run's write-ahead log must not meet a new file
    return f"sqlite:///{db_path}"


def wait_for_ctrl_c(console: Console) -> None:
    console.print("consumer, metrics and API keep running: press Ctrl-C to stop")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass


def run_demo(options: DemoOptions, console: Console | None = None) -> DemoResult:
    """Run the whole path and stop everything it started (also on Ctrl-C or an error)."""
    console = console or Console()
    workdir = options.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    db_url = fresh_database(workdir)
    data = demo_data(options)
    messages: list[dict[str, Any] | bytes] = [*data.stream, *MALFORMED]
    urls: dict[str, str] = {}
    with ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker(log_path=workdir / "broker.log"))
        console.print(f"embedded broker (Tansu) at {broker.bootstrap}")
        train_and_save(data.train, workdir / "model", console)
        off_main_thread(lambda: ensure_topics(broker.bootstrap, [TOPIC], partitions=PARTITIONS))
        settings = ConsumeSettings(
            model=workdir / "model",
            db=db_url,
            kafka=KafkaSettings(
                broker.bootstrap, "latentwatch-demo", (TOPIC,), session_timeout_ms=1000
            ),
            metrics_port=0,
        )
        consumer = stack.enter_context(BackgroundConsumer(settings))
        urls["metrics"] = consumer.wait_for_metrics()
        consumer.wait_for_partitions(PARTITIONS)
        urls.update(start_api(stack, db_url))
        for name, url in urls.items():
            console.print(f"{name}: {url}")
        console.print(
            f"replaying {len(messages):,} messages to topic {TOPIC!r} at "
            f"{options.rate:,.0f}/s ({len(data.anomalous_ids)} injected anomalies, "
            f"{len(MALFORMED)} malformed)"
        )
        elapsed = send(broker.bootstrap, TOPIC, messages, options.rate, consumer)
        if options.keep_running:
            wait_for_ctrl_c(console)
        totals = consumer.close()
    reports = consumer.reports
    latencies = [r.committed_at - r.timestamps_ms / 1000.0 for r in reports]
    return DemoResult(
        sent=len(messages),
        totals=totals,
        flagged_ids=_flagged_ids(db_url),
        anomalous_ids=data.anomalous_ids,
        latencies_s=np.concatenate(latencies) if latencies else np.array([]),
        elapsed_s=elapsed,
        urls=urls,
    )


def start_api(stack: ExitStack, db_url: str) -> dict[str, str]:
    """The query API and explorer page on a free loopback port."""
    server = stack.enter_context(serve_in_thread(db_url))
    return {"explorer + API": server.url}
