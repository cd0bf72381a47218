"""What every request meets first, before routing, parsing or validation (a pure ASGI
middleware): its Host must be a name the server trusts, which keeps pages of other origins out
through DNS rebinding; its query string must be of bounded size and parameter count, so an
oversize request costs microseconds instead of holding the event loop while thousands of
parameters are parsed, validated and echoed back. And every answer, whoever wrote it (a route,
the static files, a refusal here, an error page), leaves with the security headers."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.settings import ApiSettings

# The explorer loads only its own files: no CDN, no inline script, nothing sent elsewhere.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# JSON answers load nothing; opened in a browser tab, they run nothing either.
DATA_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
# FastAPI's interactive pages load their scripts and styles from its CDN, with an inline script.
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com "
    "https://cdn.redoc.ly; worker-src blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")
COMMON_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
}


@dataclass(frozen=True)
class Refusal:
    status: int
    detail: str


def host_name(header: str) -> str:
    """The name in a Host header, lower-case, without port, brackets or a trailing dot.

    >>> host_name("[::1]:8000"), host_name("LocalHost.:80"), host_name("example.org")
    ('::1', 'localhost', 'example.org')
    """
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:  # name:port (a bare IPv6 address has more colons)
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def host_trusted(name: str, trusted: Iterable[str]) -> bool:
    """Whether ``name`` (from :func:`host_name`) matches one of ``trusted``: an exact name, a
    ``*.domain`` pattern (subdomains of domain), or ``*`` (anything)."""
    for given in trusted:
        pattern = host_name(given)
        if pattern in ("*", name):
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


def refusal_for(host: str | None, query: bytes, settings: ApiSettings) -> Refusal | None:
    """Why a request is refused before any work, or None. ``host`` is its Host header (None
    when it sent none: HTTP/1.0 clients, never a browser, so never a rebinding page)."""
    if host is not None and not host_trusted(host_name(host), settings.trusted_hosts):
        return Refusal(
            400,
            f"host {host_name(host)!r} is not one this server answers to: open it by a trusted "
            "name (localhost, 127.0.0.1), or start it with --trusted-host NAME",
        )
    if len(query) > settings.max_query_bytes:
        return Refusal(
            414,
            f"query string of {len(query)} bytes is longer than the {settings.max_query_bytes} "
            "allowed: give fewer or shorter parameters",
        )
    count = sum(1 for part in query.split(b"&") if part)
    if count > settings.max_query_params:
        return Refusal(
            400,
            f"query string has {count} parameters, more than the {settings.max_query_params} "
            "allowed: give only the parameters the route takes, each once",
        )
    return None


def security_headers(path: str) -> dict[str, str]:
    """The headers every answer for ``path`` carries."""
    if path == "/" or path.startswith("/static/"):
        policy = PAGE_POLICY
    elif path in DOCS_PATHS:
        policy = DOCS_POLICY
    else:
        policy = DATA_POLICY
    headers = {**COMMON_HEADERS, "content-security-policy": policy}
    if not path.startswith("/static/"):  # data and pages change; the page's files revalidate
        headers["cache-control"] = "no-store"
    return headers


class RequestGuard:
    """ASGI middleware applying :func:`refusal_for` and :func:`security_headers`."""

    def __init__(self, app: ASGIApp, settings: ApiSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [(k.encode(), v.encode()) for k, v in security_headers(scope["path"]).items()]
        names = {name for name, _ in extra}
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        refusal = refusal_for(host, scope.get("query_string", b""), self.settings)
        if refusal is not None:
            body = json.dumps({"detail": refusal.detail}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": refusal.status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        *extra,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": [*kept, *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
