"""`latentwatch models ...`: the model registry from the command line. Every refusal (an unknown
version, a model that does not fit the topic's live one, a damaged directory) is a
RegistryError, which the CLI's entry point prints as one line."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from latentwatch.datafiles import Table
    from storage.registry import Roles

T = TypeVar("T")

models_app = typer.Typer(
    help="The model registry: register, promote, shadow, roll back, retire, compare.",
    no_args_is_help=True,
)

DbOption = Annotated[str, typer.Option(envvar="LATENTWATCH_DB", help="Database URL")]
TopicOption = Annotated[
    str,
    typer.Option(
        envvar="LATENTWATCH_MODEL_SCOPE",
        help="Topic (or any name the consumers follow with --registry) the roles apply to",
    ),
]
ActorOption = Annotated[str | None, typer.Option(help="Who makes the change (default: user@host)")]
DEFAULT_STORE = Path("latentwatch-models")


def _actor(actor: str | None) -> str:
    return actor or f"{getpass.getuser()}@{socket.gethostname()}"


@contextmanager
def _sessions(db: str) -> Iterator[sessionmaker[Session]]:
    from storage.database import ensure_schema, make_engine, session_factory

    engine = make_engine(db)
    try:
        ensure_schema(engine)
        yield session_factory(engine)
    finally:
        engine.dispose()


def _change(db: str, topic: str, actor: str | None, what: Callable[..., Roles]) -> Roles:
    from lifecycle.roles import Registry

    with _sessions(db) as sessions:
        return what(Registry(sessions, topic, _actor(actor)))


def _say(roles: Roles, topic: str) -> None:
    typer.echo(f"{topic}: live {roles.live or 'none'}, shadow {roles.shadow or 'none'}")


def _time(value: str | None) -> datetime | None:
    from lifecycle.window import parse_time

    return None if value is None else parse_time(value)


@models_app.command("list")
def list_models(db: DbOption, topic: TopicOption) -> None:
    """Registered models with their role on the topic, newest registration last."""
    from storage import registry

    with _sessions(db) as sessions:
        models = registry.list_models(sessions)
        roles = registry.roles(sessions, topic)
    if not models:
        typer.echo("no models registered (add one with `latentwatch models register DIR`)")
        return
    typer.echo(f"{'version':<14}{'role':<12}{'fpr':>8}  {'created':<22}{'source'}")
    for m in models:
        fpr = m.summary.get("fpr")
        created = m.created_at.strftime("%Y-%m-%d %H:%M:%SZ") if m.created_at else "-"
        window = ""
        if m.window_start or m.window_end:
            start = m.window_start.isoformat() if m.window_start else "…"
            end = m.window_end.isoformat() if m.window_end else "…"
            window = f" [{start} .. {end}]"
        fpr_text = f"{fpr:.4g}" if isinstance(fpr, float) else "-"
        line = f"{m.version:<14}{roles.role(m.version):<12}{fpr_text:>8}  {created:<22}"
        typer.echo(f"{line}{m.source or '-'}{window}")


@models_app.command("register")
def register(
    directory: Annotated[Path, typer.Argument(help="Model directory from `latentwatch train`")],
    db: DbOption,
    store: Annotated[
        Path,
        typer.Option(envvar="LATENTWATCH_MODEL_STORE", help="Model store folder (shared)"),
    ] = DEFAULT_STORE,
    source: Annotated[str | None, typer.Option(help="Training data source")] = None,
    window_start: Annotated[str | None, typer.Option(help="Training data from (ISO)")] = None,
    window_end: Annotated[str | None, typer.Option(help="Training data until (ISO)")] = None,
    actor: ActorOption = None,
) -> None:
    """Check a model directory, copy it into the store and register its version."""
    from lifecycle.roles import register_directory
    from lifecycle.store import DirectoryStore

    with _sessions(db) as sessions:
        model, new = register_directory(
            sessions,
            DirectoryStore(store),
            directory,
            actor=_actor(actor),
            source=source,
            window=(_time(window_start), _time(window_end)),
        )
    state = "registered" if new else "already registered"
    typer.echo(f"{model.version} {state} ({model.location})")


@models_app.command("promote")
def promote(
    version: Annotated[str, typer.Argument()],
    db: DbOption,
    topic: TopicOption,
    actor: ActorOption = None,
) -> None:
    """Make VERSION the topic's live model; running consumers switch within seconds."""
    _say(_change(db, topic, actor, lambda r: r.promote(version)), topic)


