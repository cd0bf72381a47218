"""Query parameters: those shared by routes, turned into the typed filters of ``storage.queries``
(each described here once, so /openapi.json documents it wherever it is used), and the check
that refuses a parameter the route does not declare."""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from api.dependencies import invalid
from storage.queries import FlaggedFilter, Ordering, QueryError

# Text the database can store: no NUL characters (PostgreSQL refuses them in text).
NO_NUL = r"^[^\x00]*$"
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1

TimeQuery = Annotated[
    str | None,
    Query(
        max_length=64,
        description="ISO-8601 time, e.g. 2026-11-01T12:00:00Z or 2026-11-01; without an "
        "offset it is UTC. start is inclusive, end exclusive; both apply to time_field.",
        json_schema_extra={"format": "date-time"},
    ),
]
SeverityQuery = Annotated[
    float | None,
    Query(ge=0, le=100, allow_inf_nan=False, description="Only records with severity >= this."),
]


def _utc(name: str, text: str | None) -> datetime | None:
    """An ISO-8601 time as UTC. Parsed here rather than by pydantic, which would also take
    numbers (as seconds since the epoch) where the API promises ISO-8601 only."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        message = f"{name} {text!r} is not an ISO-8601 time: use e.g. 2026-11-01T12:00:00Z"
        raise invalid("query", name, message, text) from None
    if value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        message = f"{name} {text!r} is outside the years 1..9999 in UTC"
        raise invalid("query", name, message, text) from None


def flagged_filter(  # noqa: PLR0917 - FastAPI passes query parameters by keyword
    start: TimeQuery = None,
    end: TimeQuery = None,
    time_field: Annotated[
        Literal["scored", "event"],
        Query(
            description="Which time start/end, sort=time and stats buckets use: when the "
            "record was scored, or its event time (records without one are left out)."
        ),
    ] = "scored",
    min_severity: SeverityQuery = None,
    record_score: Annotated[
        float | None,
        Query(
            ge=0,
            le=100,
            allow_inf_nan=False,
            description="Alias of min_severity (the name Elastic's anomaly records API uses).",
        ),
    ] = None,
    # Text filters are a value or absent: an empty one (topic=) is refused like an empty number
    # (min_severity=), not taken to mean "equal to the empty string".
    topic: Annotated[
        str | None,
        Query(min_length=1, max_length=255, pattern=NO_NUL, description="Kafka topic."),
    ] = None,
    model_version: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            pattern=NO_NUL,
            description="Version of the model that scored it.",
        ),
    ] = None,
    cluster: Annotated[
        int | None, Query(ge=0, le=MAX_INT32, description="Nearest reference cluster.")
    ] = None,
    top_feature: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=1_000,
            pattern=NO_NUL,
            description="The most surprising field's name.",
        ),
    ] = None,
    key: Annotated[
        str | None,
        Query(
            pattern=NO_NUL,
            description="The Kafka key, readable form: its text, or hex digits for a binary "
            "key (as `key` in the records). Not indexed: combine it with a time range.",
        ),
    ] = None,
) -> FlaggedFilter:
    if min_severity is not None and record_score is not None:
        raise invalid(
            "query", "record_score", "give min_severity or record_score, not both", record_score
        )
    try:
        return FlaggedFilter(
            start=_utc("start", start),
            end=_utc("end", end),
            time_field=time_field,
            min_severity=min_severity if min_severity is not None else record_score,
            topic=topic,
            model_version=model_version,
            cluster=cluster,
            top_feature=top_feature,
            key=key,
        )
    except QueryError as exc:
        raise invalid("query", "end", str(exc), end) from None


def ordering(
    sort: Annotated[
        Literal["time", "score"],
        Query(description="Order by time (see time_field) or by score; ties by id."),
    ] = "time",
    desc: Annotated[bool, Query(description="Newest / most anomalous first.")] = True,
) -> Ordering:
    return Ordering(sort=sort, descending=desc)


FilterDep = Annotated[FlaggedFilter, Depends(flagged_filter)]
OrderingDep = Annotated[Ordering, Depends(ordering)]


def declared_query_names(dependant: Dependant) -> frozenset[str]:
    """The query parameters a route (or dependency) declares, sub-dependencies included, by
    the name a client sends (the alias: ``format``, not ``output_format``)."""
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= declared_query_names(sub)
    return frozenset(names)


def query_name_errors(
    given: Sequence[tuple[str, str]], known: Collection[str]
) -> list[dict[str, Any]]:
    """One 422 error, in FastAPI's shape, per ``(name, value)`` whose name is not ``known``,
    and one per name given more than once. An unknown parameter would otherwise be ignored
    (``severity=50``, for ``min_severity``, would answer 200 with unfiltered rows), and of a
    repeated one FastAPI would silently keep the last."""
    takes = ", ".join(sorted(known)) if known else "no query parameters"
    errors = []
    counts = Counter(name for name, _ in given)
    for name, value in given:
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        errors.append(
            {
                "type": "extra_forbidden",
                "loc": ("query", name),
                "msg": f"unknown query parameter {name!r}{hint}: this route takes {takes}",
                "input": value,
            }
        )
    for name, count in counts.items():
        if count > 1 and name in known:
            errors.append(
                {
                    "type": "repeated",
                    "loc": ("query", name),
                    "msg": f"query parameter {name!r} is given {count} times: give it once",
                    "input": [value for n, value in given if n == name],
                }
            )
    return errors


async def check_query_names(request: Request) -> None:
    """A dependency, applied to every API route by the app factory: 422 for query parameters
    the matched route does not declare, or that are given more than once. It reads the
    route's own dependant, which holds the endpoint's and its router's dependencies, not
    those given to ``include_router`` (the token check, and this one): dependencies added
    there must not declare query parameters. Runs on the event loop: ``api.guard`` has
    already bounded how many parameters there are."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        raise RuntimeError(
            "check_query_names found no FastAPI route in the request scope: "
            "use it as a dependency of API routes only"
        )
    errors = query_name_errors(
        request.query_params.multi_items(), declared_query_names(route.dependant)
    )
    if errors:
        raise RequestValidationError(errors)
