"""The storage layer's settings (plain dataclasses: importing this module loads no driver)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timeouts:
    """How long one PostgreSQL statement may run, and wait for a lock, before it fails (None:
    no limit, as for migrations, which may run long). The consumer sets both: a write that
    fails is logged and retried with backoff, where a write without limits would hang, and
    a shutdown behind it, for as long as a lock is held. (SQLite waits at most
    ``SQLITE_BUSY_TIMEOUT_MS`` for a lock, always.)"""

    statement_s: float | None = None
    lock_s: float | None = None

    def postgres_options(self) -> str:
        """libpq's ``options``: server settings for each connection."""
        limits = {"statement_timeout": self.statement_s, "lock_timeout": self.lock_s}
        return " ".join(
            f"-c {name}={round(s * 1000)}" for name, s in limits.items() if s is not None
        )


NO_TIMEOUTS = Timeouts()  # as for migrations
