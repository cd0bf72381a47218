"""SIGTERM to exit of a `latentwatch consume` process, measured side by side in one run:

1. baseline: the consumer idle, caught up, nothing pending;
2. locked: its write of flagged records waits on a PostgreSQL `LOCK TABLE ... IN ACCESS
   EXCLUSIVE MODE` held by another connection (the signal comes 1 s into the wait).

Both --rounds times, alternated, each with a new process and consumer group; reports every
time, the median and the worst of each, and the exit status (0: a graceful stop; the bound of
docs/streams.md is 10 s, after which the process exits by force with status 1).

    python bench/shutdown.py [--rounds 3] [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from databases import throwaway_databases
from machine import describe
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from stream import records

from detector import artifact
from detector.detector import Detector
from detector.schema import SchemaOptions
from latentwatch.embedded import EmbeddedBroker
from streams.kafka import ensure_topics, make_producer


def wait_for(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout_s:.0f} s")
        time.sleep(0.05)


def start(model: Path, bootstrap: str, topic: str, db: str, log: Path) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "latentwatch", "consume", "--model", str(model),
        "--bootstrap", bootstrap, "--topic", topic, "--db", db, "--group", f"g-{topic}",
        "--metrics-port", "-1", "--session-timeout-ms", "1000",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    wait_for(lambda: "partitions assigned" in log.read_text(), 120, "group join")
    return proc


def stop(proc: subprocess.Popen[bytes]) -> tuple[float, int]:
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    return time.monotonic() - sent, code


def locked_write(db: str, produce: object) -> object:
    """Hold the lock, send flagged records, wait until the consumer's write waits on it."""
    engine = create_engine(db, poolclass=NullPool)
    holder = engine.connect()
    holder.exec_driver_sql("LOCK TABLE flagged_records IN ACCESS EXCLUSIVE MODE")
    produce()  # type: ignore[operator]

    def waiting() -> bool:
        with engine.connect() as c:
            query = "SELECT count(*) FROM pg_locks WHERE NOT granted"
            return bool(c.scalar(text(query + " AND relation = 'flagged_records'::regclass")))

    wait_for(waiting, 60, "write waiting on the lock")
    time.sleep(1.0)

    def release() -> None:
        holder.rollback()
        holder.close()
        engine.dispose()

    return release


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    columns, _ = records(2000)
    anomalies = records(400, seed=1)[1]  # some of them flagged
    results: dict[str, list[tuple[float, int]]] = {"baseline": [], "locked": []}
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker() as broker,
        throwaway_databases(args.postgres) as new_database,
    ):
        work = Path(tmp)
        artifact.save(Detector.fit(columns, SchemaOptions(id_column="id")), work / "model")
        for r in range(args.rounds):
            for case, runs in results.items():
                topic, db = f"{case}-{r}", new_database("lw_bench_shutdown")
                ensure_topics(broker.bootstrap, [topic], partitions=1)
                proc = start(work / "model", broker.bootstrap, topic, db, work / f"{topic}.log")
                release = None

                def produce(topic: str = topic) -> None:
                    producer = make_producer(broker.bootstrap)
                    for value in anomalies:
                        producer.send(topic, value=value)
                    producer.flush(30)
                    producer.close(5)

                try:
                    if case == "locked":
                        release = locked_write(db, produce)
                    runs.append(stop(proc))
                finally:
                    if proc.poll() is None:
                        proc.kill()
                    if release is not None:
                        release()  # type: ignore[operator]
    print(describe())
    print("| case | SIGTERM to exit, each round (s) | median | worst | exit status |")
    print("|---|---|---|---|---|")
    for case, runs in results.items():
        times = [t for t, _ in runs]
        print(
            f"| {case} | {', '.join(f'{t:.2f}' for t in times)} | "
            f"{statistics.median(times):.2f} | {max(times):.2f} | "
            f"{', '.join(str(c) for _, c in runs)} |"
        )


if __name__ == "__main__":
    main()
