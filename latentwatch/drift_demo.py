"""`latentwatch demo --scenario drift`: the model lifecycle's loop on embedded defaults.

The embedded broker, a SQLite file and the breast-cancer records of `latentwatch demo`; one
topic whose consumer follows the model registry (`consume --registry`), streamed in four phases:

1. **reference** — records like the live model's training data: it flags about its calibrated
   false-alarm rate;
2. **drift** — the lab's new scanner measures sizes larger (radius and perimeter x ``scale``,
   area x ``scale``²): the drift measure and the flag rate rise;
3. **shadow** — a candidate trained from the drift phase on the topic scores beside the live
   model; GET /api/models/compare compares them. It is trained in two passes of `train
   --from-topic`: a first model of everything since the shift, then the candidate without the
   records that first model flags (`--exclude-flagged-by FIRST --register-as shadow`). Leaving
   out what the *live* model flags instead (``retrain="exclude-live"``) would leave out much
   of the new normal, the part furthest from the old one, and the candidate would flag it;
4. **promoted** — the candidate is promoted, the consumer switches between two batches, and
   the flag rate returns near the calibrated rate.

The set has 357 benign tumours: too few to stream for minutes without repeating them, and a
model trained on repeated records learns those by heart. So each normal record streamed (or
trained on) is a new one, a random point between a benign tumour and one of its five nearest
benign neighbours; the anomalies are the malignant tumours as they are.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from detector.detector import DetectorConfig
from detector.training import TrainingConfig
from latentwatch.demo import (
    PARTITIONS,
    fresh_database,
    off_main_thread,
    send,
    start_api,
    train_and_save,
    wait_for_ctrl_c,
)
from latentwatch.embedded import EmbeddedBroker
from latentwatch.models_cli import TopicTraining, read_topic_for_training, register_trained
from latentwatch.service import BackgroundConsumer
from latentwatch.settings import ConsumeSettings
from lifecycle.roles import Registry, register_directory
from lifecycle.store import DirectoryStore
from storage import registry
from storage.database import ensure_schema, make_engine, session_factory
from storage.models import FlaggedRecordRow
from streams.kafka import ensure_topics
from streams.settings import KafkaSettings

ACTOR = "demo"
NEIGHBOURS = 5
ROLE_WAIT_S = 60.0  # a registry change reaches the consumer within its poll interval (2 s)


@dataclass(frozen=True)
class DriftOptions:
    workdir: Path = Path(".demo")
    topic: str = "patients"
    reference_records: int = 1500  # what the first live model trains on
    phase_records: int = 3000  # records streamed in each phase
    anomaly_share: float = 0.01  # malignant tumours among them
    scale: float = 1.15  # the new scanner's sizes against the old one's
    rate: float = 1000.0  # records per second
    seed: int = 0
    training: TrainingConfig = field(default_factory=TrainingConfig)
    # "two-pass": the candidate leaves out what a first model of the same topic records flags;
    # "exclude-live": what the live model flags (under a shift, much of the new normal)
    retrain: str = "two-pass"
    keep_running: bool = False  # keep metrics and API up until Ctrl-C


@dataclass(frozen=True)
class Phase:
    name: str
    scanner: str
    live_version: str  # the model that scored the phase
    normal: int
    anomalous: int
    false_alarms: int  # normal records flagged
    caught: int  # anomalous records flagged
    drift_surprise: float  # the consumer's latentwatch_drift_mean_surprise after the phase
    drift_psi: float
    flagged_by: tuple[str, ...]  # the versions its stored live flags carry

    @property
    def false_alarm_rate(self) -> float:
        return self.false_alarms / self.normal if self.normal else float("nan")


@dataclass(frozen=True)
class DriftResult:
    fpr: float  # the calibrated false-alarm rate both models were trained for
    first_version: str
    candidate_version: str
    live_version: str  # the registry's live model at the end
    candidate_source: str | None  # where the registry says the candidate's data came from
    trained_on: int  # the candidate's training records (read from the topic, minus exclusions)
    excluded_by: str  # the model whose flags were left out of them
    phases: list[Phase]
    comparison: dict[str, Any]  # GET /api/models/compare over the shadow phase
    urls: dict[str, str]


def nearest_neighbours(x: np.ndarray, k: int) -> np.ndarray:
    """Indices [n, k] of each row's ``k`` nearest other rows (Euclidean, standardised columns).

    >>> nearest_neighbours(np.array([[0.0], [1.0], [5.0]]), 1).ravel().tolist()
    [1, 0, 1]
    """
    z = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    distances = ((z[:, None, :] - z[None, :, :]) ** 2).sum(axis=-1)
    np.fill_diagonal(distances, np.inf)
    return np.argsort(distances, axis=1, kind="stable")[:, :k]


def between_neighbours(
    x: np.ndarray, neighbours: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` new rows, each a uniform random point between a row of ``x`` and one of its
    neighbours: more records of the same population than the data set has."""
    rows = rng.integers(0, len(x), n)
    others = neighbours[rows, rng.integers(0, neighbours.shape[1], n)]
    u = rng.random((n, 1))
    return np.asarray(x[rows] + u * (x[others] - x[rows]))


