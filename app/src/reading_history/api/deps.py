"""What routes depend on: the user addressed, a database connection, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Request

from reading_history.core.config import Settings
from reading_history.core.db import Connection, Pool
from reading_history.core.metrics import Metrics
from reading_history.schemas import BIGINT_MAX


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_pool(request: Request) -> Pool:
    pool: Pool = request.app.state.pool
    return pool


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
PoolDep = Annotated[Pool, Depends(get_pool)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def get_connection(pool: PoolDep) -> AsyncIterator[Connection]:
    async with pool.connection() as conn:
        yield conn


# "function" scope hands the connection back as soon as the route returns,
# before a streamed body is sent, instead of after the whole response.
ConnectionDep = Annotated[Connection, Depends(get_connection, scope="function")]


def get_current_user_id(
    user_id: Annotated[
        int, Path(ge=1, le=BIGINT_MAX, description="The user whose history this is.")
    ],
) -> int:
    """Return the user a request may act for.

    Every route reaches its user through this one dependency, so that access
    control (a token allowed only its own user, others answered 404) is added
    here and nowhere else.
    """
    return user_id


CurrentUserId = Annotated[int, Depends(get_current_user_id)]
