"""Registry roles: the pure replay of a topic's events, and the checks of each change on
SQLite and PostgreSQL (unknown versions, models that do not fit, damaged directories)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from lifecycle.roles import Registry, fields_misfit, register_directory
from lifecycle.store import DirectoryStore, local_path
from storage import registry
from storage.registry import RegistryError, replay
from tests.support.cancer_model import Model
from tests.support.lifecycle_models import recalibrated


def test_replay_keeps_one_live_one_shadow_and_a_rollback_stack() -> None:
    roles = replay(
        [("promote", "a"), ("shadow", "b"), ("promote", "b"), ("shadow", "c"), ("promote", "c")]
    )
    assert (roles.live, roles.previous, roles.shadow) == ("c", "b", None)
    assert replay([("promote", "a"), ("promote", "b"), ("rollback", "a")]).lives == ("a",)
    # a retired version leaves the stack: a rollback never returns to it
    roles = replay([("promote", "a"), ("promote", "b"), ("promote", "c"), ("retire", "b")])
    assert (roles.live, roles.previous, roles.role("b")) == ("c", "a", "retired")
    assert replay([("shadow", "a"), ("unshadow", "a")]).shadow is None
    assert replay([("shadow", "a"), ("retire", "a")]).role("a") == "retired"


def test_fields_misfit_names_what_differs() -> None:
    live = {"amount": "numeric", "country": "categorical"}
    assert fields_misfit(live, dict(live)) is None
    why = fields_misfit(live, {"amount": "categorical", "age": "numeric"})
    assert why is not None
    assert "age" in why and "country" in why and "amount (numeric -> categorical)" in why


def test_register_promote_shadow_rollback_retire(
    sessions: sessionmaker[Session], cancer_model: Model, loose_model: Model, tmp_path: Path
) -> None:
    store = DirectoryStore(tmp_path / "store")
    a, new = register_directory(sessions, store, cancer_model.path, actor="test")
    assert new and a.version == cancer_model.detector.version
    assert (local_path(a.location) / "manifest.json").exists()
    assert register_directory(sessions, store, cancer_model.path, actor="test")[1] is False
    b, _ = register_directory(sessions, store, loose_model.path, actor="test", source="s.csv")
    assert registry.get_model(sessions, b.version).source == "s.csv"
    assert b.summary["fpr"] == pytest.approx(0.2)

    reg = Registry(sessions, "payments", "alice")
    assert reg.promote(a.version).live == a.version
    roles = reg.shadow(b.version)
    assert (roles.live, roles.shadow) == (a.version, b.version)
    roles = reg.promote(b.version)
    assert (roles.live, roles.shadow, roles.previous) == (b.version, None, a.version)
    assert reg.rollback().live == a.version
    with pytest.raises(RegistryError, match="no earlier live model"):
        reg.rollback()
    with pytest.raises(RegistryError, match="is the live model of payments"):
        reg.retire(a.version)
    assert reg.retire(b.version).role(b.version) == "retired"
    # other topics are not affected; every change says who made it
    assert Registry(sessions, "other", "bob").roles().live is None
    assert {e.actor for e in registry.events(sessions, "payments")} == {"alice"}


def test_refusals(
    sessions: sessionmaker[Session],
    cancer_model: Model,
    misfit_model: Path,
    damaged_model: Path,
    tmp_path: Path,
) -> None:
    store = DirectoryStore(tmp_path / "store")
    with pytest.raises(RegistryError, match="cannot be loaded"):
        register_directory(sessions, store, damaged_model, actor="test")
    a, _ = register_directory(sessions, store, cancer_model.path, actor="test")
    other, _ = register_directory(sessions, store, misfit_model, actor="test")
    reg = Registry(sessions, "t", "test")
    with pytest.raises(RegistryError, match="'nope' is not registered"):
        reg.promote("nope")
    reg.promote(a.version)
    with pytest.raises(RegistryError, match="does not fit the records of t's live model"):
        reg.promote(other.version)
    with pytest.raises(RegistryError, match="does not fit"):
        reg.shadow(other.version)
    # a store copy damaged after registration is refused too
    weights = local_path(a.location) / "weights.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(RegistryError, match="cannot be loaded"):
        Registry(sessions, "u", "test").promote(a.version)
    assert reg.roles().live == a.version


def test_two_promotions_at_once_cannot_both_win(
    sessions: sessionmaker[Session], cancer_model: Model, loose_model: Model, tmp_path: Path
) -> None:
    """Two users promote different versions at the same moment: both decide on the same roles
    (the barrier holds each one after its checks, just before it records the change); exactly
    one promotion is recorded, the other is refused with one line and leaves no event."""
    store = DirectoryStore(tmp_path / "store")
    other = recalibrated(cancer_model, tmp_path, 0.05)
    a, b, c = (
        register_directory(sessions, store, m.path, actor="test")[0]
        for m in (cancer_model, loose_model, other)
    )
    Registry(sessions, "orders", "test").promote(a.version)
    both_decided = threading.Barrier(2, timeout=30)

    def clock() -> datetime:  # called once a change is decided, just before it is recorded
        both_decided.wait()
        return datetime.now(UTC)

    outcomes: dict[str, str] = {}

    def promote(version: str) -> None:
        try:
            Registry(sessions, "orders", version, clock).promote(version)
            outcomes[version] = "promoted"
        except RegistryError as exc:
            outcomes[version] = str(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in (b.version, c.version)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [v for v, outcome in outcomes.items() if outcome == "promoted"]
    assert len(outcomes) == 2 and len(winners) == 1, outcomes
    (loser,) = set(outcomes) - set(winners)
    assert outcomes[loser].startswith("the roles of orders changed while this promote")
    roles = registry.roles(sessions, "orders")
    assert (roles.live, roles.previous) == (winners[0], a.version)
    assert [e.actor for e in registry.events(sessions, "orders")] == ["test", winners[0]]
