"""`latentwatch consume` options: --help readable at 80 columns with every option described
and its environment variable whole; --isolation-level from the command line, the environment
or a config file, reaching the consumer's settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import latentwatch.service
from latentwatch.cli import app
from latentwatch.settings import ConsumeSettings
from streams.settings import KafkaSettings


def consume_options() -> list[Any]:
    """click's options of `consume` (typer's own copy of click: read by duck typing)."""
    consume = typer.main.get_command(app).commands["consume"]  # type: ignore[attr-defined]
    return [p for p in consume.params if p.param_type_name == "option"]


def test_consume_help_is_readable_at_80_columns() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "latentwatch", "consume", "--help"],
        env={**os.environ, "COLUMNS": "80"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = proc.stdout.splitlines()
    assert max(map(len, lines)) <= 80, "\n".join(line for line in lines if len(line) > 80)
    assert "…" not in proc.stdout  # nothing cut
    words = " ".join(proc.stdout.split())
    for param in consume_options():
        if param.name == "help":
            continue
        assert param.help, f"--{param.name} has no description"
        assert param.opts[0] in words
        assert param.envvar, f"--{param.name} has no environment variable"
        assert f"env var: {param.envvar}" in words.replace("- ", "-"), param.envvar
    assert re.search(r"gzip, snappy, lz4 (and|or) zstd", words)  # compression is no surprise


@pytest.fixture
def settings_seen(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The ConsumeSettings `consume` would run with (the consumer itself is not started)."""
    seen: list[Any] = []
    monkeypatch.setattr(latentwatch.service, "run_consumer", seen.append)
    return seen


BASE = ["consume", "--model", "m", "--bootstrap", "k:9092", "--topic", "t", "--db", "sqlite://"]


def test_the_defaults_of_consume_are_the_settings_dataclasses(settings_seen: list[Any]) -> None:
    """With only the required options, `consume` runs with every default of ConsumeSettings
    and of the layers' settings it is made of (one source: the CLI restates none)."""
    result = CliRunner().invoke(app, BASE, env={})
    assert result.exit_code == 0, result.output
    expected = ConsumeSettings(
        model=Path("m"), db="sqlite://", kafka=KafkaSettings("k:9092", topics=("t",))
    )
    assert settings_seen[-1] == expected


def test_isolation_level_from_command_line_environment_and_config_file(
    settings_seen: list[Any], tmp_path: Path
) -> None:
    runner = CliRunner()
    assert runner.invoke(app, BASE).exit_code == 0
    assert settings_seen[-1].kafka.isolation_level == "read_uncommitted"  # Kafka's default

    result = runner.invoke(app, [*BASE, "--isolation-level", "read_committed"])
    assert result.exit_code == 0, result.output
    assert settings_seen[-1].kafka.isolation_level == "read_committed"

    env = {"LATENTWATCH_ISOLATION_LEVEL": "read_committed"}
    assert runner.invoke(app, BASE, env=env).exit_code == 0
    assert settings_seen[-1].kafka.isolation_level == "read_committed"

    config = tmp_path / "latentwatch.toml"
    config.write_text('[consume]\nisolation-level = "read_committed"\n')
    assert runner.invoke(app, [*BASE, "--config", str(config)]).exit_code == 0
    assert settings_seen[-1].kafka.isolation_level == "read_committed"

    refused = runner.invoke(app, [*BASE, "--isolation-level", "committed"])
    assert refused.exit_code == 2 and "read_committed" in refused.output


def test_nearest_normal_records_can_be_turned_off(settings_seen: list[Any]) -> None:
    runner = CliRunner()
    assert runner.invoke(app, BASE, env={}).exit_code == 0
    assert settings_seen[-1].loop.nearest_normal is True
    assert runner.invoke(app, [*BASE, "--no-nearest-normal"], env={}).exit_code == 0
    assert settings_seen[-1].loop.nearest_normal is False
    env = {"LATENTWATCH_NEAREST_NORMAL": "false"}
    assert runner.invoke(app, BASE, env=env).exit_code == 0
    assert settings_seen[-1].loop.nearest_normal is False
