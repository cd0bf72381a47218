"""The detector: a fitted schema, VAE, reference mixture and calibration, behind two verbs.

``Detector.fit`` learns what normal records look like; ``Detector.score`` says how unusual new
ones are (higher = more anomalous) and whether each crosses the calibrated threshold.
Explanations are built on demand by :mod:`detector.explain`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from detector.calibration import fit_calibration, threshold_for
from detector.encoding import EncodedBatch, encode_columns, encode_records
from detector.errors import DataError
from detector.mixture import ReferenceMixture, fit_mixture
from detector.schema import Columns, Schema, SchemaOptions, infer_schema
from detector.scoring import (
    SCORE_RULE,
    Calibrations,
    ScoreBatch,
    calibrated,
    combine,
    field_contributions,
    residual_variances,
)
from detector.training import ProgressCallback, TrainingConfig, TrainingSummary, train_vae
from detector.vae import VAE, VAEConfig

MIN_TRAINING_ROWS = 20


@dataclass(frozen=True)
class DetectorConfig:
    fpr: float = 0.01  # target false-alarm rate on normal records
    holdout_fraction: float = (
        0.2  # normal rows kept out of fitting, for early stopping + calibration
    )
    max_components: int = 8
    training: TrainingConfig = field(default_factory=TrainingConfig)


@dataclass(frozen=True)
class LatentMap:
    """A 2-D PCA projection of latent codes, for drawing the model's view of the data."""

    mean: np.ndarray  # [k]
    components: np.ndarray  # [k, 2]

    def project(self, latent: np.ndarray) -> np.ndarray:
        return (latent - self.mean) @ self.components


def fit_latent_map(codes: np.ndarray) -> LatentMap:
    mean = codes.mean(axis=0)
    _, _, vt = np.linalg.svd(codes - mean, full_matrices=False)
    components = np.zeros((codes.shape[1], 2))
    take = min(2, vt.shape[0])
    components[:, :take] = vt[:take].T
    return LatentMap(mean=mean, components=components)


@dataclass(frozen=True)
class FitReport:
    rows: int
    fit_rows: int
    holdout_rows: int
    training: TrainingSummary
    data_fingerprint: str


@dataclass
class Detector:
    schema: Schema
    vae: VAE
    mixture: ReferenceMixture
    variances: np.ndarray  # per encoded column
    cluster_shares: np.ndarray  # share of reference codes nearest to each cluster (drift baseline)
    calibrations: Calibrations
    latent_map: LatentMap
    config: DetectorConfig
    report: FitReport
    version: str = ""  # content-hash id, set when the model is saved or loaded
    # How outputs become nats (detector.scoring): a loaded model keeps the rule of its format.
    score_rule: int = SCORE_RULE

    @classmethod
    def fit(
        cls,
        columns: Columns,
        options: SchemaOptions | None = None,
        config: DetectorConfig | None = None,
        progress: ProgressCallback | None = None,
    ) -> Detector:
        """Learn normal records from columnar reference data (no labels)."""
        config = config or DetectorConfig()
        schema = infer_schema(columns, options or SchemaOptions())
        n_rows = schema.reference_rows
        if n_rows < MIN_TRAINING_ROWS:
            raise DataError(f"need at least {MIN_TRAINING_ROWS} normal rows to train, got {n_rows}")
        batch = encode_columns(schema, columns, n_rows)
        rows = batch.matrix[batch.valid].astype(np.float32)
        missing = batch.missing[batch.valid]
        order = np.random.default_rng(config.training.seed).permutation(len(rows))
        n_hold = max(round(config.holdout_fraction * len(rows)), 2)
        hold, fit = order[:n_hold], order[n_hold:]

        vae_config = VAEConfig.for_features(len(schema.fields), schema.width)
        vae, summary = train_vae(
            vae_config,
            rows[fit],
            rows[hold],
            config.training,
            progress,
            categorical=schema.categorical_slices,
        )
        latent, recon = _forward(vae, rows)
        variances = residual_variances(rows[fit], recon[fit], rows[hold], recon[hold], schema)
        mixture = fit_mixture(latent[fit], config.max_components, config.training.seed)
        _, nearest, _ = mixture.assess(latent[fit])
        shares = np.bincount(nearest, minlength=mixture.n_components) / len(nearest)

        density, _, _ = mixture.assess(latent[hold])
        contrib = field_contributions(schema, rows[hold], recon[hold], variances, missing[hold])
        reconstruction = contrib.sum(axis=1)
        score_cal = fit_calibration(combine(density, reconstruction))
        calibrations = Calibrations(
            density=fit_calibration(density),
            reconstruction=fit_calibration(reconstruction),
            score=score_cal,
            threshold=threshold_for(score_cal, config.fpr),
            fpr=config.fpr,
        )
        fingerprint = hashlib.sha256(rows.tobytes()).hexdigest()[:16]
        report = FitReport(
            rows=len(rows),
            fit_rows=len(fit),
            holdout_rows=len(hold),
            training=summary,
            data_fingerprint=fingerprint,
        )
        return cls(
            schema,
            vae,
            mixture,
            variances,
            shares,
            calibrations,
            fit_latent_map(latent[fit]),
            config,
            report,
        )

    def score_columns(
        self,
        columns: Columns,
        n_rows: int,
        reasons: Sequence[str | None] | None = None,
    ) -> ScoreBatch:
        """Score columnar data; rows with bad values (or a reason given by the reader) get a
        reason instead of a score."""
        given = list(reasons) if reasons is not None else None
        return self.score_encoded(encode_columns(self.schema, columns, n_rows, given))

    def score_records(self, records: Sequence[object]) -> ScoreBatch:
        """Score records (mappings); unknown fields are ignored, absent ones count as missing."""
        return self.score_encoded(encode_records(self.schema, records))

    def score_encoded(self, batch: EncodedBatch) -> ScoreBatch:
        n = len(batch.valid)
        every_row = bool(batch.valid.all())  # the usual batch: no row to leave out or fill in
        ok = np.flatnonzero(batch.valid)
        rows = batch.matrix if every_row else batch.matrix[ok]
        missing = batch.missing if every_row else batch.missing[ok]
        latent, recon = _forward(self.vae, rows)
        density, cluster, distance = self.mixture.assess(latent)
        contrib = field_contributions(
            self.schema, rows, recon, self.variances, missing, rule=self.score_rule
        )
        reconstruction = contrib.sum(axis=1)
        cal = calibrated(self.calibrations, density, reconstruction)

        def full(values: np.ndarray, fill: float | int | bool) -> np.ndarray:
            if every_row:
                return values
            out = np.full((n, *values.shape[1:]), fill, dtype=values.dtype)
            out[ok] = values
            return out

        return ScoreBatch(
            score=full(cal.score, np.nan),
            p_value=full(cal.p_value, np.nan),
            severity=full(cal.severity, np.nan),
            flagged=full(cal.flagged, False),
            density=full(density, np.nan),
            density_p_value=full(cal.density_p_value, np.nan),
            reconstruction=full(reconstruction, np.nan),
            reconstruction_p_value=full(cal.reconstruction_p_value, np.nan),
            cluster=full(cluster, -1),
            cluster_distance=full(distance, np.nan),
            contributions=full(contrib, np.nan),
            expected=full(recon, np.nan),
            latent=full(latent, np.nan),
            valid=batch.valid,
            reasons=batch.reasons,
        )


def _forward(vae: VAE, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and their reconstructions (deterministic: no sampling at scoring time)."""
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        mean = vae.encode_mean(x)
        recon = vae.decode(mean)
    return mean.numpy().astype(np.float64), recon.numpy()
