"""`latentwatch models ...`: the model registry from the command line. Every refusal (an unknown
version, a model that does not fit the topic's live one, a damaged directory) is a
RegistryError, which the CLI's entry point prints as one line."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

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
