"""The model registry's tables: registered models, and the history of their roles per topic.

A topic's roles (one live model, at most one shadow, the retired ones) are never stored as
state: they are replayed from its events (:func:`replay`), so a rollback knows what was live
before, and every change says who made it and when. Each function is one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from common.errors import LatentwatchError
from storage.models import ModelEventRow, RegisteredModelRow

ACTIONS = ("promote", "shadow", "unshadow", "rollback", "retire")


class RegistryError(LatentwatchError):
    """A registry change that cannot work (an unknown version, a rollback with no past)."""


@dataclass(frozen=True)
class RegisteredModel:
    version: str
    location: str  # the model store's address of the directory
    registered_at: datetime
    registered_by: str
    summary: dict[str, Any]
    created_at: datetime | None = None
    source: str | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None


@dataclass(frozen=True)
class ModelEvent:
    scope: str
    version: str
    action: str
    actor: str
    at: datetime


@dataclass(frozen=True)
class Roles:
    """A topic's roles after its events: ``lives`` is the stack of live versions a rollback
    walks back through (the current one last)."""

    lives: tuple[str, ...] = ()
    shadow: str | None = None
    retired: frozenset[str] = field(default_factory=frozenset)
    # the sequence number of the last event replayed (0: none): a change decided on these
    # roles is recorded as the next one, or refused if another change took that number
    seq: int = field(default=0, compare=False, repr=False)

    @property
    def live(self) -> str | None:
        return self.lives[-1] if self.lives else None

    @property
    def previous(self) -> str | None:
        """The version a rollback returns to."""
        return self.lives[-2] if len(self.lives) > 1 else None

    def role(self, version: str) -> str:
        if version == self.live:
            return "live"
        if version == self.shadow:
            return "shadow"
        if version in self.retired:
            return "retired"
        return "registered"


def replay(events: Iterable[tuple[str, str]]) -> Roles:
    """The roles after ``(action, version)`` events, oldest first (pure).

    >>> replay([("promote", "a"), ("shadow", "b"), ("promote", "b"), ("rollback", "a")])
    Roles(lives=('a',), shadow=None, retired=frozenset())
    """
    lives: list[str] = []
    shadow: str | None = None
    retired: set[str] = set()
    for action, version in events:
        if action == "promote":
            if not lives or lives[-1] != version:
                lives = [v for v in lives if v != version] + [version]
            retired.discard(version)
            shadow = None if shadow == version else shadow
        elif action == "shadow":
            shadow = version
            retired.discard(version)
        elif action == "unshadow":
            shadow = None if shadow == version else shadow
        elif action == "rollback":
            lives.pop()
        elif action == "retire":
            retired.add(version)
            lives = [v for v in lives if v != version]
            shadow = None if shadow == version else shadow
    return Roles(tuple(lives), shadow, frozenset(retired))


def _model(row: RegisteredModelRow) -> RegisteredModel:
    return RegisteredModel(
        version=row.version,
        location=row.location,
        registered_at=row.registered_at,
        registered_by=row.registered_by,
        summary=dict(row.summary),
        created_at=row.created_at,
        source=row.source,
        window_start=row.window_start,
        window_end=row.window_end,
    )


def register(sessions: sessionmaker[Session], model: RegisteredModel) -> bool:
    """Add a model; False if its version was registered already (the same content: the
    version is a hash of it), which leaves the first registration as it was."""
    with sessions() as session, session.begin():
        if session.get(RegisteredModelRow, model.version) is not None:
            return False
        session.add(RegisteredModelRow(**model.__dict__))
    return True


def get_model(sessions: sessionmaker[Session], version: str) -> RegisteredModel:
    with sessions() as session:
        row = session.get(RegisteredModelRow, version)
        if row is None:
            raise RegistryError(
                f"model version {version!r} is not registered "
                "(see `latentwatch models list`; add one with `latentwatch models register DIR`)"
            )
        return _model(row)


def list_models(sessions: sessionmaker[Session]) -> list[RegisteredModel]:
    with sessions() as session:
        rows = session.scalars(
            select(RegisteredModelRow).order_by(RegisteredModelRow.registered_at)
        )
        return [_model(r) for r in rows]


def _event_rows(session: Session, scope: str) -> list[ModelEventRow]:
    return list(
        session.scalars(
            select(ModelEventRow).where(ModelEventRow.scope == scope).order_by(ModelEventRow.seq)
        )
    )


def events(sessions: sessionmaker[Session], scope: str) -> list[ModelEvent]:
    with sessions() as session:
        rows = _event_rows(session, scope)
        return [ModelEvent(r.scope, r.version, r.action, r.actor, r.at) for r in rows]


def roles(sessions: sessionmaker[Session], scope: str) -> Roles:
    with sessions() as session:
        rows = _event_rows(session, scope)
        replayed = replay((r.action, r.version) for r in rows)
        return replace(replayed, seq=rows[-1].seq if rows else 0)


def record_event(
    sessions: sessionmaker[Session], event: ModelEvent, decided_on: Roles | None = None
) -> None:
    """Record a change decided on the roles ``decided_on`` (None: on whatever the roles are
    now). If another change was recorded since those roles were read, this one is refused:
    two promotions at once cannot both win, the second one silently."""
    if event.action not in ACTIONS:
        raise ValueError(f"unknown registry action {event.action!r}: one of {', '.join(ACTIONS)}")
    try:
        with sessions() as session, session.begin():
            if decided_on is None:
                last = session.scalar(
                    select(func.max(ModelEventRow.seq)).where(ModelEventRow.scope == event.scope)
                )
                seq = (last or 0) + 1
            else:
                seq = decided_on.seq + 1
            session.add(ModelEventRow(**event.__dict__, seq=seq))
    except IntegrityError:
        raise RegistryError(
            f"the roles of {event.scope} changed while this {event.action} was being made "
            "(another change at the same time): see `latentwatch models list` and run it "
            "again if it is still wanted"
        ) from None


def assignment(
    sessions: sessionmaker[Session], scope: str
) -> tuple[RegisteredModel | None, RegisteredModel | None]:
    """The live and the shadow model of ``scope`` (either None), as a consumer follows them."""
    current = roles(sessions, scope)
    return tuple(  # type: ignore[return-value]
        None if v is None else get_model(sessions, v) for v in (current.live, current.shadow)
    )
