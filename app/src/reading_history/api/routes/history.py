"""A user's reading history: record, list and forget reads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import StringConstraints

from reading_history import audit, crud
from reading_history.api.deps import (
    ActorDep,
    ConnectionDep,
    CurrentUserId,
    MetricsDep,
    refuse_repeated_query_parameters,
)
from reading_history.api.security import PROTECTED_RESPONSES, ProtectedRoute, not_found
from reading_history.audit import AuditAction
from reading_history.core.config import API_V1_PREFIX
from reading_history.pagination import (
    Cursor,
    InvalidCursorError,
    decode_cursor,
    encode_cursor,
)
from reading_history.schemas import (
    ID_MAX,
    Category,
    DateTimeText,
    HistoryDeleted,
    HistoryEntryCreate,
    HistoryEntryPublic,
    HistoryPage,
    NotRecorded,
    documented_without_null,
)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# Cursors this service makes are well under this; longer ones are refused unread.
MAX_CURSOR_LENGTH = 200
PageCursor = Annotated[str, StringConstraints(max_length=MAX_CURSOR_LENGTH)]

router = APIRouter(
    prefix=f"{API_V1_PREFIX}/users/{{user_id}}/history",
    tags=["history"],
    route_class=ProtectedRoute,
    responses=PROTECTED_RESPONSES,
    dependencies=[Depends(refuse_repeated_query_parameters)],
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=HistoryEntryPublic,
    responses={202: {"model": NotRecorded, "description": "Not recorded, and why."}},
)
async def record_read(
    user_id: CurrentUserId,
    entry: HistoryEntryCreate,
    conn: ConnectionDep,
    service_metrics: MetricsDep,
) -> HistoryEntryPublic | JSONResponse:
    """Record that the user read an article, unless their privacy choices forbid it."""
    outcome = await crud.record_read(conn=conn, user_id=user_id, entry=entry)
    if isinstance(outcome, HistoryEntryPublic):
        service_metrics.records_created.inc()
        return outcome

    service_metrics.records_skipped.labels(reason=outcome.value).inc()
    skipped = NotRecorded(reason=outcome)
    return JSONResponse(skipped.model_dump(mode="json"), status_code=202)


@router.get("")
async def list_history(
    user_id: CurrentUserId,
    conn: ConnectionDep,
    since: Annotated[
        DateTimeText | None,
        Query(description="Only reads at or after this instant."),
        documented_without_null(DateTimeText),
    ] = None,
    until: Annotated[
        DateTimeText | None,
        Query(description="Only reads before this instant."),
        documented_without_null(DateTimeText),
    ] = None,
    category: Annotated[
        Category | None,
        Query(description="Only reads of this category, written the same way."),
        documented_without_null(Category),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[
        PageCursor | None,
        Query(description="The next_cursor of the previous page."),
        documented_without_null(PageCursor),
    ] = None,
) -> HistoryPage:
    """List the user's reads, newest first, one page at a time."""
    filters = crud.HistoryFilters(since=since, until=until, category=category)
    # One row more than asked tells whether another page follows.
    entries = await crud.list_history(
        conn=conn,
        user_id=user_id,
        filters=filters,
        limit=limit + 1,
        after=_parse_cursor(cursor),
    )
    return _page(entries, limit)


def _parse_cursor(text: str | None) -> Cursor | None:
    if text is None:
        return None
    try:
        return decode_cursor(text)
    except InvalidCursorError as error:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "cursor"),
                    "msg": f"Value error, {error}",
                    "input": text,
                }
            ]
        ) from None


def _page(entries: list[HistoryEntryPublic], limit: int) -> HistoryPage:
    if len(entries) <= limit:
        return HistoryPage(data=entries, next_cursor=None)

    shown = entries[:limit]
    last = shown[-1]
    next_cursor = encode_cursor(Cursor(read_at=last.read_at, entry_id=last.entry_id))
    return HistoryPage(data=shown, next_cursor=next_cursor)


@router.delete(
    # Only digits name an entry, so /history/export is not taken for one.
    "/{entry_id:int}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"description": "The user has no such entry."}},
)
async def delete_entry(
    user_id: CurrentUserId,
    entry_id: Annotated[int, Path(ge=1, le=ID_MAX)],
    conn: ConnectionDep,
    actor: ActorDep,
) -> Response:
    """Forget one read."""
    async with conn.transaction():
        if not await crud.delete_entry(conn=conn, user_id=user_id, entry_id=entry_id):
            raise not_found()
        await audit.record(
            conn=conn,
            user_id=user_id,
            action=AuditAction.HISTORY_ENTRY_DELETED,
            actor=actor,
            details={"entry_id": entry_id},
        )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("")
async def delete_history(
    user_id: CurrentUserId, conn: ConnectionDep, actor: ActorDep
) -> HistoryDeleted:
    """Forget every read of the user; their preferences stay."""
    async with conn.transaction():
        deleted = await crud.delete_history(conn=conn, user_id=user_id)
        await audit.record(
            conn=conn,
            user_id=user_id,
            action=AuditAction.HISTORY_DELETED,
            actor=actor,
            details={"deleted": deleted},
        )
    return HistoryDeleted(deleted=deleted)
