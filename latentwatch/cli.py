"""The `latentwatch` command line. Each command parses options, wires adapters together and
calls into the packages; user errors become one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from latentwatch.models_cli import models_app, rescore
from latentwatch.options import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    EXIT_USER_ERROR,
    ConfigOption,
    env_var,
    error_line,
    fail,
    parse_kafka_options,
    setup_logging,
    split_values,
)
from latentwatch.settings import METRICS_PORT, ConsumeSettings
from streams.messages import DecodePolicy
from streams.settings import IsolationLevel, KafkaSettings, LoopSettings

app = typer.Typer(
    name="latentwatch",
    help="Learn what normal records look like; watch a Kafka stream for the ones that are not.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: readable at 80 columns, nothing cut
    add_completion=False,
)


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Model directory to create")],
    data: Annotated[
        Path | None,
        typer.Option(help="Normal reference records: .csv, .jsonl or .parquet (or --from-topic)"),
    ] = None,
    from_topic: Annotated[
        str | None, typer.Option(help="Read the reference records from this topic instead")
    ] = None,
    bootstrap: Annotated[
        str | None, typer.Option(envvar=env_var("BOOTSTRAP"), help="Kafka brokers (--from-topic)")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="--from-topic: the records of the last AGE, e.g. 24h")
    ] = None,
    from_: Annotated[
        str | None, typer.Option("--from", help="--from-topic: range start (ISO time or age)")
    ] = None,
    to: Annotated[str | None, typer.Option(help="--from-topic: range end (default: now)")] = None,
    exclude_flagged_by: Annotated[
        str | None,
        typer.Option(help="--from-topic: leave out what this registered model VERSION flags"),
    ] = None,
    register_as: Annotated[
        str | None,
        typer.Option(help="--from-topic: register the model and make it the topic's 'shadow'"),
    ] = None,
    db: Annotated[
        str | None, typer.Option(envvar=env_var("DB"), help="Database of the model registry")
    ] = None,
    store: Annotated[
        Path | None, typer.Option(envvar=env_var("MODEL_STORE"), help="Model store folder")
    ] = None,
    kafka_option: Annotated[
        list[str] | None,
        typer.Option(envvar=env_var("KAFKA_OPTIONS"), help="--from-topic: name=value"),
    ] = None,
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
    if (data is None) == (from_topic is None):
        fail("give the reference records with --data FILE or --from-topic TOPIC (one of them)")
    stream = None
    if from_topic is not None:
        from latentwatch.models_cli import read_topic_for_training

        stream = read_topic_for_training(
            from_topic,
            bootstrap=bootstrap,
            window=(from_ or since, to),
            exclude_flagged_by=exclude_flagged_by,
            register_as=register_as,
            db=db,
            store=store,
            kafka_options=parse_kafka_options(kafka_option),
        )
        table = stream.table
    else:
        assert data is not None
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
        id_column=id_column, timestamp_column=timestamp_column, exclude=split_values(exclude)
    )
    config = DetectorConfig(fpr=fpr, training=replace(TrainingConfig(), seed=seed))
    with training_progress(config.training.max_steps) as progress:
        detector = Detector.fit(table.columns, options, config, progress)
    version = save(detector, out, source=data)
    rep = detector.report
    typer.echo(
        f"model {version} saved to {out}: {len(detector.schema.fields)} features, "
        f"{detector.mixture.n_components} reference clusters, latent dim "
        f"{detector.vae.config.latent_dim}; trained on {rep.fit_rows} rows, calibrated on "
        f"{rep.holdout_rows} ({rep.training.epochs} epochs, {rep.training.seconds:.1f} s)"
    )
    for name, why in detector.schema.dropped:
        typer.echo(f"  column {name!r} not used: {why}", err=True)
    if stream is not None:
        from latentwatch.models_cli import register_trained

        register_trained(out, stream)


# The numeric columns of `latentwatch score`'s CSV, in order: a ScoreBatch field each, and the
# type it is written as; the top features, the reject reason and the nearest normal follow.
_NUMBER_COLUMNS: tuple[tuple[str, type[float] | type[int]], ...] = (
    ("score", float),
    ("severity", float),
    ("p_value", float),
    ("flagged", int),
    ("density", float),
    ("density_p_value", float),
    ("reconstruction", float),
    ("reconstruction_p_value", float),
    ("cluster", int),
    ("cluster_distance", float),
)
SCORE_COLUMNS = (
    *(name for name, _ in _NUMBER_COLUMNS),
    "top_features",
    "reason",
    "nearest_normal",
)


def _nearest_normal_column(
    detector: Any, columns: Any, scores: Any, names: list[list[str]], top: int
) -> dict[int, str]:
    """For each flagged row: its nearest normal record's changes ("field: actual -> normal",
    largest attribution first); its top features become the fields by attribution."""
    from detector.counterfactual import nearest_normal_records
    from detector.encoding import plain_value

    rows = [int(i) for i in scores.flagged.nonzero()[0]]
    records = [
        {n: plain_value(columns[n][i]) for n in detector.schema.names if n in columns} for i in rows
    ]
    out = {}
    for i, walk in zip(rows, nearest_normal_records(detector, records), strict=True):
        order = walk.ranking(scores.contributions[i])
        names[i] = [detector.schema.names[j] for j in order[:top]]
        out[i] = "; ".join(f"{c.name}: {c.actual} -> {c.normal}" for c in walk.changes)
    return out


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
    from detector.schema import FieldKind
    from latentwatch.datafiles import read_table, write_csv

    torch.set_num_threads(max(threads, 1))
    detector, _ = load(model)
    schema = detector.schema
    text = [f.name for f in schema.fields if f.kind is FieldKind.CATEGORICAL]
    table = read_table(data, keep_raw=[c for c in (schema.id_column, *text) if c])
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
    ids = table.columns.get(schema.id_column) if schema.id_column else None
    if schema.id_column and ids is None:  # the column stays in the output: its contract
        typer.echo(
            f"latentwatch: warning: id column {schema.id_column!r} absent from {data}: "
            "written empty",
            err=True,
        )
        ids = [None] * table.n_rows
    scores = detector.score_columns(table.columns, table.n_rows, table.reasons)
    names = top_feature_names(schema, scores, top)
    walks = _nearest_normal_column(detector, table.columns, scores, names, top)

    def rows() -> Iterator[list[Any]]:
        for i in range(table.n_rows):
            ok = bool(scores.valid[i])
            row: list[Any] = [ids[i]] if ids is not None else []
            row += [kind(getattr(scores, name)[i]) for name, kind in _NUMBER_COLUMNS]
            row += [";".join(names[i]), "" if ok else scores.reasons[i], walks.get(i, "")]
            yield ["" if isinstance(v, float) and math.isnan(v) else v for v in row]

    header = ([schema.id_column] if schema.id_column else []) + list(SCORE_COLUMNS)
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
    """Console entry point: a user error is one line on stderr and a non-zero exit, never a
    traceback (the one place where errors become that line)."""
    try:
        code = app(standalone_mode=False)  # click's errors come here, not to its usage box
    except KeyboardInterrupt:  # before a command ran; typer turns one inside into Exit(130)
        code = EXIT_INTERRUPTED
    except Exception as exc:
        # `latentwatch` or `latentwatch db` alone: the help, as --help prints it. By name, as
        # typer itself tells it apart: the class lives in typer's private copy of click.
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(getattr(exc, "format_message", lambda: "")())
            sys.exit(EXIT_USAGE)
        error = error_line(exc)
        if error is None:
            raise
        message, code = error
        typer.echo(f"latentwatch: error: {' '.join(message.split())}", err=True)
        sys.exit(code)
    if code == EXIT_INTERRUPTED:
        typer.echo("latentwatch: interrupted", err=True)
    sys.exit(code if isinstance(code, int) else 0)


@app.command()
def consume(
    bootstrap: Annotated[
        str,
        typer.Option(envvar=env_var("BOOTSTRAP"), metavar="HOST:PORT[,...]", help="Kafka brokers"),
    ],
    topic: Annotated[
        list[str],
        typer.Option(envvar=env_var("TOPICS"), metavar="TOPIC", help="Topic(s) to watch"),
    ],
    db: Annotated[
        str,
        typer.Option(envvar=env_var("DB"), metavar="URL", help="Database for flagged records"),
    ],
    model: Annotated[
        Path | None,
        typer.Option(
            envvar=env_var("MODEL"), metavar="DIR", help="Model directory (or --registry)"
        ),
    ] = None,
    registry: Annotated[
        str | None,
        typer.Option(
            envvar=env_var("REGISTRY"),
            metavar="TOPIC",
            help="Follow the model registry's live and shadow models of TOPIC (docs/lifecycle.md)",
        ),
    ] = None,
    group: Annotated[
        str, typer.Option(envvar=env_var("GROUP"), metavar="NAME", help="Consumer group")
    ] = KafkaSettings.group,
    deadletter_topic: Annotated[
        str | None,
        typer.Option(
            envvar=env_var("DEADLETTER_TOPIC"),
            metavar="TOPIC",
            help="Dead-letter topic [default: <topic>.deadletter]",
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(
            envvar=env_var("METRICS_HOST"), metavar="ADDRESS", help="Address of /metrics to bind"
        ),
    ] = ConsumeSettings.metrics_host,
    metrics_port: Annotated[
        int,
        typer.Option(
            envvar=env_var("METRICS_PORT"), metavar="PORT", help="Prometheus /metrics port; -1: off"
        ),
    ] = METRICS_PORT,
    max_records: Annotated[
        int,
        typer.Option(envvar=env_var("MAX_RECORDS"), metavar="N", help="Records per poll, at most"),
    ] = LoopSettings.max_records,
    typed_decoding: Annotated[
        bool,
        typer.Option(
            envvar=env_var("TYPED_DECODING"),
            help="Decode batches of known fields straight into the model's columns (msgspec)",
        ),
    ] = LoopSettings.typed_decoding,
    session_timeout_ms: Annotated[
        int,
        typer.Option(
            envvar=env_var("SESSION_TIMEOUT_MS"),
            metavar="MS",
            help="Consumer-group session: a member silent this long is replaced",
        ),
    ] = KafkaSettings.session_timeout_ms,
    max_message_bytes: Annotated[
        int,
        typer.Option(
            envvar=env_var("MAX_MESSAGE_BYTES"),
            metavar="BYTES",
            help="Larger message values are dead-lettered as oversized",
        ),
    ] = DecodePolicy.max_bytes,
    explain_features: Annotated[
        int,
        typer.Option(
            envvar=env_var("EXPLAIN_FEATURES"),
            min=0,
            metavar="N",
            help="Features explained per flagged record, most surprising first; 0: all",
        ),
    ] = LoopSettings.explained_features,
    nearest_normal: Annotated[
        bool,
        typer.Option(
            envvar=env_var("NEAREST_NORMAL"),
            help="Store each flagged record's nearest normal record and field attributions",
        ),
    ] = LoopSettings.nearest_normal,
    require: Annotated[
        list[str] | None,
        typer.Option(
            envvar=env_var("REQUIRED_FIELDS"), metavar="FIELD", help="Field(s) a record must carry"
        ),
    ] = None,
    schema_version: Annotated[
        list[str] | None,
        typer.Option(
            envvar=env_var("SCHEMA_VERSIONS"),
            metavar="VERSION",
            help="Accepted `schema-version` header / `schema_version` field values",
        ),
    ] = None,
    isolation_level: Annotated[
        IsolationLevel,
        typer.Option(
            envvar=env_var("ISOLATION_LEVEL"),
            help="read_committed: only records of committed transactions (transactional "
            "producers); read_uncommitted: every record, Kafka's default",
        ),
    ] = KafkaSettings.isolation_level,
    kafka_option: Annotated[
        list[str] | None,
        typer.Option(
            envvar=env_var("KAFKA_OPTIONS"),
            metavar="NAME=VALUE",
            help="Extra kafka-python setting, e.g. security_protocol=SASL_SSL",
        ),
    ] = None,
    startup_timeout: Annotated[
        float,
        typer.Option(
            envvar=env_var("STARTUP_TIMEOUT"),
            min=0,
            metavar="SECONDS",
            help="How long to keep trying to reach the database and Kafka at start before "
            "exiting with an error; 0: keep trying",
        ),
    ] = ConsumeSettings.startup_timeout_s,
    log_level: Annotated[
        str,
        typer.Option(
            envvar=env_var("LOG_LEVEL"), metavar="LEVEL", help="debug, info, warning or error"
        ),
    ] = "info",
    config: ConfigOption = None,
) -> None:
    """Watch Kafka topic(s): score every record, store flagged ones, dead-letter bad ones.

    Topics may be compressed with gzip, snappy, lz4 or zstd; keys may be binary. Every option
    can also come from its environment variable or a --config file (docs/streams.md).
    """
    from latentwatch.service import run_consumer

    setup_logging(log_level)
    kafka = KafkaSettings(
        bootstrap=bootstrap,
        group=group,
        topics=split_values(topic),
        session_timeout_ms=session_timeout_ms,
        isolation_level=isolation_level,
        extra=parse_kafka_options(kafka_option),
    )
    policy = DecodePolicy(
        max_bytes=max_message_bytes,
        required_fields=split_values(require),
        schema_versions=split_values(schema_version),
    )
    loop = LoopSettings(
        max_records=max_records,
        policy=policy,
        explained_features=explain_features,
        nearest_normal=nearest_normal,
        typed_decoding=typed_decoding,
    )
    settings = ConsumeSettings(
        model=model,
        registry=registry,
        db=db,
        kafka=kafka,
        loop=loop,
        deadletter_topic=deadletter_topic,
        metrics_host=metrics_host,
        metrics_port=None if metrics_port < 0 else metrics_port,
        startup_timeout_s=startup_timeout,
    )
    run_consumer(settings)


@app.command()
def replay(
    data: Annotated[Path, typer.Option(help="Records to send: .csv, .jsonl or .parquet")],
    bootstrap: Annotated[str, typer.Option(envvar=env_var("BOOTSTRAP"), help="Kafka host:port")],
    topic: Annotated[str, typer.Option(help="Topic to send to")],
    rate: Annotated[
        float | None, typer.Option(help="Records per second (default: flat out)")
    ] = None,
    key_field: Annotated[str | None, typer.Option(help="Field to use as the message key")] = None,
    kafka_option: Annotated[list[str] | None, typer.Option(envvar=env_var("KAFKA_OPTIONS"))] = None,
) -> None:
    """Send a file's records to a topic as JSON messages, one per record."""
    from latentwatch.datafiles import read_table
    from streams.replay import replay_to

    table = read_table(data)
    bad = [r for r in table.reasons if r]
    if bad:
        fail(f"{data}: {len(bad)} unreadable row(s), first: {bad[0]}")
    report = replay_to(
        bootstrap,
        table.rows(),
        topic,
        rate=rate,
        key_field=key_field,
        kafka_options=parse_kafka_options(kafka_option),
    )
    typer.echo(
        f"sent {report.sent} records to {topic} in {report.seconds:.1f} s"
        + (f"; {report.failed} failed" if report.failed else "")
    )
    if report.failed:
        raise typer.Exit(EXIT_USER_ERROR)


