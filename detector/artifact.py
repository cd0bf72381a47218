"""The versioned model directory: a JSON manifest plus two safetensors files. No pickle.

    manifest.json         format, version id, schema, configs, calibration summary, training
                          summary, data fingerprint, created_at, and a sha256 of each file
    weights.safetensors   the VAE's state_dict (rebuilt from the manifest's VAE config)
    arrays.safetensors    reference mixture, residual variances, calibration scores, latent map

The version id is a hash of everything that determines scores, so two trainings that produce
the same model get the same id. The manifest is written last: a directory without one was
never completely written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import safetensors.torch
from safetensors import SafetensorError

from common.errors import os_error_reason
from detector.calibration import Calibration
from detector.detector import Detector, DetectorConfig, FitReport, LatentMap
from detector.errors import ArtifactError
from detector.mixture import ReferenceMixture
from detector.schema import Schema
from detector.scoring import LEGACY_RULE, Calibrations
from detector.training import TrainingConfig, TrainingSummary
from detector.vae import VAE, VAEConfig

FORMAT = "latentwatch-model"
# 2: calibrations record their tail_points (the predictive tail, detector/calibration.py);
# format 1 models still load and keep the plain exponential tail they were calibrated with.
# 3: score rule 3 (detector/scoring.py): categorical fields priced by the decoder's softmax,
# resolution-step variance floors, the two terms' surprises added; fields carry their step.
# Format 1 and 2 models keep rule 2, the one their calibration was computed with.
FORMAT_VERSION = 3
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
ARRAYS = "arrays.safetensors"
_CALIBRATIONS = ("density", "reconstruction", "score")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _arrays(detector: Detector) -> dict[str, np.ndarray]:
    out = {
        "variances": detector.variances,
        "cluster_shares": detector.cluster_shares,
        "mixture.weights": detector.mixture.weights,
        "mixture.means": detector.mixture.means,
        "mixture.precision_cholesky": detector.mixture.precision_cholesky,
        "latent_map.mean": detector.latent_map.mean,
        "latent_map.components": detector.latent_map.components,
    }
    for name in _CALIBRATIONS:
        out[f"calibration.{name}"] = getattr(detector.calibrations, name).reference
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _calibration_summary(cal: Calibration) -> dict[str, float | int | None]:
    return {
        "tail_start": cal.tail_start,
        "tail_scale": cal.tail_scale,
        "tail_p": cal.tail_p,
        "tail_points": cal.tail_points,
        "size": cal.size,
    }


def _latent_map_summary(detector: Detector) -> dict[str, Any]:
    """The reference clusters on the 2-D latent map, as plain JSON: enough for a viewer (the
    query API's explorer) to draw the model's view of the data without loading the model."""
    lm, mix = detector.latent_map, detector.mixture
    clusters = []
    for c in range(mix.n_components):
        chol = mix.precision_cholesky[c]
        covariance = np.linalg.inv(chol @ chol.T)
        projected = lm.components.T @ covariance @ lm.components  # 2x2
        clusters.append(
            {
                "cluster": c,
                "weight": float(mix.weights[c]),
                "share": float(detector.cluster_shares[c]),
                "center_2d": [float(v) for v in lm.project(mix.means[c][None, :])[0]],
                "covariance_2d": [[float(v) for v in row] for row in projected],
            }
        )
    return {"method": "pca", "clusters": clusters}


def _model_content(detector: Detector) -> dict[str, Any]:
    """The manifest fields that determine scores (hashed into the version id)."""
    cals = detector.calibrations
    return {
        "schema": detector.schema.to_dict(),
        "vae": dataclasses.asdict(detector.vae.config),
        "config": dataclasses.asdict(detector.config),
        "calibration": {
            **{name: _calibration_summary(getattr(cals, name)) for name in _CALIBRATIONS},
            "threshold": cals.threshold,
            "fpr": cals.fpr,
        },
        "mixture": {"n_components": detector.mixture.n_components},
        "score_rule": detector.score_rule,
        "latent_map": _latent_map_summary(detector),
    }


def save(
    detector: Detector,
    directory: str | os.PathLike[str],
    source: Path | None = None,
    now: datetime | None = None,
) -> str:
    """Write the model directory (created if needed) and return the version id; ``source`` is
    the training data file, recorded with its sha256."""
    path = Path(directory)
    try:
        return _write(detector, path, source, now)
    except OSError as exc:  # no permission, a file where a folder belongs, a full disk
        raise ArtifactError(f"cannot write a model to {path}: {os_error_reason(exc)}") from None
    except SafetensorError as exc:  # the same, met while writing the weights or arrays
        raise ArtifactError(f"cannot write a model to {path}: {exc}") from None


def _write(detector: Detector, path: Path, source: Path | None, now: datetime | None) -> str:
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"cannot write a model to {path}: it is a file, not a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST).exists():
        raise ArtifactError(
            f"refusing to write a model into {path}: the directory is not empty "
            "and holds no latentwatch model; choose an empty or new directory"
        )
    path.mkdir(parents=True, exist_ok=True)
    (path / MANIFEST).unlink(missing_ok=True)  # the directory is incomplete until we finish
    safetensors.torch.save_file(detector.vae.state_dict(), str(path / WEIGHTS))
    safetensors.numpy.save_file(_arrays(detector), str(path / ARRAYS))
    files = {name: _sha256(path / name) for name in (WEIGHTS, ARRAYS)}
    content = _model_content(detector)
    version = hashlib.sha256(
        json.dumps({"content": content, "files": files}, sort_keys=True).encode()
    ).hexdigest()[:12]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "version": version,
        "created_at": (now or datetime.now(UTC)).isoformat().replace("+00:00", "Z"),
        **content,
        "training": {**dataclasses.asdict(detector.report)},
        "files": files,
        **({"source": {"path": str(source), "sha256": _sha256(source)}} if source else {}),
    }
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(path / MANIFEST)
    detector.version = version
    return version


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a model directory, checked for format and version."""
    path = Path(directory)
    if not path.is_dir():
        raise ArtifactError(f"model directory {path} does not exist")
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise ArtifactError(
            f"{path} is not a latentwatch model: no {MANIFEST} "
            "(train one with `latentwatch train --data FILE --out DIR`)"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is damaged: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(
            f"{path} is not a latentwatch model: {MANIFEST} has no 'format: {FORMAT}'"
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} was written by a newer latentwatch (model format {version}, "
            f"this version reads up to {FORMAT_VERSION}); upgrade latentwatch"
        )
    return manifest


def _check_files(path: Path, manifest: Mapping[str, Any]) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != {WEIGHTS, ARRAYS}:
        raise ArtifactError(f"{path / MANIFEST} is damaged: it does not list the model files")
    for name, expected in files.items():
        if not (path / name).exists():
            raise ArtifactError(f"model {path} is incomplete: {name} is missing")
        if _sha256(path / name) != expected:
            raise ArtifactError(
                f"model {path} is damaged: {name} does not match its checksum "
                "in the manifest; retrain or restore the directory"
            )


def load(directory: str | os.PathLike[str]) -> tuple[Detector, dict[str, Any]]:
    """Load a model directory; every failure is an ArtifactError naming what is wrong."""
    path = Path(directory)
    manifest = read_manifest(path)
    _check_files(path, manifest)
    try:
        arrays = safetensors.numpy.load_file(str(path / ARRAYS))
        state = safetensors.torch.load_file(str(path / WEIGHTS))
        detector = _rebuild(manifest, arrays, state)
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError) as exc:
        raise ArtifactError(f"model {path} is damaged or inconsistent: {exc}") from None
    return detector, manifest


def _rebuild(
    manifest: Mapping[str, Any], arrays: Mapping[str, np.ndarray], state: Mapping[str, Any]
) -> Detector:
    vae = VAE(VAEConfig(**manifest["vae"]))
    vae.load_state_dict(state, strict=True)
    vae.eval()
    cal_meta = manifest["calibration"]
    predictive_tail = manifest["format_version"] >= 2
    rule = int(manifest.get("score_rule", LEGACY_RULE))  # models before format 3: rule 2

    def calibration(name: str) -> Calibration:
        meta = cal_meta[name]
        return Calibration(
            reference=arrays[f"calibration.{name}"],
            tail_start=float(meta["tail_start"]),
            tail_scale=float(meta["tail_scale"]),
            tail_p=float(meta["tail_p"]),
            tail_points=int(meta["tail_points"]) if predictive_tail else None,
        )

    calibrations = Calibrations(
        density=calibration("density"),
        reconstruction=calibration("reconstruction"),
        score=calibration("score"),
        threshold=float(cal_meta["threshold"]),
        fpr=float(cal_meta["fpr"]),
    )
    config_data = dict(manifest["config"])
    config = DetectorConfig(
        **{**config_data, "training": TrainingConfig(**config_data["training"])}
    )
    train = dict(manifest["training"])
    report = FitReport(**{**train, "training": TrainingSummary(**train["training"])})
    return Detector(
        schema=Schema.from_dict(manifest["schema"]),
        vae=vae,
        mixture=ReferenceMixture(
            weights=arrays["mixture.weights"],
            means=arrays["mixture.means"],
            precision_cholesky=arrays["mixture.precision_cholesky"],
        ),
        variances=arrays["variances"],
        cluster_shares=arrays["cluster_shares"],
        calibrations=calibrations,
        latent_map=LatentMap(
            mean=arrays["latent_map.mean"], components=arrays["latent_map.components"]
        ),
        config=config,
        report=report,
        version=str(manifest["version"]),
        score_rule=rule,
    )