def scanner_change(names: list[str], scale: float) -> np.ndarray:
    """Per-field factors of a scanner that measures lengths ``scale`` times larger: radius and
    perimeter (and their errors and worst values) by ``scale``, areas by its square.

    >>> scanner_change(["mean_radius", "mean_area", "mean_texture"], 2.0).tolist()
    [2.0, 4.0, 1.0]
    """
    factors = np.ones(len(names))
    for i, name in enumerate(names):
        if "area" in name:
            factors[i] = scale**2
        elif "radius" in name or "perimeter" in name:
            factors[i] = scale
    return factors


class Population:
    """The demo's records: new benign tumours (between neighbours) and the malignant ones."""

    def __init__(self, seed: int) -> None:
        from sklearn.datasets import load_breast_cancer  # noqa: PLC0415  (only demos need it)

        data = load_breast_cancer()
        self.names = [n.replace(" ", "_") for n in data.feature_names]
        self.benign = np.asarray(data.data[data.target == 1], dtype=np.float64)
        self.malignant = np.asarray(data.data[data.target == 0], dtype=np.float64)
        self.neighbours = nearest_neighbours(self.benign, NEIGHBOURS)
        self.rng = np.random.default_rng(seed)

    def columns(self, n: int) -> dict[str, list[Any]]:
        """``n`` normal records as training columns (ids ``ref-<i>``)."""
        x = between_neighbours(self.benign, self.neighbours, n, self.rng)
        return {"id": [f"ref-{i}" for i in range(n)]} | {
            name: x[:, j].tolist() for j, name in enumerate(self.names)
        }

    def phase(
        self, name: str, n: int, anomaly_share: float, factors: np.ndarray
    ) -> list[dict[str, Any]]:
        """``n`` records in a random order, ``anomaly_share`` of them malignant, measured with
        ``factors``; ids ``<phase>-n<i>`` (normal) and ``<phase>-a<i>`` (anomalous)."""
        bad = round(n * anomaly_share)
        normal = between_neighbours(self.benign, self.neighbours, n - bad, self.rng) * factors
        anomalous = self.malignant[self.rng.integers(0, len(self.malignant), bad)] * factors
        records = [self._record(f"{name}-n{i}", row) for i, row in enumerate(normal)]
        records += [self._record(f"{name}-a{i}", row) for i, row in enumerate(anomalous)]
        order = self.rng.permutation(len(records))
        return [records[i] for i in order]

    def _record(self, rid: str, row: np.ndarray) -> dict[str, Any]:
        return {"id": rid, **dict(zip(self.names, row.tolist(), strict=True))}


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310  (our loopback API)
        answer: dict[str, Any] = json.load(response)
    return answer


def _wait_for_role(consumer: BackgroundConsumer, role: str, version: str) -> None:
    """Wait until the consumer uses ``version`` as its ``role`` model."""
    deadline = time.monotonic() + ROLE_WAIT_S
    while consumer.metric("latentwatch_model_role", role=role, version=version) != 1:
        if consumer.error is not None:
            raise consumer.error
        if time.monotonic() > deadline:
            raise TimeoutError(f"the consumer took no {role} model {version} in {ROLE_WAIT_S} s")
        time.sleep(0.1)


