"""The query API under load, served as `latentwatch api` serves it (uvicorn, one process of its
own) over databases of realistic flagged records, measured side by side in one run:

1. `GET /api/flagged/{id}` latency while one client sends the oversize request of issue 17 in
   a loop (8,000 unknown query parameters, ~70 KB), beside the idle case, with the server's
   query-string limits on (the shipped settings) and off (what the API did before them);
2. list-endpoint latency on a large table, per query the explorer makes, beside /health (the
   floor of one HTTP round trip), on SQLite and, with --postgres, PostgreSQL.

    python bench/api.py [--guard-rows 20000] [--list-rows 120000] [--requests 300]
                        [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import http.client
import math
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from databases import throwaway_databases

from latentwatch.embedded import free_port
from storage.database import make_engine, session_factory, upgrade
from storage.records import FlaggedRecord, ModelVersion
from storage.repository import write_flagged

OVERSIZE = "&".join(f"a{i}=1" for i in range(8_000))
TOPICS = ("payments", "logins", "orders", "transfers")
FIELDS = ("amount", "items", "hour", "country", "channel", "device", "merchant", "age")
MODEL = ModelVersion(
    "b3e1d2c4a5f6",
    {"version": "b3e1d2c4a5f6", "calibration": {"fpr": 0.01}, "latent_map": {"clusters": []}},
)


def records(count: int, now: datetime) -> Iterator[FlaggedRecord]:
    """``count`` flagged records spread over the 7 days before ``now``, newest last."""
    rng = random.Random(0)
    span_s = 7 * 86_400
    for i in range(count):
        scored = now - timedelta(seconds=span_s * (1 - i / count))
        # most flags are normal records past the threshold (p uniform below fpr = 0.01),
        # a few are real anomalies, far past it
        p_value = 0.01 * rng.random() if rng.random() < 0.98 else 10 ** -rng.uniform(3, 8)
        names = rng.sample(FIELDS, 5)
        contributions = sorted((rng.uniform(0.1, 6) for _ in names), reverse=True)
        yield FlaggedRecord(
            topic=TOPICS[i % len(TOPICS)],
            partition=i % 8,
            offset=i,
            kafka_timestamp=int(scored.timestamp() * 1000),
            key=f"customer-{i % 977}",
            record_id=f"r-{i}",
            event_time=scored - timedelta(seconds=rng.uniform(0, 5)),
            scored_time=scored,
            model_version=MODEL.version,
            score=rng.uniform(20, 90),
            severity=min(100.0, 100 * math.log(max(p_value, 1e-300)) / math.log(1e-6)),
            p_value=p_value,
            density=rng.uniform(5, 40),
            density_p_value=min(1.0, p_value * 10),
            reconstruction=rng.uniform(5, 50),
            reconstruction_p_value=min(1.0, p_value * 10),
            cluster=i % 5,
            cluster_distance=rng.uniform(1, 9),
            top_feature=names[0],
            explanation={
                "features": [
                    {"name": n, "actual": rng.gauss(0, 3), "expected": 0.0, "contribution": c}
                    for n, c in zip(names, contributions, strict=True)
                ],
                "cluster": i % 5,
                "latent": [rng.gauss(0, 1) for _ in range(8)],
                "latent_2d": [rng.gauss(0, 1), rng.gauss(0, 1)],
            },
            record={n: rng.gauss(0, 3) for n in FIELDS} | {"id": f"r-{i}"},
        )


def fill(url: str, count: int, now: datetime) -> None:
    engine = make_engine(url)
    sessions = session_factory(engine)
    batch: list[FlaggedRecord] = []
    for record in records(count, now):
        batch.append(record)
        if len(batch) == 5_000:
            write_flagged(sessions, batch, [MODEL], now=now)
            batch = []
    if batch:
        write_flagged(sessions, batch, [MODEL], now=now)
    if engine.dialect.name == "postgresql":  # what autovacuum does after a bulk load
        with engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE")
    engine.dispose()


def serve(url: str, port: int, limits: bool) -> None:
    """The server process: the app `latentwatch api` builds (loopback, no token), with the
    query-string limits as shipped, or (``limits=False``) so large they never apply."""
    # Imported here: only the server process needs them, and it runs with -P (see server()).
    from dataclasses import replace  # noqa: PLC0415

    import uvicorn  # noqa: PLC0415

    from api.app import create_app  # noqa: PLC0415
    from api.server import serving_settings  # noqa: PLC0415

    settings = serving_settings("127.0.0.1", None)
    if not limits:
        settings = replace(settings, max_query_bytes=10**9, max_query_params=10**9)
    engine = make_engine(url)
    app = create_app(settings, session_factory(engine))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


@contextmanager
def server(url: str, limits: bool = True) -> Iterator[str]:
    port = free_port()
    # -P: without this folder on sys.path, where this file would shadow the `api` package
    argv = [sys.executable, "-P", __file__, "--serve", url, "--port", str(port)]
    proc = subprocess.Popen([*argv, *([] if limits else ["--no-limits"])])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/health", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the API server for {url} did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    n: int

    def __str__(self) -> str:
        return f"p50 {self.p50_ms:7.1f} ms   p99 {self.p99_ms:7.1f} ms   (n={self.n})"


def measure(client: httpx.Client, paths: list[str], max_s: float = 60.0) -> Latency:
    """Latency of GETs of ``paths`` in turn, stopping early after ``max_s`` (at least 20)."""
    times: list[float] = []
    deadline = time.perf_counter() + max_s
    for path in paths:
        if len(times) >= 20 and time.perf_counter() > deadline:
            break
        start = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path} answered {response.status_code}: {response.text:.200}")
    times.sort()
    p99 = times[min(len(times) - 1, math.ceil(0.99 * len(times)) - 1)]
    return Latency(statistics.median(times), p99, len(times))


def attack(base: str) -> None:
    """The attacker process: the oversize request in a loop until SIGTERM, then how many
    were sent and how many got a 4xx, on stdout. http.client with the request line built
    once: the client's own cost stays small, as a real attacker's would."""
    counts = [0, 0]

    def report(signum: int, frame: object) -> None:
        print(counts[0], counts[1], flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, report)
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    path = f"/api/flagged?{OVERSIZE}"
    while True:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        counts[0] += 1
        counts[1] += 400 <= response.status < 500
        if response.will_close:
            connection.close()


@contextmanager
def attacker(base: str) -> Iterator[list[float]]:
    """One client, a process of its own (not this one's GIL), sending the oversize request in
    a loop; the list it yields gets [requests per second, share answered with a 4xx]."""
    argv = [sys.executable, "-P", __file__, "--attack", base]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)  # started and under way
    started = time.perf_counter()
    outcome: list[float] = []
    try:
        yield outcome
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
        sent, refused = (int(v) for v in out.split())
        outcome += [sent / (time.perf_counter() - started + 1.0), refused / max(sent, 1)]


def guard_rounds(url: str, rows: int, requests: int) -> None:
    print(f"\n1. GET /api/flagged/{{id}} on SQLite, {rows:,} rows, one client sending the oversize")
    print(
        f"   request ({len(OVERSIZE) / 1000:.0f} KB, 8,000 parameters) in a loop; {requests} "
        "requests per case (or a minute's worth), two rounds each"
    )
    rng = random.Random(1)
    results: dict[str, list[Latency]] = {}
    for limits in (True, False):
        label = "limits on (shipped)" if limits else "limits off (before)"
        with server(url, limits) as base, httpx.Client(base_url=base, timeout=60) as client:
            for _ in range(2):
                paths = [f"/api/flagged/{rng.randint(1, rows)}" for _ in range(requests)]
                results.setdefault(f"{label}, idle", []).append(measure(client, paths))
                with attacker(base) as outcome:
                    got = measure(client, paths)
                results.setdefault(f"{label}, under attack", []).append(got)
                print(
                    f"   ({label}: the attacker sent {outcome[0]:.0f} requests/s, "
                    f"{outcome[1]:.0%} answered 4xx)"
                )
    for label, rounds in results.items():
        worst = max(rounds, key=lambda r: r.p99_ms)
        print(f"   {label:<34} {worst}  (worse of 2 rounds)")


LIST_QUERIES = {
    "newest first (the page's default)": "/api/flagged?limit=25",
    "sort=score": "/api/flagged?limit=25&sort=score",
    "min_severity=50": "/api/flagged?limit=25&min_severity=50",
    "min_severity=80": "/api/flagged?limit=25&min_severity=80",
    "topic=logins": "/api/flagged?limit=25&topic=logins",
    "last 1 h": None,  # filled in: start = now - 1 h
    "topic + min_severity + sort=score": "/api/flagged?limit=25&topic=orders&min_severity=60"
    "&sort=score",
}


def matching(client: httpx.Client, path: str) -> str:
    """How many rows a filtered list query selects (its stats total), for the report."""
    url = httpx.URL(path)
    if url.path != "/api/flagged" or not any(
        name in url.params for name in ("min_severity", "topic", "start")
    ):
        return ""
    params = {k: v for k, v in url.params.items() if k not in ("limit", "sort", "cursor")}
    total = client.get("/api/stats", params={**params, "bucket": "366d"}).json()["total"]
    return f"  {total:,} rows pass"


def list_rounds(name: str, url: str, now: datetime, requests: int) -> None:
    print(f"\n2. list endpoint on {name}: p50 / p99 over {requests} requests each")
    hour_ago = (now - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    with server(url) as base, httpx.Client(base_url=base, timeout=60) as client:
        cursor = None
        depth = min(200, int(client.get("/api/stats?bucket=366d").json()["total"]) // 50)
        for _ in range(depth):
            params = {"limit": 25, **({"cursor": cursor} if cursor else {})}
            cursor = client.get("/api/flagged", params=params).json()["next_cursor"]
        queries = dict(LIST_QUERIES)
        queries[f"page {depth} (cursor)"] = f"/api/flagged?limit=25&cursor={cursor}"
        queries["last 1 h"] = f"/api/flagged?limit=25&start={hour_ago}"
        queries["/health (baseline: one round trip)"] = "/health"
        queries["stats, 7 d in 2 h buckets (timeline)"] = "/api/stats?bucket=2h"
        for label, path in queries.items():
            assert path is not None
            measure(client, [path] * 5)  # warm the caches
            print(f"   {label:<38} {measure(client, [path] * requests)}{matching(client, path)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guard-rows", type=int, default=20_000)
    parser.add_argument("--list-rows", type=int, default=120_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--postgres", help="a server URL whose user may CREATE DATABASE")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--no-limits", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--attack", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, not args.no_limits)
        return
    if args.attack:
        attack(args.attack)
        return
    from machine import describe  # noqa: PLC0415 - not in the server process (-P)

    print(describe())
    print("the machine is shared: compare each figure with its baseline in the same run")
    now = datetime.now(UTC)
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        small = f"sqlite:///{folder / 'guard.db'}"
        upgrade(small)
        fill(small, args.guard_rows, now)
        guard_rounds(small, args.guard_rows, args.requests)
        large = f"sqlite:///{folder / 'list.db'}"
        upgrade(large)
        started = time.perf_counter()
        fill(large, args.list_rows, now)
        print(
            f"\n(SQLite: {args.list_rows:,} rows written in {time.perf_counter() - started:.0f} s)"
        )
        list_rounds(f"SQLite, {args.list_rows:,} rows", large, now, args.requests)
        if args.postgres:
            new_database = stack.enter_context(throwaway_databases(args.postgres))
            pg = new_database("lw_bench_api")
            fill(pg, args.list_rows, now)
            list_rounds(f"PostgreSQL, {args.list_rows:,} rows", pg, now, args.requests)


if __name__ == "__main__":
    main()