db_app = typer.Typer(help="Database schema and retention.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
app.command("rescore")(rescore)


@db_app.command("upgrade")
def db_upgrade(
    db: Annotated[str, typer.Option(envvar=env_var("DB"), help="Database URL")],
    config: ConfigOption = None,
) -> None:
    """Create or migrate the schema to the newest version (Alembic)."""
    from storage.database import current_revision, make_engine, redact, upgrade

    engine = make_engine(db)
    try:
        upgrade(engine)
        typer.echo(f"{redact(db)} is at schema revision {current_revision(engine)}")
    finally:
        engine.dispose()


@db_app.command("prune")
def db_prune(
    db: Annotated[str, typer.Option(envvar=env_var("DB"), help="Database URL")],
    older_than: Annotated[
        str, typer.Option(envvar=env_var("RETENTION"), help="Age, e.g. 30d, 12h, 2w")
    ] = "30d",
    config: ConfigOption = None,
) -> None:
    """Delete flagged records (and their feedback) scored longer ago than --older-than."""
    from datetime import UTC, datetime

    from storage.database import ensure_schema, make_engine, session_factory
    from storage.repository import parse_age, prune_flagged

    try:
        age = parse_age(older_than)
    except ValueError as exc:
        fail(str(exc))
    engine = make_engine(db)
    try:
        ensure_schema(engine)
        removed = prune_flagged(session_factory(engine), datetime.now(UTC) - age)
    finally:
        engine.dispose()
    typer.echo(f"deleted {removed} flagged record(s) older than {older_than}")


class DemoScenario(StrEnum):
    STREAM = "stream"
    DRIFT = "drift"


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the model, database and logs go")] = Path(
        ".demo"
    ),
    repeat: Annotated[int, typer.Option(help="Times the held-out stream is replayed")] = 20,
    rate: Annotated[float, typer.Option(help="Replay rate, records per second")] = 1000.0,
    keep_running: Annotated[
        bool, typer.Option(help="Keep consumer, metrics and API up until Ctrl-C")
    ] = False,
    scenario: Annotated[
        DemoScenario,
        typer.Option(
            help="stream: anomalies in a stream (--repeat); drift: the stream shifts, a model "
            "is retrained from the topic, shadowed, compared and promoted"
        ),
    ] = DemoScenario.STREAM,
) -> None:
    """The whole path on embedded defaults: broker, training, stream, SQLite, metrics, API."""
    from rich.console import Console

    setup_logging("warning")
    console = Console()
    try:
        with _sigterm_unwinds():
            if scenario is DemoScenario.DRIFT:
                from latentwatch.drift_demo import DriftOptions, drift_summary, run_drift_demo

                drift = DriftOptions(workdir=workdir, rate=rate, keep_running=keep_running)
                console.print(drift_summary(run_drift_demo(drift, console)))
                return
            from latentwatch.demo import DemoOptions, run_demo, summary_table

            options = DemoOptions(
                workdir=workdir, repeat=repeat, rate=rate, keep_running=keep_running
            )
            result = run_demo(options, console)
    except _Terminated:
        typer.echo("latentwatch: terminated", err=True)
        raise typer.Exit(EXIT_TERMINATED) from None
    console.print(summary_table(result))


