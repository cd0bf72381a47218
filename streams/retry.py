"""Retrying with capped exponential backoff, one log line per failure, until a stop is asked.

One mechanism for every wait on infrastructure: the consumer loop's database and dead-letter
writes, Kafka clients that cannot reach a broker at start, and start-up steps that need the
database."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("latentwatch.retry")

T = TypeVar("T")


class Stopped(Exception):  # noqa: N818  (a state, not a programming error)
    """Shutdown was requested while waiting to retry: the work was abandoned."""


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
) -> T:
    """Run ``action`` until it succeeds; after each ``retry_on`` failure wait (``initial_s``
    doubling to ``max_s``). Raises :class:`Stopped` if ``stop`` is set while waiting; any other
    exception propagates at once."""
    delay = initial_s
    failures = 0
    while True:
        try:
            result = action()
        except retry_on as exc:
            failures += 1
            on_error()
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("%s failed (%s); retrying in %.1f s", what, reason, delay)
            if stop.wait(delay):
                raise Stopped(what) from exc
            on_retry()
            delay = min(delay * 2, max_s)
        else:
            if failures:
                log.info("%s succeeded after %d failed attempts", what, failures)
            return result
