"""The `latentwatch` command line. Each command parses options, wires adapters together and
calls into the packages; user errors become one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer

from detector.errors import LatentwatchError
from latentwatch.models_cli import models_app, rescore

app = typer.Typer(
    name="latentwatch",
    help="Learn what normal records look like; watch a Kafka stream for the ones that are not.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: readable at 80 columns, nothing cut
    add_completion=False,
)

EXIT_USER_ERROR = 1
EXIT_USAGE = 2  # click's code for a command line it cannot parse
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM


def fail(message: str) -> NoReturn:
    typer.echo(f"latentwatch: error: {message}", err=True)
    raise typer.Exit(EXIT_USER_ERROR)


def _split(values: list[str] | None) -> tuple[str, ...]:
    """`--exclude a --exclude b` and `--exclude a,b` both work."""
    return tuple(v for item in values or () for v in item.split(",") if v)


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
        str | None, typer.Option(envvar=_env("BOOTSTRAP"), help="Kafka brokers (--from-topic)")
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
        str | None, typer.Option(envvar=_env("DB"), help="Database of the model registry")
    ] = None,
    store: Annotated[
        Path | None, typer.Option(envvar=_env("MODEL_STORE"), help="Model store folder")
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
        id_column=id_column, timestamp_column=timestamp_column, exclude=_split(exclude)
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
                walks.get(i, ""),
            ]
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


def _error_line(exc: Exception) -> tuple[str, int] | None:
    """What a user sees of an error they can act on (their input, their set-up, the file system,
    the database), as a message and an exit code; None for a bug, which keeps its traceback."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    if isinstance(exc, LatentwatchError):
        return str(exc), EXIT_USER_ERROR
    if isinstance(exc, typer.TyperException):  # click's (vendored): `--fpr abc`, a missing option
        ctx = getattr(exc, "ctx", None)  # usage errors know their command
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        return exc.format_message().rstrip(".") + hint, exc.exit_code
    if isinstance(exc, typer.Abort):  # end of input at a prompt
        return "aborted", EXIT_USER_ERROR
    if isinstance(exc, OperationalError | InterfaceError):  # unreachable, cannot open, locked
        return f"database unavailable: {exc.orig or exc}", EXIT_USER_ERROR
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}", EXIT_USER_ERROR
    return None


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
        error = _error_line(exc)
        if error is None:
            raise
        message, code = error
        typer.echo(f"latentwatch: error: {' '.join(message.split())}", err=True)
        sys.exit(code)
    if code == EXIT_INTERRUPTED:
        typer.echo("latentwatch: interrupted", err=True)
    sys.exit(code if isinstance(code, int) else 0)


def _env(name: str) -> str:
    return f"LATENTWATCH_{name}"


def _setup_logging(level: str) -> None:
    import logging

    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # kafka-python narrates every reconnect at INFO/WARNING; our own lines say what matters.
    logging.getLogger("kafka").setLevel(max(logging.getLogger().level, logging.ERROR))
    logging.getLogger("alembic").setLevel(max(logging.getLogger().level, logging.WARNING))


def _load_config(ctx: typer.Context, value: Path | None) -> Path | None:
    """`--config FILE`: the command's options from the TOML table named after it (`[consume]`,
    `[api]`, `[db.prune]`; names as on the command line, `-` or `_`). The command line and
    `LATENTWATCH_*` variables win over the file, the file over the built-in defaults (click's
    default map)."""
    if value is None or ctx.resilient_parsing:
        return value
    import tomllib

    try:
        document = tomllib.loads(value.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"cannot read config file {value}: {exc.strerror or exc}")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        fail(f"config file {value} is not valid TOML: {exc}")
    path = [ctx.info_name or ""]
    if ctx.parent is not None and ctx.parent.parent is not None:  # a group's: [db.prune]
        path.insert(0, ctx.parent.info_name or "")
    command = ".".join(path)
    section: Any = document
    for name in path:
        section = section.get(name) if isinstance(section, dict) else None
    if not isinstance(section, dict):
        fail(f"config file {value} has no [{command}] table")
    params = {p.name: p for p in ctx.command.params if p.name and p.name != "config"}
    defaults: dict[str, Any] = {}
    for key, item in section.items():
        name = key.replace("-", "_")
        param = params.get(name)
        if param is None:
            known = ", ".join(sorted(n.replace("_", "-") for n in params))
            fail(f"config file {value}: [{command}] has no setting {key!r} (known: {known})")
        multiple = getattr(param, "multiple", False)
        defaults[name] = [item] if multiple and not isinstance(item, list) else item
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar=_env("CONFIG"),
        is_eager=True,
        callback=_load_config,
        help="TOML file with this command's options in a table named after it",
    ),
]


