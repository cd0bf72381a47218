"""The lifecycle's loop end to end: the core of `latentwatch demo --scenario drift`, with
shorter phases. A stream whose sizes shift, a candidate trained from the
topic without the live model's flags, shadowed, compared through the API and promoted, while a
consumer follows the registry (real broker, SQLite)."""

from __future__ import annotations

import io
from contextlib import ExitStack
from pathlib import Path

import pytest
from rich.console import Console

from latentwatch.drift_demo import DriftOptions, run_loop
from latentwatch.embedded import EmbeddedBroker

TOPIC = "drift-loop"


@pytest.mark.kafka
@pytest.mark.slow
def test_a_model_trained_from_the_shifted_topic_brings_the_flag_rate_back(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    options = DriftOptions(
        workdir=tmp_path,
        topic=TOPIC,
        phase_records=1500,
        rate=3000.0,
    )
    with ExitStack() as stack:
        result = run_loop(
            broker.bootstrap,
            f"sqlite:///{tmp_path / 'lw.db'}",
            options,
            stack,
            Console(file=io.StringIO()),
        )
    reference, drift, shadow, promoted = result.phases
    fpr = result.fpr

    # the shift shows in the drift measure and in the flag rate of normal records
    assert drift.drift_surprise > reference.drift_surprise
    assert drift.false_alarm_rate > 2 * fpr
    # the candidate came from the topic, was shadowed, compared, and is live now
    assert result.candidate_source == f"topic:{TOPIC}"
    assert result.excluded_by not in {result.first_version, result.candidate_version}
    assert result.live_version == result.candidate_version != result.first_version
    c = result.comparison
    assert (c["live"]["version"], c["shadow"]["version"]) == (
        result.first_version,
        result.candidate_version,
    )
    assert c["scored"] == shadow.normal + shadow.anomalous
    assert c["shadow"]["flag_rate"] < c["live"]["flag_rate"]
    # every flag of a phase carries the model that was live in it: the consumer switched
    assert drift.flagged_by == shadow.flagged_by == (result.first_version,)
    assert promoted.flagged_by == (result.candidate_version,)
    # after the promotion the flag rate is back nearer the calibrated one than under the drift
    assert abs(promoted.false_alarm_rate - fpr) < abs(drift.false_alarm_rate - fpr) / 2
