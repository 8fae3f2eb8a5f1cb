"""A user's privacy choices for their reading history."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import psycopg
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError

from reading_history import audit, crud
from reading_history.api.deps import ActorDep, ConnectionDep, CurrentUserId
from reading_history.api.security import PROTECTED_RESPONSES, ProtectedRoute
from reading_history.audit import Actor, AuditAction
from reading_history.core.config import API_V1_PREFIX
from reading_history.core.db import Connection
from reading_history.core.metrics import Metrics
from reading_history.crud import PreferencesChange
from reading_history.schemas import (
    PreferencesPublic,
    PreferencesReplace,
    PreferencesUpdate,
)

UPDATE_METHODS = frozenset({"PUT", "PATCH"})


class CountedUpdateRoute(ProtectedRoute):
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
    responses=PROTECTED_RESPONSES,
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
    user_id: CurrentUserId,
    preferences: PreferencesReplace,
    conn: ConnectionDep,
    actor: ActorDep,
) -> PreferencesPublic:
    """Set every privacy choice at once; those left out return to their defaults.

    Stored reads stay, even when tracking is turned off, unless the request
    sets `delete_history`. Reads past a shorter retention period are forgotten.
    """
    async with conn.transaction():
        change = await crud.replace_preferences(
            conn=conn, user_id=user_id, preferences=preferences
        )
        await _audit_change(
            conn=conn,
            action=AuditAction.PREFERENCES_REPLACED,
            actor=actor,
            change=change,
            fields=sorted(PreferencesReplace.model_fields.keys() - {"delete_history"}),
        )
    return change.preferences


@router.patch("")
async def update_preferences(
    user_id: CurrentUserId,
    changes: PreferencesUpdate,
    conn: ConnectionDep,
    actor: ActorDep,
) -> PreferencesPublic:
    """Change only the privacy choices given.

    Stored reads stay, even when tracking is turned off, unless the request
    sets `delete_history`. Reads past a shorter retention period are forgotten.
    """
    async with conn.transaction():
        change = await crud.update_preferences(
            conn=conn, user_id=user_id, changes=changes
        )
        await _audit_change(
            conn=conn,
            action=AuditAction.PREFERENCES_UPDATED,
            actor=actor,
            change=change,
            fields=sorted(changes.model_fields_set - {"delete_history"}),
        )
    return change.preferences


async def _audit_change(
    *,
    conn: Connection,
    action: AuditAction,
    actor: Actor,
    change: PreferencesChange,
    fields: list[str],
) -> None:
    # Names of what changed and counts of what went, not the chosen values:
    # excluded categories can say more about a person than they would share.
    await audit.record(
        conn=conn,
        user_id=change.preferences.user_id,
        action=action,
        actor=actor,
        details={
            "fields": fields,
            "history_deleted": change.history_deleted,
            "expired_deleted": change.expired_deleted,
        },
    )