def _kafka_options(values: list[str] | None) -> dict[str, object]:
    """`--kafka-option security_protocol=SASL_SSL` -> {"security_protocol": "SASL_SSL"}; several
    may share one value separated by commas (`a=1,b=2`), and a comma not followed by a new
    `name=` stays in the value (`ssl_ciphers=A,B`). Each client gets the settings it knows,
    typed by kafka-python's defaults (streams.kafka.options_for); unknown names fail here."""
    from streams.kafka import check_options

    items: list[str] = []
    for value in values or ():
        for piece in value.split(","):
            if items and "=" not in piece:
                items[-1] += "," + piece
            elif piece:
                items.append(piece)
    options: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            fail(f"--kafka-option expects name=value, got {item!r}")
        options[name.strip()] = value.strip()
    check_options(options)
    return options


@app.command()
def consume(
    bootstrap: Annotated[
        str,
        typer.Option(envvar=_env("BOOTSTRAP"), metavar="HOST:PORT[,...]", help="Kafka brokers"),
    ],
    topic: Annotated[
        list[str],
        typer.Option(envvar=_env("TOPICS"), metavar="TOPIC", help="Topic(s) to watch"),
    ],
    db: Annotated[
        str,
        typer.Option(envvar=_env("DB"), metavar="URL", help="Database for flagged records"),
    ],
    model: Annotated[
        Path | None,
        typer.Option(envvar=_env("MODEL"), metavar="DIR", help="Model directory (or --registry)"),
    ] = None,
    registry: Annotated[
        str | None,
        typer.Option(
            envvar=_env("REGISTRY"),
            metavar="TOPIC",
            help="Follow the model registry's live and shadow models of TOPIC (docs/lifecycle.md)",
        ),
    ] = None,
    group: Annotated[
        str, typer.Option(envvar=_env("GROUP"), metavar="NAME", help="Consumer group")
    ] = "latentwatch",
    deadletter_topic: Annotated[
        str | None,
        typer.Option(
            envvar=_env("DEADLETTER_TOPIC"),
            metavar="TOPIC",
            help="Dead-letter topic [default: <topic>.deadletter]",
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(
            envvar=_env("METRICS_HOST"), metavar="ADDRESS", help="Address of /metrics to bind"
        ),
    ] = "127.0.0.1",
    metrics_port: Annotated[
        int,
        typer.Option(
            envvar=_env("METRICS_PORT"), metavar="PORT", help="Prometheus /metrics port; -1: off"
        ),
    ] = 9464,
    max_records: Annotated[
        int,
        typer.Option(envvar=_env("MAX_RECORDS"), metavar="N", help="Records per poll, at most"),
    ] = 2000,
    typed_decoding: Annotated[
        bool,
        typer.Option(
            envvar=_env("TYPED_DECODING"),
            help="Decode batches of known fields straight into the model's columns (msgspec)",
        ),
    ] = True,
    session_timeout_ms: Annotated[
        int,
        typer.Option(
            envvar=_env("SESSION_TIMEOUT_MS"),
            metavar="MS",
            help="Consumer-group session: a member silent this long is replaced",
        ),
    ] = 6000,
    max_message_bytes: Annotated[
        int,
        typer.Option(
            envvar=_env("MAX_MESSAGE_BYTES"),
            metavar="BYTES",
            help="Larger message values are dead-lettered as oversized",
        ),
    ] = 1_048_576,
    explain_features: Annotated[
        int,
        typer.Option(
            envvar=_env("EXPLAIN_FEATURES"),
            min=0,
            metavar="N",
            help="Features explained per flagged record, most surprising first; 0: all",
        ),
    ] = 5,
    require: Annotated[
        list[str] | None,
        typer.Option(
            envvar=_env("REQUIRED_FIELDS"), metavar="FIELD", help="Field(s) a record must carry"
        ),
    ] = None,
    schema_version: Annotated[
        list[str] | None,
        typer.Option(
            envvar=_env("SCHEMA_VERSIONS"),
            metavar="VERSION",
            help="Accepted `schema-version` header / `schema_version` field values",
        ),
    ] = None,
    isolation_level: Annotated[
        Literal["read_uncommitted", "read_committed"],
        typer.Option(
            envvar=_env("ISOLATION_LEVEL"),
            help="read_committed: only records of committed transactions (transactional "
            "producers); read_uncommitted: every record, Kafka's default",
        ),
    ] = "read_uncommitted",
    kafka_option: Annotated[
        list[str] | None,
        typer.Option(
            envvar=_env("KAFKA_OPTIONS"),
            metavar="NAME=VALUE",
            help="Extra kafka-python setting, e.g. security_protocol=SASL_SSL",
        ),
    ] = None,
    startup_timeout: Annotated[
        float,
        typer.Option(
            envvar=_env("STARTUP_TIMEOUT"),
            min=0,
            metavar="SECONDS",
            help="How long to keep trying to reach the database and Kafka at start before "
            "exiting with an error; 0: keep trying",
        ),
    ] = 0.0,
    log_level: Annotated[
        str,
        typer.Option(
            envvar=_env("LOG_LEVEL"), metavar="LEVEL", help="debug, info, warning or error"
        ),
    ] = "info",
    config: ConfigOption = None,
) -> None:
    """Watch Kafka topic(s): score every record, store flagged ones, dead-letter bad ones.

    Topics may be compressed with gzip, snappy, lz4 or zstd; keys may be binary. Every option
    can also come from its environment variable or a --config file (docs/streams.md).
    """
    from latentwatch.service import ConsumeSettings, run_consumer

    _setup_logging(log_level)
    settings = ConsumeSettings(
        model=model,
        registry=registry,
        bootstrap=bootstrap,
        topics=_split(topic),
        db=db,
        group=group,
        deadletter_topic=deadletter_topic,
        metrics_host=metrics_host,
        metrics_port=None if metrics_port < 0 else metrics_port,
        max_records=max_records,
        typed_decoding=typed_decoding,
        session_timeout_ms=session_timeout_ms,
        max_message_bytes=max_message_bytes,
        explained_features=explain_features,
        required_fields=_split(require),
        schema_versions=_split(schema_version),
        kafka_options=_kafka_options(kafka_option),
        isolation_level=isolation_level,
        startup_timeout_s=startup_timeout,
    )
    run_consumer(settings)


@app.command()
def replay(
    data: Annotated[Path, typer.Option(help="Records to send: .csv, .jsonl or .parquet")],
    bootstrap: Annotated[str, typer.Option(envvar=_env("BOOTSTRAP"), help="Kafka host:port")],
    topic: Annotated[str, typer.Option(help="Topic to send to")],
    rate: Annotated[
        float | None, typer.Option(help="Records per second (default: flat out)")
    ] = None,
    key_field: Annotated[str | None, typer.Option(help="Field to use as the message key")] = None,
    kafka_option: Annotated[list[str] | None, typer.Option(envvar=_env("KAFKA_OPTIONS"))] = None,
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
        kafka_options=_kafka_options(kafka_option),
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
    db: Annotated[str, typer.Option(envvar=_env("DB"), help="Database URL")],
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
    db: Annotated[str, typer.Option(envvar=_env("DB"), help="Database URL")],
    older_than: Annotated[
        str, typer.Option(envvar=_env("RETENTION"), help="Age, e.g. 30d, 12h, 2w")
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
) -> None:
    """The whole path on embedded defaults: broker, training, stream, SQLite, metrics, API."""
    from rich.console import Console

    from latentwatch.demo import DemoOptions, run_demo, summary_table

    _setup_logging("warning")
    console = Console()
    options = DemoOptions(workdir=workdir, repeat=repeat, rate=rate, keep_running=keep_running)
    try:
        with _sigterm_unwinds():
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
    db: Annotated[str, typer.Option(envvar=_env("DB"), help="Database URL of flagged records")],
    host: Annotated[
        str,
        typer.Option(
            envvar=_env("API_HOST"),
            help="Bind address; beyond loopback a token is required",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar=_env("API_PORT"))] = 8000,
    token_file: Annotated[
        Path | None,
        typer.Option(
            envvar=_env("API_TOKEN_FILE"),
            help="File holding the bearer token that every route but /health needs "
            "(or set LATENTWATCH_API_TOKEN)",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar=_env("API_TOKEN"),
            hidden=True,  # from the environment or the config file: the command line shows in ps
        ),
    ] = None,
    trusted_host: Annotated[
        list[str] | None,
        typer.Option(
            envvar=_env("API_TRUSTED_HOSTS"),
            help="A Host name the API answers to besides localhost, 127.0.0.1, ::1 and the bind "
            "address (repeatable or comma-separated; *.example.com for subdomains)",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(envvar=_env("LOG_LEVEL"))] = "info",
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
    _setup_logging(log_level)
    explainer = ModelExplainer(model) if model else None
    run_api(
        db,
        host=host,
        port=port,
        token=secret,
        trusted_hosts=_split(trusted_host),
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
    where = "--config [api] token" if source == "DEFAULT_MAP" else _env("API_TOKEN")
    if token is None and _env("API_TOKEN") in os.environ:  # click takes an empty one for unset
        token = os.environ[_env("API_TOKEN")]
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
    db: Annotated[str, typer.Option(envvar=_env("DB"), help="Database URL of flagged records")],
    model_version: Annotated[str | None, typer.Option(help="Only this model's flags")] = None,
) -> None:
    """Precision of the flags over the records users labelled as true/false alarms."""
    from storage.database import ensure_schema, make_engine, session_factory
    from storage.queries import evaluate as evaluate_flags

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
