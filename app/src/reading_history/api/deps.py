"""What routes depend on: who is asking, the user addressed, a connection, metrics.

Every dependency is a coroutine, even those that never wait: FastAPI runs
plain functions in a thread pool, which costs more than they do.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials

from reading_history.access import Principal
from reading_history.api.security import bearer_scheme, refuse_foreign_user
from reading_history.audit import Actor
from reading_history.core.config import Settings
from reading_history.core.db import Connection, Pool
from reading_history.core.metrics import Metrics
from reading_history.schemas import ID_MAX


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_pool(request: Request) -> Pool:
    pool: Pool = request.app.state.pool
    return pool


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
PoolDep = Annotated[Pool, Depends(get_pool)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def get_connection(request: Request) -> Connection:
    """Return the connection the request's ProtectedRoute took for it."""
    conn = getattr(request.state, "connection", None)
    if conn is None:
        raise RuntimeError(f"{request.url.path} is not served by a ProtectedRoute")
    connection: Connection = conn
    return connection


ConnectionDep = Annotated[Connection, Depends(get_connection)]


async def get_principal(
    request: Request,
    # Declares the bearer scheme in OpenAPI; the token was checked already.
    _credentials: Annotated[
        HTTPAuthorizationCredentials | None, Security(bearer_scheme)
    ],
) -> Principal:
    """Return who the request acts for, as its protected route found out."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        # Only ProtectedRoute sets it: a route without it is refused, not served.
        raise RuntimeError(f"{request.url.path} is not served by a ProtectedRoute")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_current_user_id(
    request: Request,
    user_id: Annotated[
        int, Path(ge=1, le=ID_MAX, description="The user whose history this is.")
    ],
    principal: PrincipalDep,
) -> int:
    """Return the user a request may act for: its token's own, or answer 404.

    Every route reaches its user through this one dependency. ProtectedRoute
    already refused other users' plain ids before the body was read; this
    check also covers ids written in other ways.
    """
    if user_id != principal.user_id:
        refuse_foreign_user(request, principal)
    return user_id


CurrentUserId = Annotated[int, Depends(get_current_user_id)]


async def refuse_repeated_query_parameters(request: Request) -> None:
    """Refuse a query parameter given more than once: each takes one value.

    Otherwise the last one would win silently, whatever came before it.
    """
    names = [name for name, _ in request.query_params.multi_items()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", name),
                    "msg": "Value error, must be given once",
                    "input": request.query_params.getlist(name),
                }
                for name in repeated
            ]
        )


async def get_actor(request: Request, principal: PrincipalDep) -> Actor:
    """Return who acts, as the audit trail records it."""
    request_id = request.scope.get("state", {}).get("request_id")
    return principal.actor(request_id)


ActorDep = Annotated[Actor, Depends(get_actor)]