def _flags(db_url: str, topic: str) -> dict[str, str]:
    """Record id -> the version that flagged it, of the topic's live flags."""
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session:
            rows = session.execute(
                select(FlaggedRecordRow.record_id, FlaggedRecordRow.model_version).where(
                    FlaggedRecordRow.topic == topic
                )
            )
            return {str(rid): version for rid, version in rows}
    finally:
        engine.dispose()


def run_loop(  # noqa: PLR0915  (the scenario, in its order, in one place)
    bootstrap: str,
    db_url: str,
    options: DriftOptions,
    stack: ExitStack,
    console: Console,
) -> DriftResult:
    """The four phases against a running broker and a database (SQLite or PostgreSQL)."""
    torch.set_num_threads(1)  # as `latentwatch train` and `consume` by default
    workdir = options.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    topic, store = options.topic, workdir / "models"
    population = Population(options.seed)
    config = DetectorConfig(training=replace(options.training, seed=options.seed))
    engine = make_engine(db_url)
    stack.callback(engine.dispose)
    ensure_schema(engine)
    sessions = session_factory(engine)
    roles = Registry(sessions, topic, ACTOR)

    first_dir = workdir / "model-first"
    reference = population.columns(options.reference_records)
    first = train_and_save(reference, first_dir, console, config)
    register_directory(
        sessions, DirectoryStore(store), first_dir, actor=ACTOR, source="breast-cancer benign"
    )
    roles.promote(first.version)
    console.print(f"registered {first.version} and made it the live model of {topic!r}")

    off_main_thread(lambda: ensure_topics(bootstrap, [topic], partitions=PARTITIONS))
    settings = ConsumeSettings(
        model=None,
        registry=topic,
        db=db_url,
        kafka=KafkaSettings(bootstrap, f"latentwatch-{topic}", (topic,), session_timeout_ms=1000),
        metrics_port=0,
    )
    consumer = stack.enter_context(BackgroundConsumer(settings, name="drift-consumer"))
    urls = {"metrics": consumer.wait_for_metrics()}
    consumer.wait_for_partitions(PARTITIONS)
    urls.update(start_api(stack, db_url))
    api_url = urls["explorer + API"]
    for name, url in urls.items():
        console.print(f"{name}: {url}")

    old, new = np.ones(len(population.names)), scanner_change(population.names, options.scale)
    sent: list[tuple[str, str, list[dict[str, Any]], str, float, float]] = []

    def phase(name: str, scanner: str, factors: np.ndarray, live: str) -> None:
        records = population.phase(name, options.phase_records, options.anomaly_share, factors)
        console.print(f"{name}: {len(records):,} records, sizes {scanner}, live model {live}")
        # keyed: the topic's order, so the model trained from it, is the same in every run
        send(bootstrap, topic, records, options.rate, consumer, key_field="id")
        drift = (
            consumer.metric("latentwatch_drift_mean_surprise"),
            consumer.metric("latentwatch_drift_psi"),
        )
        sent.append((name, scanner, records, live, *drift))

    phase("reference", "x1", old, first.version)
    shift_start = datetime.now(UTC)
    phase("drift", f"x{options.scale:g}", new, first.version)
    shift_end = datetime.now(UTC)

    window = (shift_start.isoformat(), shift_end.isoformat())

    def from_topic(exclude: str | None, register_as: str | None) -> TopicTraining:
        return off_main_thread(
            lambda: read_topic_for_training(
                topic,
                bootstrap=bootstrap,
                window=window,
                exclude_flagged_by=exclude,
                register_as=register_as,
                db=db_url,
                store=store,
            )
        )

    exclude = first.version
    if options.retrain == "two-pass":
        console.print(f"first pass: a model of everything {topic!r} carried since the shift")
        everything = from_topic(None, None)
        pass_dir = workdir / "model-first-pass"
        exclude = train_and_save(everything.table.columns, pass_dir, console, config).version
        register_directory(
            sessions,
            DirectoryStore(store),
            pass_dir,
            actor=ACTOR,
            source=f"topic:{topic}",
            window=everything.window,
        )
    console.print(f"the candidate: the same records less what {exclude} flags")
    stream = from_topic(exclude, "shadow")
    candidate_dir = workdir / "model-candidate"
    candidate = train_and_save(stream.table.columns, candidate_dir, console, config)
    register_trained(candidate_dir, stream)
    _wait_for_role(consumer, "shadow", candidate.version)

    compare_start = datetime.now(UTC)
    phase("shadow", f"x{options.scale:g}", new, first.version)
    query = urllib.parse.urlencode(
        {"topic": topic, "start": compare_start.isoformat(), "end": datetime.now(UTC).isoformat()}
    )
    comparison = _get_json(f"{api_url}/api/models/compare?{query}")

    roles.promote(candidate.version)
    console.print(f"promoted {candidate.version}: the consumer switches between two batches")
    _wait_for_role(consumer, "live", candidate.version)
    phase("promoted", f"x{options.scale:g}", new, candidate.version)

    if options.keep_running:
        wait_for_ctrl_c(console)
    flags = _flags(db_url, topic)
    phases = []
    for name, scanner, records, live, surprise, psi in sent:
        ids = [str(r["id"]) for r in records]
        normal = [i for i in ids if i.startswith(f"{name}-n")]
        anomalous = [i for i in ids if i.startswith(f"{name}-a")]
        phases.append(
            Phase(
                name,
                scanner,
                live,
                len(normal),
                len(anomalous),
                sum(1 for i in normal if i in flags),
                sum(1 for i in anomalous if i in flags),
                surprise,
                psi,
                tuple(sorted({flags[i] for i in ids if i in flags})),
            )
        )
    return DriftResult(
        fpr=config.fpr,
        first_version=first.version,
        candidate_version=candidate.version,
        live_version=roles.roles().live or "",
        candidate_source=registry.get_model(sessions, candidate.version).source,
        trained_on=len(stream.table.columns["id"]),
        excluded_by=exclude,
        phases=phases,
        comparison=comparison,
        urls=urls,
    )


