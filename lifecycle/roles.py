"""Registry changes with their checks: a model is registered only if its directory loads, and
made live or shadow on a topic only if it reads the records the topic's live model reads.
Each refusal is a :class:`RegistryError` whose message is the one line a user sees."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from detector import artifact
from detector.detector import Detector
from detector.errors import ArtifactError
from detector.schema import Schema
from lifecycle.store import DirectoryStore, local_path
from storage import registry
from storage.registry import ModelEvent, RegisteredModel, RegistryError, Roles


def field_kinds(schema: Schema) -> dict[str, str]:
    return {f.name: f.kind.value for f in schema.fields}


def summary(detector: Detector, manifest: dict[str, Any]) -> dict[str, Any]:
    """What `models list` and the API show of a model without loading it."""
    cal = manifest.get("calibration", {})
    return {
        "format_version": manifest.get("format_version"),
        "fields": [[f.name, f.kind.value] for f in detector.schema.fields],
        "schema_fingerprint": detector.schema.fingerprint(),
        "fpr": cal.get("fpr"),
        "threshold": cal.get("threshold"),
        "reference_rows": detector.schema.reference_rows,
        "score_rule": manifest.get("score_rule"),
    }


def load_model(directory: Path, what: str) -> tuple[Detector, dict[str, Any]]:
    """A model directory loaded and checked (hashes, format), or a one-line refusal."""
    try:
        return artifact.load(directory)
    except ArtifactError as exc:
        raise RegistryError(f"{what} cannot be loaded: {exc}") from None


def register_directory(
    sessions: sessionmaker[Session],
    store: DirectoryStore,
    directory: Path,
    *,
    actor: str,
    source: str | None = None,
    window: tuple[datetime | None, datetime | None] = (None, None),
    now: datetime | None = None,
) -> tuple[RegisteredModel, bool]:
    """Check, copy into the store and register a model directory; the bool says whether it
    was new. The training source defaults to the file the manifest names."""
    detector, manifest = load_model(directory, f"model directory {directory}")
    location = store.put(directory, detector.version)
    created = manifest.get("created_at")
    model = RegisteredModel(
        version=detector.version,
        location=location,
        registered_at=now or datetime.now(UTC),
        registered_by=actor,
        summary=summary(detector, manifest),
        created_at=datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None,
        source=source or manifest.get("source", {}).get("path"),
        window_start=window[0],
        window_end=window[1],
    )
    return model, registry.register(sessions, model)


class Registry:
    """The registry of one topic (or group: any name the consumers follow)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        scope: str,
        actor: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.sessions, self.scope, self.actor, self.clock = sessions, scope, actor, clock

    def roles(self) -> Roles:
        return registry.roles(self.sessions, self.scope)

    def promote(self, version: str) -> Roles:
        current = self.roles()
        if version == current.live:
            raise RegistryError(f"{version} is already the live model of {self.scope}")
        self._check_fits(version, current)
        return self._record(version, "promote", current)

    def shadow(self, version: str) -> Roles:
        current = self.roles()
        if version == current.live:
            raise RegistryError(f"{version} is the live model of {self.scope}: it cannot shadow")
        if version == current.shadow:
            raise RegistryError(f"{version} is already the shadow model of {self.scope}")
        self._check_fits(version, current)
        return self._record(version, "shadow", current)

    def unshadow(self) -> Roles:
        current = self.roles()
        if current.shadow is None:
            raise RegistryError(f"{self.scope} has no shadow model")
        return self._record(current.shadow, "unshadow", current)

    def rollback(self) -> Roles:
        current = self.roles()
        previous = current.previous
        if previous is None:
            raise RegistryError(
                f"{self.scope} has no earlier live model to roll back to "
                f"(live: {current.live or 'none'})"
            )
        self._check_loads(previous)
        return self._record(previous, "rollback", current)

    def retire(self, version: str) -> Roles:
        current = self.roles()
        registry.get_model(self.sessions, version)
        if version == current.live:
            raise RegistryError(
                f"{version} is the live model of {self.scope}: promote another version or "
                "roll back first"
            )
        if version in current.retired:
            raise RegistryError(f"{version} is already retired on {self.scope}")
        return self._record(version, "retire", current)

    def _record(self, version: str, action: str, decided_on: Roles) -> Roles:
        """Record the change decided on the roles ``decided_on``: refused if the roles changed
        since (another change at the same time), so the checks made on them still hold."""
        event = ModelEvent(self.scope, version, action, self.actor, self.clock())
        registry.record_event(self.sessions, event, decided_on)
        return self.roles()

    def _check_loads(self, version: str) -> Detector:
        model = registry.get_model(self.sessions, version)
        detector, _ = load_model(local_path(model.location), f"model {version}")
        return detector

    def _check_fits(self, version: str, current: Roles) -> None:
        candidate = self._check_loads(version)
        if current.live is None:
            return
        live = registry.get_model(self.sessions, current.live)
        fields = {name: kind for name, kind in live.summary["fields"]}
        misfit = fields_misfit(fields, field_kinds(candidate.schema))
        if misfit:
            raise RegistryError(
                f"{version} does not fit the records of {self.scope}'s live model "
                f"{current.live}: {misfit}"
            )


def fields_misfit(live: Mapping[str, str], candidate: Mapping[str, str]) -> str | None:
    """Why a model reading the ``candidate`` fields (name -> kind) cannot score the records
    the ``live`` model scores, or None if it can: both must read the same fields as the same
    kinds (categories and statistics may differ: a new model learns them)."""
    if dict(candidate) == dict(live):
        return None
    missing = sorted(set(live) - set(candidate))
    extra = sorted(set(candidate) - set(live))
    kinds = sorted(n for n in set(candidate) & set(live) if candidate[n] != live[n])
    parts = []
    if extra:
        parts.append(f"fields the live model does not read: {', '.join(extra)}")
    if missing:
        parts.append(f"live fields it lacks: {', '.join(missing)}")
    if kinds:
        parts.append(
            "other kinds for " + ", ".join(f"{n} ({live[n]} -> {candidate[n]})" for n in kinds)
        )
    return "; ".join(parts)
