"""Times on the command line: ISO-8601 (UTC when no offset is given) or an age before now
(``24h``, ``30m``, ``2d``), as the lifecycle commands take them."""

from __future__ import annotations

from datetime import UTC, datetime

from common.errors import LatentwatchError
from storage.repository import parse_age


class TimeError(LatentwatchError, ValueError):
    """A time the command line cannot read."""


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """``2026-12-04T10:00`` (UTC), ``2026-12-04T10:00+01:00``, or an age such as ``24h``
    (that long before ``now``).

    >>> parse_time("2026-12-04T10:00").isoformat()
    '2026-12-04T10:00:00+00:00'
    >>> parse_time("2h", datetime(2026, 12, 4, 12, tzinfo=UTC)).isoformat()
    '2026-12-04T10:00:00+00:00'
    """
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            return (now or datetime.now(UTC)) - parse_age(text)
        except ValueError:
            raise TimeError(
                f"cannot read the time {text!r}: give ISO-8601 (2026-12-04T10:00Z) or an "
                "age before now (30m, 24h, 7d)"
            ) from None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
