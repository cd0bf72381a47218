"""Models for the lifecycle tests, made from the session's cancer model without training it
again: the same model recalibrated (another version that reads the same records), one that
reads other fields, and a damaged copy."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from detector import artifact
from detector.calibration import threshold_for
from detector.detector import Detector
from detector.schema import SchemaOptions
from detector.training import TrainingConfig
from tests.support.cancer_model import Model
from tests.support.detector_data import FAST


def recalibrated(model: Model, directory: Path, fpr: float) -> Model:
    """``model`` calibrated to false-alarm rate ``fpr``: another version, same schema."""
    d = model.detector
    calibrations = replace(
        d.calibrations, threshold=threshold_for(d.calibrations.score, fpr), fpr=fpr
    )
    other = replace(d, calibrations=calibrations, config=replace(d.config, fpr=fpr), version="")
    path = directory / f"model-fpr-{fpr:g}"
    artifact.save(other, path)
    return Model(other, path, model.normal, model.anomalous)


def other_fields(model: Model, directory: Path) -> Path:
    """A small model of three of the cancer model's fields: it cannot read the topic's records
    as the cancer model does."""
    names = [f.name for f in model.detector.schema.fields][:3]
    rows = model.normal
    columns = {n: [r[n] for r in rows] for n in names}
    config = replace(FAST, training=TrainingConfig(max_steps=60, min_steps=20, patience=2))
    detector = Detector.fit(columns, SchemaOptions(), config)
    path = directory / "model-other-fields"
    artifact.save(detector, path)
    return path


def damaged(model: Model, directory: Path) -> Path:
    """A copy of ``model``'s directory whose weights file was cut short."""
    path = directory / "model-damaged"
    shutil.copytree(model.path, path)
    weights = path / artifact.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    return path