@models_app.command("shadow")
def shadow(
    version: Annotated[str, typer.Argument()],
    db: DbOption,
    topic: TopicOption,
    actor: ActorOption = None,
) -> None:
    """Score the topic with VERSION beside the live model, storing its flags as shadow only."""
    _say(_change(db, topic, actor, lambda r: r.shadow(version)), topic)


@models_app.command("unshadow")
def unshadow(db: DbOption, topic: TopicOption, actor: ActorOption = None) -> None:
    """Stop shadow scoring on the topic."""
    _say(_change(db, topic, actor, lambda r: r.unshadow()), topic)


@models_app.command("rollback")
def rollback(db: DbOption, topic: TopicOption, actor: ActorOption = None) -> None:
    """Make the live model before the current one live again."""
    _say(_change(db, topic, actor, lambda r: r.rollback()), topic)


@models_app.command("retire")
def retire(
    version: Annotated[str, typer.Argument()],
    db: DbOption,
    topic: TopicOption,
    actor: ActorOption = None,
) -> None:
    """Take VERSION out of service on the topic (never the live model; it stops shadowing)."""
    _say(_change(db, topic, actor, lambda r: r.retire(version)), topic)


@models_app.command("compare")
def compare(
    db: DbOption,
    topic: TopicOption,
    since: Annotated[str, typer.Option(help="Window start: ISO time or an age (24h)")] = "24h",
    until: Annotated[str | None, typer.Option(help="Window end (default: now)")] = None,
    version: Annotated[str | None, typer.Option(help="Shadow version (default: latest)")] = None,
    run: Annotated[
        str | None,
        typer.Option(help="A backfill run (rescore --name) instead, over its whole range"),
    ] = None,
) -> None:
    """The live model against its shadow over a window, or against a backfill run over the
    records it re-scored (as GET /api/models/compare)."""
    from datetime import UTC

    from lifecycle.compare import compare_run, compare_window
    from lifecycle.window import parse_time
    from storage.registry import RegistryError

    end = _time(until) or datetime.now(UTC)
    start = parse_time(since, end)
    with _sessions(db) as sessions, sessions() as session:
        if run is not None:
            found = compare_run(session, run)
            if found is None or found[1].topic != topic:
                raise RegistryError(f"no backfill run {run!r} of {topic} (latentwatch rescore)")
            result, ran = found
            start, end = ran.start, ran.end
        else:
            in_window = compare_window(session, topic, (start, end), version)
            if in_window is None:
                raise RegistryError(f"no shadow scores of {topic} between {start} and {end}")
            result = in_window

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.2f} %"

    what = f"backfill run {run} re-scored" if run else "scored by both"
    typer.echo(f"{topic}: {result.scored} records {what}, {start:%F %T} .. {end:%F %T}")
    typer.echo(f"{'':8}{'version':<14}{'fpr':>9}{'flagged':>9}{'rate':>9}{'precision':>11}")
    for role, side in (("live", result.live), ("run" if run else "shadow", result.shadow)):
        typer.echo(
            f"{role:<8}{side.version:<14}{pct(side.fpr):>9}{side.flagged:>9}"
            f"{pct(side.flag_rate):>9}{pct(side.precision):>11} ({side.labelled} labelled)"
        )
    rank = "-" if result.rank_correlation is None else f"{result.rank_correlation:.3f}"
    typer.echo(
        f"flagged by both {result.both_flagged} of {result.either_flagged} "
        f"(overlap {pct(result.overlap)}); score rank correlation {rank}; "
        f"{result.unlabelled_shadow_only} shadow-only flags unlabelled"
    )


