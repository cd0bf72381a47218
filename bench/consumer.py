"""The consumer's own work per record, without a broker: steadier than bench/stream.py.

The real ``ConsumerLoop.process`` (decode, validate, score, explain with the nearest normal record,
write flagged records to SQLite in one transaction a batch, metrics) runs on pre-built micro-batches
of the records bench/stream.py sends (30 numeric features, 5 % malignant), with a source whose
commit returns at once, and again without nearest normal records. Beside it, in the same run: what
the raw loop of bench/stream.py does after each poll (orjson-decode every value), the database write
alone, and the marks the loop leaves for the liveness watchdog (streams/liveness.py) in a batch;
then, for each further --malignant share (by default 2.5 %: about the calibrated 1 % of records
flagged), the loop with and without nearest normal records on that stream. Each figure is the best
of --repeats passes over all batches, a new SQLite file each time, the runs alternating.

    python bench/consumer.py [--batches 30] [--batch 2000] [--repeats 5] [--malignant 0.05,0.025]
                             [--cpu-time]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
import torch
from machine import describe
from prometheus_client import CollectorRegistry
from stream import records

from detector import artifact
from detector.detector import Detector
from detector.schema import SchemaOptions
from latentwatch.service import model_metrics
from storage.database import ensure_schema, make_engine, session_factory
from storage.repository import write_flagged
from streams.consumer import ConsumerLoop, Offsets
from streams.liveness import Progress
from streams.messages import Message, PlainMessage, Rejection, UndecodableBatch
from streams.settings import LoopSettings
from streams.sql_sink import SqlSink

PARTITIONS = 4


class InstantSource:
    """Nothing to poll (batches are handed to ``process``); commits succeed at once."""

    def poll(self, timeout_s: float, max_records: int) -> list[Message]:
        return []

    def undecodable(self) -> list[UndecodableBatch]:
        return []

    def commit(self, offsets: Offsets) -> bool:
        return True


class NoDeadLetters:
    def send(self, rejections: Sequence[Rejection]) -> None:
        raise AssertionError(f"the bench stream has no bad records: {rejections[0].detail}")


def best_seconds(
    runs: dict[str, Callable[[], object]], repeats: int, clock: Callable[[], float]
) -> dict[str, float]:
    """The best time of each run over ``repeats`` rounds, the runs alternating within a round
    (so a load that comes and goes touches them alike)."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for label, run in runs.items():
            start = clock()
            run()
            best[label] = min(best[label], clock() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch", type=int, default=2000, help="records per micro-batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--malignant",
        default="0.05,0.025",
        help="comma-separated shares of malignant records in the stream, one stream each: the "
        "first is the table's; each is measured with and without nearest normal records "
        "(0.025 gives about the calibrated 1 %% of records flagged)",
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="the process's CPU time instead of wall time: steadier on a shared machine (the "
        "loop runs on one thread; waits for the disk are left out)",
    )
    args = parser.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(1)
    n = args.batches * args.batch
    shares = [float(s) for s in args.malignant.split(",")]
    start = 1_700_000_000_000  # Kafka timestamps, ms
    streams: dict[float, list[list[Message]]] = {}
    for share in shares:
        columns, values = records(n, malignant=share)
        streams[share] = [
            [
                PlainMessage("bench", i % PARTITIONS, i, start + i, None, values[i])
                for i in range(b * args.batch, (b + 1) * args.batch)
            ]
            for b in range(args.batches)
        ]
    batches = streams[shares[0]]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        artifact.save(Detector.fit(columns, SchemaOptions(id_column="id")), workdir / "model")
        detector, manifest = artifact.load(workdir / "model")
        files = iter(range(100_000))

        def sink() -> SqlSink:
            engine = make_engine(f"sqlite:///{workdir / f'run{next(files)}.db'}")
            ensure_schema(engine)
            made = SqlSink(session_factory(engine), detector.version, manifest)
            made.register_model()
            return made

        def loop(typed: bool, nearest: bool = True) -> ConsumerLoop:
            return ConsumerLoop(
                InstantSource(),
                detector=detector,
                sink=sink(),
                dead_letters=NoDeadLetters(),
                metrics=model_metrics(CollectorRegistry(), detector, manifest, ["bench"]),
                settings=LoopSettings(
                    max_records=args.batch, typed_decoding=typed, nearest_normal=nearest
                ),
            )

        def consume(
            typed: bool, nearest: bool = True, stream: list[list[Message]] = batches
        ) -> Callable[[], None]:
            def run() -> None:
                each = loop(typed, nearest)
                stop = threading.Event()
                for batch in stream:
                    each.process(batch, stop)

            return run

        def raw_work() -> None:
            for batch in batches:
                for message in batch:
                    orjson.loads(message.value)  # type: ignore[arg-type]

        scorer = loop(typed=True)
        flagged = {
            share: [[r for b in scorer.score(batch) for r in b.flagged] for batch in stream]
            for share, stream in streams.items()
        }

        def database_only() -> None:
            engine = make_engine(f"sqlite:///{workdir / f'write{next(files)}.db'}")
            ensure_schema(engine)
            factory = session_factory(engine)
            for rows in flagged[shares[0]]:
                write_flagged(factory, rows)

        progress = Progress()
        committed = {("bench", p): args.batch for p in range(PARTITIONS)}

        def liveness_marks() -> None:
            """What process() and run() mark for the watchdog in one batch: a poll, a database
            write, a commit (each begins and ends), and the committed offsets."""
            for _ in batches:
                for operation in ("poll", "db_write", "commit"):
                    progress.begin(operation)
                    progress.end()
                progress.committed(committed)

        gc.freeze()  # as the consumer does before its loop (latentwatch.service)
        timings = {
            "raw loop's work after poll (orjson.loads of each value)": raw_work,
            "latentwatch process(), typed decoding": consume(typed=True),
            "latentwatch process(), orjson only (--no-typed-decoding)": consume(typed=False),
            "latentwatch process(), typed, without nearest normal records": consume(
                typed=True, nearest=False
            ),
            "of which: the database write alone (write_flagged)": database_only,
            "of which: the liveness marks of a batch (poll, write, commit)": liveness_marks,
        }
        for share in shares[1:]:
            timings[f"with, {share:.1%} malignant"] = consume(True, True, streams[share])
            timings[f"without, {share:.1%} malignant"] = consume(True, False, streams[share])
        results = best_seconds(timings, args.repeats, clock)
    print(describe())
    print(
        f"{args.batches} batches of {args.batch:,} records x 30 features, {shares[0]:.0%} "
        f"malignant ({sum(map(len, flagged[shares[0]])) / n:.1%} flagged), SQLite; best of "
        f"{args.repeats}, the runs alternating; {'CPU' if args.cpu_time else 'wall'} time; "
        "1 torch thread"
    )
    print("| work | µs per record |")
    print("|---|---|")
    for label, seconds in list(results.items())[: len(timings) - 2 * (len(shares) - 1)]:
        per_record = seconds / n * 1e6
        print(
            f"| {label} | {per_record:.2f} |"
            if per_record >= 0.01
            else f"| {label} | {per_record:.4f} |"
        )
    print("\nnearest normal records (issue 20), side by side in the same run:\n")
    print(
        "| malignant | flagged | µs per record without | with | µs per flagged record "
        "| throughput with / without |"
    )
    print("|---|---|---|---|---|---|")
    for share in shares:
        if share == shares[0]:
            with_walk = results["latentwatch process(), typed decoding"]
            without = results["latentwatch process(), typed, without nearest normal records"]
        else:
            with_walk = results[f"with, {share:.1%} malignant"]
            without = results[f"without, {share:.1%} malignant"]
        count = sum(map(len, flagged[share]))
        print(
            f"| {share:.1%} | {count / n:.2%} | {without / n * 1e6:.2f} | "
            f"{with_walk / n * 1e6:.2f} | {(with_walk - without) / max(count, 1) * 1e6:.0f} | "
            f"{without / with_walk:.1%} |"
        )


if __name__ == "__main__":
    main()
