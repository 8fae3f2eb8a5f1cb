"""Downloading a user's whole reading history as JSON or CSV."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from reading_history import audit, crud
from reading_history.api.deps import (
    ActorDep,
    ConnectionDep,
    CurrentUserId,
    MetricsDep,
    PoolDep,
    refuse_repeated_query_parameters,
)
from reading_history.api.security import PROTECTED_RESPONSES, ProtectedRoute
from reading_history.audit import AuditAction
from reading_history.core.config import API_V1_PREFIX
from reading_history.core.db import Pool
from reading_history.core.metrics import Metrics
from reading_history.schemas import (
    ExportFormat,
    HistoryEntryPublic,
    PreferencesPublic,
    documented_without_null,
)

MEDIA_TYPES: dict[ExportFormat, str] = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
}

router = APIRouter(
    prefix=f"{API_V1_PREFIX}/users/{{user_id}}/history",
    tags=["history"],
    route_class=ProtectedRoute,
    responses=PROTECTED_RESPONSES,
    dependencies=[Depends(refuse_repeated_query_parameters)],
)

EXPORT_CONTENT = {
    "application/json": {
        "schema": {
            "type": "array",
            "items": {"$ref": "#/components/schemas/HistoryEntryPublic"},
        }
    },
    "text/csv": {
        "schema": {
            "type": "string",
            "description": "A header line naming the columns, then one line per "
            "read, quoted as RFC 4180 says.",
        }
    },
}


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": EXPORT_CONTENT,
            "description": "The history, newest first, as an attachment.",
            "model": list[HistoryEntryPublic],
        }
    },
)
async def export_history(
    user_id: CurrentUserId,
    conn: ConnectionDep,
    pool: PoolDep,
    service_metrics: MetricsDep,
    actor: ActorDep,
    export_format: Annotated[
        ExportFormat | None,
        Query(
            alias="format",
            description="json or csv; the user's default export format if left out.",
        ),
        documented_without_null(ExportFormat),
    ] = None,
) -> StreamingResponse:
    """Download the user's whole reading history as a JSON array or a CSV file."""
    if export_format is None:
        preferences = await crud.get_preferences(conn=conn, user_id=user_id)
        chosen = preferences or PreferencesPublic.defaults(user_id)
        export_format = chosen.default_export_format

    # Recorded when the export starts: a download cut short was still handed out.
    await audit.record(
        conn=conn,
        user_id=user_id,
        action=AuditAction.HISTORY_EXPORTED,
        actor=actor,
        details={"format": export_format},
    )
    filename = export_filename(user_id, export_format, datetime.now(UTC))
    return StreamingResponse(
        _stream(pool, service_metrics, user_id=user_id, export_format=export_format),
        media_type=MEDIA_TYPES[export_format],
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def export_filename(user_id: int, export_format: ExportFormat, now: datetime) -> str:
    return f"reading-history-{user_id}-{now:%Y%m%d}.{export_format}"


async def _stream(
    pool: Pool, service_metrics: Metrics, *, user_id: int, export_format: ExportFormat
) -> AsyncIterator[bytes]:
    # The body is sent after the route returns, so it takes a connection of its own.
    started = time.perf_counter()
    try:
        async with pool.connection() as conn:
            if export_format == "csv":
                chunks = crud.stream_history_csv(conn=conn, user_id=user_id)
            else:
                chunks = crud.stream_history_json(conn=conn, user_id=user_id)
            async for chunk in chunks:
                yield chunk
    finally:
        service_metrics.export_duration.labels(format=export_format).observe(
            time.perf_counter() - started
        )