def rescore(
    model: Annotated[str, typer.Option(help="Registered model VERSION to score with")],
    topic: Annotated[str, typer.Option(help="Topic to re-read")],
    db: DbOption,
    from_: Annotated[
        str, typer.Option("--from", help="Range start: ISO time or an age before now (24h)")
    ],
    to: Annotated[str | None, typer.Option(help="Range end (default: when the run starts)")] = None,
    bootstrap: Annotated[
        str | None, typer.Option(envvar="LATENTWATCH_BOOTSTRAP", help="Kafka brokers")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Run name (default: from the model and the range)")
    ] = None,
    stored: Annotated[
        bool,
        typer.Option(
            "--stored", help="Re-score the flagged records stored in the database instead"
        ),
    ] = False,
    batch: Annotated[int, typer.Option(help="Records per saved batch")] = 2000,
    kafka_option: Annotated[
        list[str] | None,
        typer.Option(envvar="LATENTWATCH_KAFKA_OPTIONS", help="name=value, as for consume"),
    ] = None,
) -> None:
    """Re-score a time range of a topic with a registered model, outside the consumer group,
    storing its flags as a named backfill run (resumable: run the same command again)."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from latentwatch.options import parse_kafka_options
    from lifecycle.follow import load_registered
    from lifecycle.rescore import rescore as run_rescore
    from lifecycle.rescore import rescore_stored
    from lifecycle.window import parse_time
    from storage import registry

    kafka_options = parse_kafka_options(kafka_option)
    start = parse_time(from_)
    end = _time(to)
    console = Console(stderr=True)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("rescoring {task.fields[scored]:,} scored, {task.fields[flagged]:,} flagged"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    )
    task = progress.add_task("rescore", total=None, scored=0, flagged=0)

    def report(scored: int, flagged: int) -> None:
        progress.update(task, scored=scored, flagged=flagged)

    with _sessions(db) as sessions, progress:
        detector, _ = load_registered(registry.get_model(sessions, model).location)
        if stored:
            result = rescore_stored(detector, sessions, topic, (start, end), name=name)
        else:
            if bootstrap is None:
                raise typer.BadParameter("--bootstrap is needed to read the topic")
            result = run_rescore(
                detector,
                sessions,
                bootstrap,
                topic,
                (start, end),
                name=name,
                kafka_options=kafka_options,
                batch=batch,
                on_progress=report,
            )
    if result.already_finished:
        typer.echo(f"backfill run {result.name} had finished: nothing to do")
        return
    typer.echo(f"backfill run {result.name}: {result.scored} scored, {result.flagged} flagged")


@dataclass(frozen=True)
class TopicTraining:
    """`latentwatch train --from-topic`: the records read, and where the model goes after."""

    topic: str
    table: Table
    window: tuple[datetime, datetime]
    register_as: str | None
    db: str | None
    store: Path | None


def read_topic_for_training(
    topic: str,
    *,
    bootstrap: str | None,
    window: tuple[str | None, str | None],
    exclude_flagged_by: str | None,
    register_as: str | None,
    db: str | None,
    store: Path | None,
    kafka_options: dict[str, object] | None = None,
) -> TopicTraining:
    """Read the reference records of ``train --from-topic`` and say what was left out."""
    from datetime import UTC

    from latentwatch.datafiles import records_table
    from lifecycle.follow import load_registered
    from lifecycle.topic_data import topic_records
    from lifecycle.window import parse_time
    from storage import registry

    if bootstrap is None:
        raise typer.BadParameter("--from-topic needs --bootstrap")
    if window[0] is None:
        raise typer.BadParameter("--from-topic needs --since AGE or --from TIME")
    if register_as not in {None, "shadow"}:
        raise typer.BadParameter(f"--register-as takes 'shadow', not {register_as!r}")
    if (register_as or exclude_flagged_by) and db is None:
        raise typer.BadParameter("--register-as and --exclude-flagged-by need --db")
    end = parse_time(window[1]) if window[1] else datetime.now(UTC)
    start = parse_time(window[0], end)
    exclude = None
    if exclude_flagged_by is not None:
        assert db is not None
        with _sessions(db) as sessions:
            location = registry.get_model(sessions, exclude_flagged_by).location
        exclude = load_registered(location)[0]
    data = topic_records(
        bootstrap, topic, (start, end), exclude_flagged_by=exclude, kafka_options=kafka_options
    )
    typer.echo(
        f"{topic}: {data.read} records from {start:%F %T} to {end:%F %T}; "
        f"{data.undecodable} undecodable and {data.excluded} flagged by "
        f"{exclude_flagged_by or 'no model'} left out; training on {len(data.records)}"
    )
    return TopicTraining(topic, records_table(data.records), (start, end), register_as, db, store)


def register_trained(directory: Path, stream: TopicTraining) -> None:
    """Register a model trained from a topic, and make it the topic's shadow if asked."""
    if stream.register_as is None or stream.db is None:
        return
    from lifecycle.roles import Registry, register_directory
    from lifecycle.store import DirectoryStore

    with _sessions(stream.db) as sessions:
        model, _ = register_directory(
            sessions,
            DirectoryStore(stream.store or DEFAULT_STORE),
            directory,
            actor=_actor(None),
            source=f"topic:{stream.topic}",
            window=stream.window,
        )
        roles = Registry(sessions, stream.topic, _actor(None)).shadow(model.version)
    _say(roles, stream.topic)
