"""Who a request acts for: bearer tokens, rate limits, and each user's own data.

Protected routes check all three before FastAPI reads the request body, so a
request without a valid token is answered 401, and one for another user's data
404, whatever else it sends.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer

from reading_history import access
from reading_history.access import Principal
from reading_history.core.db import Connection
from reading_history.core.metrics import Metrics
from reading_history.core.ratelimit import TokenBucketLimiter, retry_after_header
from reading_history.schemas import ID_MAX, ErrorDetail
from reading_history.tokens import looks_like_token

REALM = "reading-history"
# Starlette's answer for a path no route serves: another user's data, or an
# entry that is not the user's, looks exactly like something that is not there.
NOT_FOUND_DETAIL = "Not Found"
# A user id written as plain digits; anything else is left to validation (422).
PLAIN_USER_ID = re.compile(r"^[0-9]{1,19}$")

security_logger = logging.getLogger("reading_history.security")

bearer_scheme = HTTPBearer(
    scheme_name="bearerAuth",
    bearerFormat="opaque",
    description=(
        "A token made by `reading-history tokens create`. Each token acts for "
        "one user only: other users' data answers 404."
    ),
    auto_error=False,
)

PROTECTED_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorDetail,
        "description": "No bearer token, or an unknown or revoked one.",
        "headers": {
            "WWW-Authenticate": {
                "description": 'Bearer, with error="invalid_token" for a bad token.',
                "schema": {"type": "string"},
            }
        },
    },
    404: {
        "model": ErrorDetail,
        "description": "Not found for this token: other users' data never is.",
    },
    429: {
        "model": ErrorDetail,
        "description": "The token is over its rate limit.",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before the next request.",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    },
    503: {"model": ErrorDetail, "description": "The database is unavailable."},
}


def not_found() -> HTTPException:
    return HTTPException(status_code=404, detail=NOT_FOUND_DETAIL)


def unauthorized(detail: str, *, error: str | None = None) -> HTTPException:
    challenge = f'Bearer realm="{REALM}"'
    if error:
        challenge += f', error="{error}"'
    return HTTPException(
        status_code=401, detail=detail, headers={"WWW-Authenticate": challenge}
    )


class ProtectedRoute(APIRoute):
    """A route only a valid token may call, within its rate limit, for its user.

    The request's one database connection is taken here: the token is checked
    with it, and the route's ConnectionDep hands the same one to the route.
    It goes back to the pool once the route has returned its response, before
    a streamed body is sent.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def guard_then_handle(request: Request) -> Response:
            token = presented_token(request)
            async with request.app.state.pool.connection() as conn:
                principal = await authenticate(request, conn, token)
                enforce_rate_limit(request, principal)
                refuse_other_users(request, principal)
                request.state.principal = principal
                request.state.connection = conn
                try:
                    return await handle(request)
                finally:
                    request.state.connection = None

        return guard_then_handle


def bearer_token(authorization: str | None) -> str | None:
    """Return the token of an `Authorization: Bearer` header, or None."""
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.casefold() != "bearer":
        return None
    return credentials.strip() or None


def presented_token(request: Request) -> str:
    """Return the request's bearer token, or raise 401 without any database work."""
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        _count_failure(request, "missing")
        raise unauthorized("Not authenticated")
    if not looks_like_token(token):
        raise invalid_token(request)
    return token


async def authenticate(request: Request, conn: Connection, token: str) -> Principal:
    """Return who a live token acts for, or raise 401."""
    principal = await access.find_principal(conn=conn, token=token)
    if principal is None:
        raise invalid_token(request)
    return principal


def invalid_token(request: Request) -> HTTPException:
    # Unknown, malformed and revoked tokens get the same answer.
    _count_failure(request, "invalid")
    return unauthorized("Invalid or revoked token", error="invalid_token")


def _count_failure(request: Request, reason: str) -> None:
    service_metrics: Metrics = request.app.state.metrics
    service_metrics.authentication_failures.labels(reason=reason).inc()


def enforce_rate_limit(request: Request, principal: Principal) -> None:
    """Raise 429 with Retry-After if the token has used up its requests."""
    limiter: TokenBucketLimiter = request.app.state.rate_limiter
    wait_seconds = limiter.acquire(principal.token_id)
    if wait_seconds > 0:
        service_metrics: Metrics = request.app.state.metrics
        service_metrics.rate_limited.inc()
        raise HTTPException(
            status_code=429,
            detail="Too many requests",
            headers={"Retry-After": retry_after_header(wait_seconds)},
        )


def refuse_other_users(request: Request, principal: Principal) -> None:
    """Raise 404 if the path names a user other than the token's own."""
    addressed = request.path_params.get("user_id")
    if not isinstance(addressed, str) or not PLAIN_USER_ID.match(addressed):
        return
    user_id = int(addressed)
    if 1 <= user_id <= ID_MAX and user_id != principal.user_id:
        refuse_foreign_user(request, principal)


def refuse_foreign_user(request: Request, principal: Principal) -> None:
    """Count and log an attempt on another user's data, then raise 404."""
    service_metrics: Metrics = request.app.state.metrics
    service_metrics.foreign_user_refusals.inc()
    security_logger.warning(
        "token used for another user's data",
        extra={
            "request_id": request.scope.get("state", {}).get("request_id"),
            "token_id": principal.token_id,
        },
    )
    raise not_found()
