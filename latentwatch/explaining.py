"""The API's explainer: models loaded from directories, a posted record scored and explained
against one of them as the consumer explains a flagged record (the API itself never loads a
model)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detector import artifact, counterfactual
from detector.detector import Detector
from detector.explain import explain_rows
from streams.scoring import EXPLAINED_FEATURES


def explain_record(
    detector: Detector, record: dict[str, Any], top: int = EXPLAINED_FEATURES
) -> dict[str, Any]:
    """The record's score and explanation, its nearest normal record included (also for a
    record the model would not flag: then it changes nothing). ValueError: it cannot be
    scored, with the reason."""
    scores = detector.score_records([record])
    if not scores.valid[0]:
        raise ValueError(f"the record cannot be scored: {scores.reasons[0]}")
    walk = counterfactual.nearest_normal_records(detector, [record])[0]
    why = explain_rows(
        detector.schema,
        detector.latent_map,
        scores,
        [0],
        actual=[record],
        top=top,
        attributions=walk.attributions[None],
    )[0]
    return {
        "model_version": detector.version,
        "score": float(scores.score[0]),
        "p_value": float(scores.p_value[0]),
        "flagged": bool(scores.flagged[0]),
        "explanation": why.to_dict()
        | {"nearest_normal": counterfactual.to_dict(walk, detector.latent_map, top)},
    }


class ModelExplainer:
    """Explains with the models of the given directories, by version."""

    def __init__(self, directories: Sequence[Path]) -> None:
        self.models: dict[str, Detector] = {}
        for directory in directories:
            detector, _ = artifact.load(directory)
            self.models[detector.version] = detector

    def __call__(self, version: str, record: dict[str, Any]) -> dict[str, Any]:
        detector = self.models.get(version)
        if detector is None:
            served = ", ".join(sorted(self.models)) or "none"
            raise LookupError(f"model {version} is not served here (served: {served})")
        return explain_record(detector, record)
