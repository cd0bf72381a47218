"""What routes receive from FastAPI: database sessions (from the factory given to create_app;
tests can override either dependency) and the bearer-token check."""

# No `from __future__ import annotations`: FastAPI evaluates the annotations of the closure
# in bearer_auth, which name its local security scheme.

import hmac
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker


def get_session_factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


def get_session(
    factory: Annotated[sessionmaker[Session], Depends(get_session_factory)],
) -> Iterator[Session]:
    with factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]


def bearer_auth(token: str) -> Callable[..., None]:
    """A dependency that lets a request through only with ``Authorization: Bearer <token>``."""
    expected = token.encode("utf-8")
    scheme = HTTPBearer(
        auto_error=False,
        description="The API token (latentwatch api --token, or LATENTWATCH_API_TOKEN).",
    )

    def check(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(scheme)],
    ) -> None:
        # Bytes: compare_digest refuses non-ASCII str, and header values can be any Latin-1.
        given = credentials.credentials.encode("utf-8") if credentials else b""
        if not credentials or not hmac.compare_digest(given, expected):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="missing or wrong API token: "
                "send the header 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


def invalid(where: str, name: str, message: str, value: Any = None) -> RequestValidationError:
    """A 422 in FastAPI's own shape, for checks that span parameters or need the database."""
    return RequestValidationError(
        [{"type": "value_error", "loc": (where, name), "msg": message, "input": value}]
    )
