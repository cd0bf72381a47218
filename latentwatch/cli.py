"""The `latentwatch` command line. Each command parses options, wires adapters together and
calls into the packages; user errors become one line on stderr and a non-zero exit."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from detector.errors import LatentwatchError

app = typer.Typer(
    name="latentwatch",
    help="Learn what normal records look like; watch a Kafka stream for the ones that are not.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

EXIT_USER_ERROR = 1


def fail(message: str) -> NoReturn:
    typer.echo(f"latentwatch: error: {message}", err=True)
    raise typer.Exit(EXIT_USER_ERROR)


def _split(values: list[str] | None) -> tuple[str, ...]:
    """`--exclude a --exclude b` and `--exclude a,b` both work."""
    return tuple(v for item in values or () for v in item.split(",") if v)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Normal reference records: .csv, .jsonl or .parquet")],
    out: Annotated[Path, typer.Option(help="Model directory to create")],
    exclude: Annotated[
        list[str] | None, typer.Option(help="Column(s) that are not features, e.g. a label")
    ] = None,
    id_column: Annotated[
        str | None, typer.Option(help="Column identifying a record (carried into scores)")
    ] = None,
    timestamp_column: Annotated[
        str | None, typer.Option(help="Column with the record's event time")
    ] = None,
    fpr: Annotated[float, typer.Option(help="Target false-alarm rate on normal records")] = 0.01,
    seed: Annotated[int, typer.Option(help="Random seed; same data + seed = same model")] = 0,
    threads: Annotated[int, typer.Option(help="CPU threads for torch")] = 1,
) -> None:
    """Fit the feature encoding, VAE, reference clusters and calibration; save a model."""
    from dataclasses import replace

    from latentwatch.datafiles import read_table

    if not 0.0 < fpr < 1.0:
        fail(f"--fpr must be between 0 and 1, got {fpr}")
    raw = [c for c in (id_column, timestamp_column) if c]
    table = read_table(data, keep_raw=raw)
    bad = [(i, r) for i, r in enumerate(table.reasons) if r]
    if bad:
        fail(f"{data}: {len(bad)} unreadable row(s), first: {bad[0][1]}")

    import torch  # only now: bad input fails fast, without loading torch

    from detector.artifact import save
    from detector.detector import Detector, DetectorConfig
    from detector.schema import SchemaOptions
    from detector.training import TrainingConfig
    from latentwatch.progress import training_progress

    torch.set_num_threads(max(threads, 1))
    options = SchemaOptions(
        id_column=id_column, timestamp_column=timestamp_column, exclude=_split(exclude)
    )
    config = DetectorConfig(fpr=fpr, training=replace(TrainingConfig(), seed=seed))
    with training_progress(config.training.max_steps) as progress:
        detector = Detector.fit(table.columns, options, config, progress)
    version = save(detector, out, extra={"path": str(data), "sha256": _file_sha256(data)})
    rep = detector.report
    typer.echo(
        f"model {version} saved to {out}: {len(detector.schema.fields)} features, "
        f"{detector.mixture.n_components} reference clusters, latent dim "
        f"{detector.vae.config.latent_dim}; trained on {rep.fit_rows} rows, calibrated on "
        f"{rep.holdout_rows} ({rep.training.epochs} epochs, {rep.training.seconds:.1f} s)"
    )
    for name, why in detector.schema.dropped:
        typer.echo(f"  column {name!r} not used: {why}", err=True)


SCORE_COLUMNS = (
    "score",
    "severity",
    "p_value",
    "flagged",
    "density",
    "density_p_value",
    "reconstruction",
    "reconstruction_p_value",
    "cluster",
    "cluster_distance",
    "top_features",
    "reason",
)


@app.command()
def score(
    model: Annotated[Path, typer.Option(help="Model directory from `latentwatch train`")],
    data: Annotated[Path, typer.Option(help="Records to score: .csv, .jsonl or .parquet")],
    out: Annotated[Path, typer.Option(help="Output CSV, one row per input row, in order")],
    top: Annotated[int, typer.Option(help="How many top features to list per row")] = 3,
    threads: Annotated[int, typer.Option(help="CPU threads for torch")] = 1,
) -> None:
    """Score records with a trained model and write one CSV row per input row."""
    import torch

    from detector.artifact import load
    from detector.errors import SchemaMismatchError
    from detector.explain import top_feature_names
    from latentwatch.datafiles import read_table, write_csv

    torch.set_num_threads(max(threads, 1))
    detector, _ = load(model)
    schema = detector.schema
    table = read_table(data, keep_raw=[schema.id_column] if schema.id_column else [])
    known = [name for name in schema.names if name in table.columns]
    if not known:
        raise SchemaMismatchError(
            f"{data} has none of the model's {len(schema.names)} feature columns "
            f"({', '.join(schema.names[:8])}{', ...' if len(schema.names) > 8 else ''})"
        )
    absent = [name for name in schema.names if name not in table.columns]
    if absent:
        typer.echo(
            f"latentwatch: warning: {len(absent)} feature column(s) absent, scored as "
            f"missing: {', '.join(absent[:8])}",
            err=True,
        )
    scores = detector.score_columns(table.columns, table.n_rows, table.reasons)
    names = top_feature_names(schema, scores, top)
    ids = table.columns.get(schema.id_column) if schema.id_column else None

    def rows() -> Iterator[list[Any]]:
        for i in range(table.n_rows):
            ok = bool(scores.valid[i])
            row: list[Any] = [ids[i]] if ids is not None else []
            row += [
                float(scores.score[i]),
                float(scores.severity[i]),
                float(scores.p_value[i]),
                int(scores.flagged[i]),
                float(scores.density[i]),
                float(scores.density_p_value[i]),
                float(scores.reconstruction[i]),
                float(scores.reconstruction_p_value[i]),
                int(scores.cluster[i]),
                float(scores.cluster_distance[i]),
                ";".join(names[i]),
                "" if ok else scores.reasons[i],
            ]
            yield ["" if isinstance(v, float) and math.isnan(v) else v for v in row]

    header = ([schema.id_column] if ids is not None and schema.id_column else []) + list(
        SCORE_COLUMNS
    )
    write_csv(out, header, rows())
    n_bad = int((~scores.valid).sum())
    typer.echo(
        f"scored {table.n_rows - n_bad} of {table.n_rows} rows with model "
        f"{detector.version}: {int(scores.flagged.sum())} flagged, {n_bad} rejected; "
        f"wrote {out}"
    )


@app.command()
def inspect(
    model: Annotated[Path, typer.Option(help="Model directory")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole manifest as JSON")
    ] = False,
) -> None:
    """Print a model's summary: schema, clusters, calibration, training."""
    from detector.artifact import load
    from latentwatch.summary import model_summary

    detector, manifest = load(model)
    if as_json:
        typer.echo(json.dumps(manifest, indent=2, sort_keys=True))
    else:
        typer.echo(model_summary(detector, manifest))


def main() -> None:
    """Console entry point: user errors print one line, never a traceback."""
    try:
        app()
    except LatentwatchError as exc:
        typer.echo(f"latentwatch: error: {exc}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        typer.echo("latentwatch: interrupted", err=True)
        sys.exit(130)
