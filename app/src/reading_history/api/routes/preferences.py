"""A user's privacy choices for their reading history."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import psycopg
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from reading_history import crud
from reading_history.api.deps import ConnectionDep, CurrentUserId
from reading_history.core.config import API_V1_PREFIX
from reading_history.core.metrics import Metrics
from reading_history.schemas import (
    PreferencesPublic,
    PreferencesReplace,
    PreferencesUpdate,
)

UPDATE_METHODS = frozenset({"PUT", "PATCH"})


class CountedUpdateRoute(APIRoute):
    """Count failed preference updates, those refused as invalid input included.

    Input is validated before the route's code runs, so only a wrapper around
    the whole handler sees both kinds of failure.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_and_count(request: Request) -> Response:
            try:
                return await handle(request)
            except RequestValidationError:
                _count_failure(request, "validation")
                raise
            except psycopg.Error:
                _count_failure(request, "database")
                raise

        return handle_and_count


def _count_failure(request: Request, reason: str) -> None:
    if request.method in UPDATE_METHODS:
        service_metrics: Metrics = request.app.state.metrics
        service_metrics.preference_update_failures.labels(reason=reason).inc()


router = APIRouter(
    prefix=f"{API_V1_PREFIX}/users/{{user_id}}/preferences",
    tags=["preferences"],
    route_class=CountedUpdateRoute,
)


@router.get("")
async def read_preferences(
    user_id: CurrentUserId, conn: ConnectionDep
) -> PreferencesPublic:
    """Show the user's privacy choices, or the defaults if they never chose any."""
    stored = await crud.get_preferences(conn=conn, user_id=user_id)
    return stored or PreferencesPublic.defaults(user_id)


@router.put("")
async def replace_preferences(
    user_id: CurrentUserId, preferences: PreferencesReplace, conn: ConnectionDep
) -> PreferencesPublic:
    """Set every privacy choice at once; those left out return to their defaults."""
    return await crud.replace_preferences(
        conn=conn, user_id=user_id, preferences=preferences
    )


@router.patch("")
async def update_preferences(
    user_id: CurrentUserId, changes: PreferencesUpdate, conn: ConnectionDep
) -> PreferencesPublic:
    """Change only the privacy choices given."""
    return await crud.update_preferences(conn=conn, user_id=user_id, changes=changes)