class _Terminated(BaseException):
    """SIGTERM, raised where the main thread is, so that every `with` unwinds: the demo's
    broker runs in a session of its own and would outlive a process that just died."""


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    import signal

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
def api(
    ctx: typer.Context,
    db: Annotated[str, typer.Option(envvar=env_var("DB"), help="Database URL of flagged records")],
    host: Annotated[
        str,
        typer.Option(
            envvar=env_var("API_HOST"),
            help="Bind address; beyond loopback a token is required",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar=env_var("API_PORT"))] = 8000,
    token_file: Annotated[
        Path | None,
        typer.Option(
            envvar=env_var("API_TOKEN_FILE"),
            help="File holding the bearer token that every route but /health needs "
            "(or set LATENTWATCH_API_TOKEN)",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar=env_var("API_TOKEN"),
            hidden=True,  # from the environment or the config file: the command line shows in ps
        ),
    ] = None,
    trusted_host: Annotated[
        list[str] | None,
        typer.Option(
            envvar=env_var("API_TRUSTED_HOSTS"),
            help="A Host name the API answers to besides localhost, 127.0.0.1, ::1 and the bind "
            "address (repeatable or comma-separated; *.example.com for subdomains)",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(envvar=env_var("LOG_LEVEL"))] = "info",
    model: Annotated[
        list[Path] | None,
        typer.Option(
            help="A model directory whose version POST /api/models/{version}/explain "
            "explains records with (repeatable)"
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Serve the query API and the explorer page (loopback by default)."""
    from api.server import run_api
    from latentwatch.explaining import ModelExplainer

    secret = _api_token(ctx, token, token_file)
    setup_logging(log_level)
    explainer = ModelExplainer(model) if model else None
    run_api(
        db,
        host=host,
        port=port,
        token=secret,
        trusted_hosts=split_values(trusted_host),
        explainer=explainer,
    )


def _api_token(ctx: typer.Context, token: str | None, token_file: Path | None) -> str | None:
    """The API token from --token-file, LATENTWATCH_API_TOKEN or the config file; refused on
    the command line (every user of the machine can read it in ps) and when empty."""
    import os

    from api.settings import token_problem

    # By name: typer's ParameterSource is its private copy of click's.
    source = getattr(ctx.get_parameter_source("token"), "name", None)
    if token is not None and source == "COMMANDLINE":
        fail(
            "--token on the command line is visible to every user of this machine (ps) and "
            "stays in shell history: put it in a file only you can read and give "
            "--token-file FILE, or set LATENTWATCH_API_TOKEN"
        )
    where = "--config [api] token" if source == "DEFAULT_MAP" else env_var("API_TOKEN")
    if token is None and env_var("API_TOKEN") in os.environ:  # click takes an empty one for unset
        token = os.environ[env_var("API_TOKEN")]
    if token is not None and token_file is not None:
        fail(f"give the API token once: --token-file or {where}, not both")
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            fail(f"cannot read the API token from --token-file {token_file}: {reason}")
        where = f"--token-file {token_file}"
    problem = token_problem(token) if token is not None else None
    if problem:
        fail(f"{where}: {problem}")
    return token


@app.command()
def evaluate(
    db: Annotated[str, typer.Option(envvar=env_var("DB"), help="Database URL of flagged records")],
    model_version: Annotated[str | None, typer.Option(help="Only this model's flags")] = None,
) -> None:
    """Precision of the flags over the records users labelled as true/false alarms."""
    from storage.database import ensure_schema, make_engine, session_factory
    from storage.evaluation import evaluate as evaluate_flags

    engine = make_engine(db)
    try:
        ensure_schema(engine)
        with session_factory(engine)() as session:
            result = evaluate_flags(session, model_version)
    finally:
        engine.dispose()
    precision = "n/a" if result.precision is None else f"{result.precision:.3f}"
    typer.echo(
        f"{result.flagged} flagged, {result.labelled} labelled ({result.true_alarms} true alarms, "
        f"{result.false_alarms} false alarms): precision {precision}"
        + (f" for model {model_version}" if model_version else "")
    )
