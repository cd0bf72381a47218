"""A real Prometheus on a free loopback port, for tests that check metrics, rules and alerts
end to end. A plain module (import it), not a fixture file::

    from prometheus_server import run_prometheus

    with run_prometheus(["127.0.0.1:9464"], [ALERTS], tmp_path) as prom:
        prom.wait_for("latentwatch_records_scored_total", lambda r: len(r) > 0, timeout_s=30)

Targets are scraped under job ``latentwatch`` (the job LatentwatchTargetDown watches). The first
scrape lands about 5 s after start (Prometheus throttles target discovery): poll with
:meth:`PrometheusServer.wait_for`, never sleep.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

READY_TIMEOUT_S = 30.0

Result = list[dict[str, Any]]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class PrometheusServer:
    url: str  # http://127.0.0.1:PORT
    process: subprocess.Popen[bytes]
    log_path: Path
    config_path: Path

    def _get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params} answered {body}")
        return body["data"]

    def query(self, expr: str) -> Result:
        """Instant query at the current time: the ``result`` list of /api/v1/query."""
        data = self._get("/api/v1/query", query=expr)
        result = data["result"]
        if data["resultType"] == "scalar":  # [time, "value"]: shape it like a vector
            return [{"metric": {}, "value": result}]
        return list(result)

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[Result], bool],
        timeout_s: float = 30.0,
        poll_s: float = 0.25,
    ) -> Result:
        """Poll ``expr`` until ``predicate(result)`` holds; fail with the last result."""
        deadline = time.monotonic() + timeout_s
        result: Result = []
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{expr!r} did not satisfy the condition within {timeout_s} s; last result: "
                    f"{result}\nPrometheus log tail:\n{self.log_tail()}"
                )
            time.sleep(poll_s)

    def alerts(self) -> Result:
        """Active alerts (pending and firing) from /api/v1/alerts."""
        return list(self._get("/api/v1/alerts")["alerts"])

    def rules(self) -> Result:
        """Every loaded rule from /api/v1/rules, its group's rules in order: name, query,
        health ("ok", "err", "unknown" before the first evaluation), lastError,
        lastEvaluation and, for alerts, state."""
        groups = self._get("/api/v1/rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def set_targets(self, targets: list[str]) -> None:
        """Scrape ``targets`` from now on (rewrites the configuration and reloads it): a target
        left out disappears as from service discovery."""
        document = yaml.safe_load(self.config_path.read_text())
        document["scrape_configs"] = _scrape_configs(targets)
        self.config_path.write_text(yaml.safe_dump(document))
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, f"reload answered {response.status}"

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _scrape_configs(targets: list[str]) -> list[dict[str, Any]]:
    """Job latentwatch, even without targets: a job removed by a reload leaves its series to
    go stale after 5 minutes, a target removed from a job gets stale markers at once."""
    return [{"job_name": "latentwatch", "static_configs": [{"targets": targets}]}]


def _config(
    targets: list[str],
    rule_files: list[Path],
    scrape_interval: str,
    evaluation_interval: str,
) -> dict[str, Any]:
    return {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": [str(Path(f).resolve()) for f in rule_files],
        "scrape_configs": _scrape_configs(targets),
    }


def _wait_ready(server: PrometheusServer) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"prometheus exited with code {server.process.returncode} at start:\n"
                f"{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"prometheus was not ready after {READY_TIMEOUT_S} s:\n{server.log_tail()}")


@contextmanager
def run_prometheus(
    targets: list[str],
    rule_files: list[Path],
    tmp_path: Path,
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
) -> Iterator[PrometheusServer]:
    """Start Prometheus scraping ``targets`` (host:port) with ``rule_files``, data and log in
    ``tmp_path``; stop it at exit. Fails (never skips) when the binary is missing."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(
            "prometheus is not installed: run `make system-deps` (Debian package prometheus)",
            pytrace=False,
        )
    directory = tmp_path / "prometheus"
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(_config(targets, rule_files, scrape_interval, evaluation_interval))
    )
    port = _free_port()
    log_path = directory / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",  # POST /-/reload (set_targets)
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = PrometheusServer(f"http://127.0.0.1:{port}", process, log_path, config)
    try:
        _wait_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