def run_drift_demo(options: DriftOptions, console: Console | None = None) -> DriftResult:
    """The scenario on embedded defaults; stops everything it started (also on Ctrl-C)."""
    console = console or Console()
    workdir = options.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    db_url = fresh_database(workdir)
    with ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker(log_path=workdir / "broker.log"))
        console.print(f"embedded broker (Tansu) at {broker.bootstrap}")
        return run_loop(broker.bootstrap, db_url, options, stack, console)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def drift_summary(result: DriftResult) -> Table:
    table = Table(title="latentwatch demo: drift -> retrain from the topic -> shadow -> promote")
    table.add_column("phase (sizes)")
    table.add_column("live model")
    for name in ("records", "normal flagged", "anomalies flagged", "mean surprise", "PSI"):
        table.add_column(name, justify="right")
    for p in result.phases:
        table.add_row(
            f"{p.name} ({p.scanner})",
            p.live_version,
            f"{p.normal + p.anomalous:,}",
            f"{p.false_alarms} ({_pct(p.false_alarm_rate)})",
            f"{p.caught} of {p.anomalous}",
            f"{p.drift_surprise:.2f}",
            f"{p.drift_psi:.3f}",
        )
    c = result.comparison
    table.caption = "\n".join(
        [
            f"calibrated false-alarm rate {_pct(result.fpr)}; mean surprise 1.0 on reference "
            "data; the drift window restarts on the promoted model's clusters",
            f"candidate {result.candidate_version} trained on {result.trained_on:,} records "
            f"of the drift phase read from the topic, less what {result.excluded_by} flags "
            f"(source {result.candidate_source})",
            f"GET /api/models/compare over the shadow phase: {c['scored']:,} records; "
            f"live {c['live']['version']} flags {_pct(c['live']['flag_rate'])}, shadow "
            f"{c['shadow']['version']} flags {_pct(c['shadow']['flag_rate'])} "
            f"(fpr {_pct(c['shadow']['fpr'])}); both flag {c['both_flagged']} of "
            f"{c['either_flagged']}; score rank correlation "
            + ("-" if c["rank_correlation"] is None else f"{c['rank_correlation']:.2f}"),
            f"live model now: {result.live_version}",
        ]
    )
    return table
