"""Human-readable model summary for `latentwatch inspect`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detector.detector import Detector
from detector.schema import FieldKind


def model_summary(detector: Detector, manifest: Mapping[str, Any]) -> str:
    schema, cal, rep = detector.schema, detector.calibrations, detector.report
    lines = [
        f"model {manifest['version']}  (format {manifest['format_version']}, "
        f"created {manifest['created_at']})",
        f"  schema {schema.fingerprint()}: {len(schema.fields)} features, encoded width "
        f"{schema.width}; id column: {schema.id_column or '-'}; timestamp column: "
        f"{schema.timestamp_column or '-'}",
    ]
    for spec in schema.fields:
        if spec.kind is FieldKind.NUMERIC:
            detail = f"center {spec.center:.4g}, scale {spec.scale:.4g}"
        elif spec.kind is FieldKind.CATEGORICAL:
            detail = f"{len(spec.categories)} categories + other"
        else:
            detail = f"share true {spec.center:.3f}"
        missing = f", missing {spec.missing_rate:.1%}" if spec.missing_rate else ""
        lines.append(f"    {spec.name:<24} {spec.kind.value:<11} {detail}{missing}")
    for name, why in schema.dropped:
        lines.append(f"    {name:<24} (not used: {why})")
    vae = detector.vae.config
    lines += [
        f"  VAE: input {vae.input_dim} -> hidden {vae.hidden_dim} -> latent {vae.latent_dim}",
        f"  reference clusters: {detector.mixture.n_components} "
        f"(weights {', '.join(f'{w:.2f}' for w in detector.mixture.weights)})",
        f"  calibration: {cal.score.size} held-out normal rows; false-alarm rate {cal.fpr:g} "
        f"-> threshold score {cal.threshold:.3f} nats",
        f"  training: {rep.fit_rows} rows, {rep.training.epochs} epochs / {rep.training.steps} "
        f"steps in {rep.training.seconds:.1f} s; best validation loss "
        f"{rep.training.best_validation_loss:.3f}; data fingerprint {rep.data_fingerprint}",
    ]
    source = manifest.get("source")
    if source:
        lines.append(f"  source: {source.get('path')} (sha256 {str(source.get('sha256'))[:16]})")
    return "\n".join(lines)
