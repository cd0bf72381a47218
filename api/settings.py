"""What the API is allowed to do: the optional bearer token, the Host names it answers to, and
the bounds that keep any one request cheap (query string, page size, export rows, stats buckets,
the readiness check)."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import LatentwatchError

# Names a browser only sends for this machine: a page of another origin cannot make a browser
# send them to this server (DNS rebinding needs a name the attacker's DNS answers for).
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
MIN_TOKEN_CHARS = 16


class ApiSettingsError(LatentwatchError, ValueError):
    """Settings that would serve the API with a door open (or that cannot work)."""


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot protect the API, or None. An empty one most often comes from an
    unset shell variable (``--token "$TOKEN"``): taken as "no token", it opened the API."""
    if not token.strip():
        return (
            "the API token is empty (an unset variable?): give a token, or none at all to "
            "serve on loopback without one"
        )
    if not all("!" <= c <= "~" for c in token):
        return "the API token must be printable ASCII without spaces (it is sent in a header)"
    if len(token) < MIN_TOKEN_CHARS:
        return (
            f"the API token has {len(token)} characters, fewer than {MIN_TOKEN_CHARS}: make "
            "one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return None


@dataclass(frozen=True)
class ApiSettings:
    token: str | None = None  # when set, every route but /health and the page needs it
    # Host header names (port ignored) the server answers; "*.example.com" matches subdomains,
    # "*" any name. Requests without a Host header (HTTP/1.0) are let through.
    trusted_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    # Every parameter at its longest fits (top_feature's 1,000 characters, as percent-encoded
    # UTF-8, are up to 12 KB); beyond that a query string is refused before it is parsed.
    max_query_bytes: int = 32_768
    max_query_params: int = 32  # a route takes at most 15, the explorer page's links about 15
    default_page_size: int = 50
    max_page_size: int = 1_000
    export_max_rows: int = 100_000  # rows per CSV/JSONL export; more: narrow the filters
    export_chunk_size: int = 1_000  # rows per database round trip while streaming an export
    max_buckets: int = 10_000  # time buckets per stats answer
    ready_timeout_s: float = 2.0  # /ready answers 503 when the database takes longer
    max_record_bytes: int = 65_536  # a record posted to be explained
    max_record_fields: int = 2_000

    def __post_init__(self) -> None:
        problem = token_problem(self.token) if self.token is not None else None
        if problem:
            raise ApiSettingsError(f"{problem} (pass None to serve without a token)")
        if not self.trusted_hosts or any(not h.strip() for h in self.trusted_hosts):
            raise ApiSettingsError(
                'ApiSettings.trusted_hosts needs at least one non-empty name ("*" for any)'
            )
        if not 1 <= self.default_page_size <= self.max_page_size:
            raise ApiSettingsError(
                f"ApiSettings.default_page_size ({self.default_page_size}) must be between 1 "
                f"and max_page_size ({self.max_page_size})"
            )
        for name in (
            "export_max_rows",
            "export_chunk_size",
            "max_buckets",
            "max_query_bytes",
            "max_query_params",
            "max_record_bytes",
            "max_record_fields",
        ):
            if getattr(self, name) < 1:
                raise ApiSettingsError(f"ApiSettings.{name} must be at least 1")
        if not self.ready_timeout_s > 0:
            raise ApiSettingsError("ApiSettings.ready_timeout_s must be positive")
