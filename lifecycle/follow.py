"""A consumer following the model registry: a thread looks at the topic's roles every few
seconds, loads a changed model beside the running one, and hands the new set to the loop,
which switches between two batches (never within one, never leaving the group). A model that
cannot be loaded here, or does not read the records the running live model reads, is not
used: the consumer keeps what it has, says so in its log and in metrics, and tries again
later (a store being repaired)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from detector import artifact
from detector.detector import Detector
from lifecycle.roles import field_kinds, fields_misfit
from lifecycle.settings import REGISTRY_POLL_S
from lifecycle.store import local_path
from storage import registry
from storage.registry import RegisteredModel, RegistryError
from streams.consumer import ModelSet
from streams.metrics import StreamMetrics

log = logging.getLogger("latentwatch.registry")

RETRY_FAILED_S = 30.0  # a model that failed to load is tried again after this long

Loader = Callable[[str], tuple[Detector, dict[str, Any]]]


def load_registered(location: str) -> tuple[Detector, dict[str, Any]]:
    return artifact.load(local_path(location))


def live_model(
    sessions: sessionmaker[Session], scope: str, load: Loader = load_registered
) -> ModelSet:
    """The registry's live (and shadow) model of ``scope``, at start-up: a consumer that
    follows the registry starts on them. A shadow model that fails to load is left out."""
    live, shadow = registry.assignment(sessions, scope)
    if live is None:
        raise RegistryError(
            f"{scope} has no live model in the registry: `latentwatch models register DIR` "
            f"then `latentwatch models promote VERSION --topic {scope}`"
        )
    detector, manifest = load(live.location)
    shadow_detector = None
    if shadow is not None:
        try:
            shadow_detector = _fitting(load(shadow.location)[0], detector)
        except Exception as exc:
            log.error("shadow model %s not used: %s", shadow.version, exc)
    return ModelSet(detector, manifest, shadow_detector)


def _fitting(candidate: Detector, live: Detector) -> Detector:
    misfit = fields_misfit(field_kinds(live.schema), field_kinds(candidate.schema))
    if misfit:
        raise RegistryError(f"it does not read the records the live model reads: {misfit}")
    return candidate


class RegistryFollower:
    """Looks at the registry every ``interval_s`` in a thread of its own; ``take`` gives the
    loop the models to switch to, once per change."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        scope: str,
        current: ModelSet,
        metrics: StreamMetrics,
        *,
        interval_s: float = REGISTRY_POLL_S,
        retry_failed_s: float = RETRY_FAILED_S,
        load: Loader = load_registered,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions, self.scope, self.metrics = sessions, scope, metrics
        self.interval_s, self.retry_failed_s = interval_s, retry_failed_s
        self.load, self.clock = load, clock
        self._lock = threading.Lock()
        self._latest = current  # what the loop will use once it takes the pending change
        self._pending: ModelSet | None = None
        self._failed: dict[tuple[str, str], float] = {}  # (role, version) -> when it failed
        self._thread: threading.Thread | None = None
        metrics.set_roles(current.live.version, current.shadow.version if current.shadow else None)

    def take(self) -> ModelSet | None:
        with self._lock:
            change, self._pending = self._pending, None
            return change

    def check(self) -> None:
        """One look at the registry (the thread's step; tests call it directly)."""
        live, shadow = registry.assignment(self.sessions, self.scope)
        with self._lock:
            base = self._latest
        new_live, manifest = base.live, base.manifest
        failing = False
        if live is not None and live.version != base.live.version:
            loaded = self._load("live", live, base.live)
            if loaded is None:
                failing = True
            else:
                new_live, manifest = loaded
        new_shadow = base.shadow
        wanted_shadow = shadow.version if shadow is not None else None
        if shadow is None:
            new_shadow = None
        elif base.shadow is None or base.shadow.version != wanted_shadow:
            loaded = self._load("shadow", shadow, new_live)
            new_shadow = None if loaded is None else loaded[0]
            failing = failing or loaded is None
        if not failing:
            self.metrics.model_load_cleared()
        if new_live is base.live and new_shadow is base.shadow:
            return
        change = ModelSet(new_live, manifest, new_shadow)
        with self._lock:
            self._latest = self._pending = change

    def _load(
        self, role: str, model: RegisteredModel, live: Detector
    ) -> tuple[Detector, dict[str, Any]] | None:
        key = (role, model.version)
        failed_at = self._failed.get(key)
        if failed_at is not None and self.clock() - failed_at < self.retry_failed_s:
            return None
        try:
            detector, manifest = self.load(model.location)
            _fitting(detector, live)
        except Exception as exc:
            self._failed[key] = self.clock()
            self.metrics.model_load_failed(role, model.version)
            kept = live.version if role == "live" else "no shadow model"
            log.error(
                "cannot use the registry's %s model %s of %s (%s): keeping %s",
                role,
                model.version,
                self.scope,
                exc,
                kept,
            )
            return None
        self._failed.pop(key, None)
        log.info("loaded the registry's %s model %s of %s", role, model.version, self.scope)
        return detector, manifest

    def start(self, stop: threading.Event) -> RegistryFollower:
        def run() -> None:
            while not stop.wait(self.interval_s):
                try:
                    self.check()
                except Exception as exc:  # the database away: try at the next interval
                    log.warning("cannot read the model registry (%s); trying again", exc)

        self._thread = threading.Thread(target=run, name="registry-follower", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout_s: float = 5.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)
