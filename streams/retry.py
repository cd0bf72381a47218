"""Retrying with capped exponential backoff, one log line per failure, until a stop is asked.

One mechanism for every wait on infrastructure: the consumer loop's database and dead-letter
writes, Kafka clients that cannot reach a broker at start, and start-up steps that need the
database."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("latentwatch.retry")

T = TypeVar("T")


class Stopped(Exception):  # noqa: N818  (a state, not a programming error)
    """Shutdown was requested while waiting to retry: the work was abandoned."""


class GaveUp(Exception):  # noqa: N818  (a state, not a programming error)
    """The deadline passed with the action still failing."""

    def __init__(self, what: str, elapsed_s: float, reason: str) -> None:
        super().__init__(f"{what}: gave up after {elapsed_s:.0f} s: {reason}")
        self.what, self.elapsed_s, self.reason = what, elapsed_s, reason


def retry_with_backoff(
    action: Callable[[], T],
    what: str,
    stop: threading.Event,
    *,
    retry_on: tuple[type[BaseException], ...],
    initial_s: float = 0.5,
    max_s: float = 10.0,
    on_error: Callable[[], None] = lambda: None,
    on_retry: Callable[[], None] = lambda: None,
    give_up_at: float | None = None,
) -> T:
    """Run ``action`` until it succeeds; after each ``retry_on`` failure wait (``initial_s``
    doubling to ``max_s``). Raises :class:`Stopped` if ``stop`` is set while waiting, and
    :class:`GaveUp` once the ``time.monotonic()`` deadline ``give_up_at`` has passed (the last
    attempt comes at the deadline); any other exception propagates at once."""
    delay = initial_s
    failures = 0
    started = time.monotonic()
    while True:
        try:
            result = action()
        except retry_on as exc:
            failures += 1
            on_error()
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            now = time.monotonic()
            if give_up_at is not None and now >= give_up_at:
                raise GaveUp(what, now - started, reason) from exc
            wait = delay if give_up_at is None else min(delay, give_up_at - now)
            log.warning("%s failed (%s); retrying in %.1f s", what, reason, wait)
            if stop.wait(wait):
                raise Stopped(what) from exc
            on_retry()
            delay = min(delay * 2, max_s)
        else:
            if failures:
                log.info("%s succeeded after %d failed attempts", what, failures)
            return result
