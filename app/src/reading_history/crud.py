"""Reading and writing the service's tables.

Values are always bound as parameters; names are composed with psycopg.sql.
Connections come from the pool in autocommit mode, so every change that spans
statements opens its own transaction here and commits before returning.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql

from reading_history.core.db import Connection
from reading_history.pagination import Cursor
from reading_history.schemas import (
    EXPORT_COLUMNS,
    HistoryEntryCreate,
    HistoryEntryPublic,
    NotRecordedReason,
    PreferencesPublic,
    PreferencesReplace,
    PreferencesUpdate,
)

PREFERENCE_COLUMNS = (
    "tracking_enabled",
    "retention_days",
    "excluded_categories",
    "default_export_format",
)
JSON_EXPORT_BATCH_SIZE = 500
EXPORT_CURSOR_NAME = "reading_history_export"

# Reads before this instant are past the user's retention period; none without one.
RETENTION_CUTOFF = sql.SQL(
    "coalesce(("
    "SELECT now() - make_interval(days => retention_days) "
    "FROM user_reading_preferences WHERE user_id = %(user_id)s"
    "), '-infinity'::timestamptz)"
)


def _entry_column(name: str, *, read_at_as_text: bool = False) -> sql.Composable:
    if name == "entry_id":
        return sql.SQL("{} AS {}").format(sql.Identifier("id"), sql.Identifier(name))
    if name == "read_at" and read_at_as_text:
        # One fixed ISO 8601 shape in UTC, whatever the session's DateStyle.
        return sql.SQL(
            """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS {}"""
        ).format(sql.Identifier(name), sql.Identifier(name))
    return sql.Identifier(name)


ENTRY_COLUMNS = sql.SQL(", ").join(_entry_column(name) for name in EXPORT_COLUMNS)
CSV_COLUMNS = sql.SQL(", ").join(
    _entry_column(name, read_at_as_text=True) for name in EXPORT_COLUMNS
)
PREFERENCES_RETURNING = sql.SQL(", ").join(
    sql.Identifier(name) for name in ("user_id", *PREFERENCE_COLUMNS, "updated_at")
)


@dataclass(frozen=True)
class HistoryFilters:
    """Which reads a listing keeps; None keeps all."""

    since: datetime | None = None
    until: datetime | None = None
    category: str | None = None


# Preferences


async def get_preferences(
    *, conn: Connection, user_id: int
) -> PreferencesPublic | None:
    """Return the user's stored preferences, or None if they never chose any."""
    query = sql.SQL(
        "SELECT {columns} FROM user_reading_preferences WHERE user_id = %(user_id)s"
    ).format(columns=PREFERENCES_RETURNING)
    cursor = await conn.execute(query, {"user_id": user_id})
    row = await cursor.fetchone()
    return PreferencesPublic.model_validate(row) if row else None


async def replace_preferences(
    *, conn: Connection, user_id: int, preferences: PreferencesReplace
) -> PreferencesPublic:
    """Store every preference at once, then forget reads past the new retention."""
    return await _upsert_preferences(
        conn=conn, user_id=user_id, values=preferences.model_dump()
    )


async def update_preferences(
    *, conn: Connection, user_id: int, changes: PreferencesUpdate
) -> PreferencesPublic:
    """Change only the given preferences, then forget reads past the retention."""
    return await _upsert_preferences(
        conn=conn, user_id=user_id, values=changes.model_dump(exclude_unset=True)
    )


async def _upsert_preferences(
    *, conn: Connection, user_id: int, values: Mapping[str, Any]
) -> PreferencesPublic:
    columns = [name for name in PREFERENCE_COLUMNS if name in values]
    query = _upsert_preferences_query(columns)

    async with conn.transaction():
        cursor = await conn.execute(query, {"user_id": user_id, **values})
        row = await cursor.fetchone()
        await _forget_expired(conn=conn, user_id=user_id)

    return PreferencesPublic.model_validate(row)


def _upsert_preferences_query(columns: list[str]) -> sql.Composed:
    inserted = ["user_id", *columns]
    assignments: list[sql.Composable] = [
        sql.SQL("{column} = EXCLUDED.{column}").format(column=sql.Identifier(name))
        for name in columns
    ]
    assignments.append(sql.SQL("updated_at = now()"))
    return sql.SQL(
        "INSERT INTO user_reading_preferences ({columns}) VALUES ({values}) "
        "ON CONFLICT (user_id) DO UPDATE SET {assignments} "
        "RETURNING {returning}"
    ).format(
        columns=sql.SQL(", ").join(map(sql.Identifier, inserted)),
        values=sql.SQL(", ").join(map(sql.Placeholder, inserted)),
        assignments=sql.SQL(", ").join(assignments),
        returning=PREFERENCES_RETURNING,
    )


async def _forget_expired(*, conn: Connection, user_id: int) -> int:
    query = sql.SQL(
        "DELETE FROM reading_history WHERE user_id = %(user_id)s AND read_at < {cutoff}"
    ).format(cutoff=RETENTION_CUTOFF)
    cursor = await conn.execute(query, {"user_id": user_id})
    return cursor.rowcount


# Recording


async def record_read(
    *, conn: Connection, user_id: int, entry: HistoryEntryCreate
) -> HistoryEntryPublic | NotRecordedReason:
    """Store a read, unless the user's privacy choices say not to."""
    async with conn.transaction():
        choices = await _lock_privacy_choices(conn=conn, user_id=user_id)
        read_at = entry.read_at or choices["now"]
        reason = reason_not_to_record(
            choices=choices, category=entry.category, read_at=read_at
        )
        if reason is not None:
            return reason

        stored = await _insert_read(
            conn=conn, user_id=user_id, entry=entry, read_at=read_at
        )
        await _forget_expired(conn=conn, user_id=user_id)
    return stored


async def _lock_privacy_choices(*, conn: Connection, user_id: int) -> dict[str, Any]:
    # Every read refers to a preferences row, so a first read creates one with
    # the defaults. FOR SHARE keeps the choices fixed until the read is stored.
    await conn.execute(
        "INSERT INTO user_reading_preferences (user_id) VALUES (%(user_id)s) "
        "ON CONFLICT (user_id) DO NOTHING",
        {"user_id": user_id},
    )
    cursor = await conn.execute(
        "SELECT tracking_enabled, retention_days, excluded_categories, now() AS now "
        "FROM user_reading_preferences WHERE user_id = %(user_id)s FOR SHARE",
        {"user_id": user_id},
    )
    choices = await cursor.fetchone()
    assert choices is not None, "the row was inserted just above"
    return choices


def reason_not_to_record(
    *, choices: Mapping[str, Any], category: str | None, read_at: datetime
) -> NotRecordedReason | None:
    """Return why the user's choices forbid recording a read, or None if none does."""
    if not choices["tracking_enabled"]:
        return NotRecordedReason.TRACKING_DISABLED

    excluded = {name.casefold() for name in choices["excluded_categories"]}
    if category is not None and category.casefold() in excluded:
        return NotRecordedReason.CATEGORY_EXCLUDED

    retention_days = choices["retention_days"]
    if retention_days is not None:
        if read_at < choices["now"] - timedelta(days=retention_days):
            return NotRecordedReason.OLDER_THAN_RETENTION
    return None


async def _insert_read(
    *,
    conn: Connection,
    user_id: int,
    entry: HistoryEntryCreate,
    read_at: datetime,
) -> HistoryEntryPublic:
    query = sql.SQL(
        "INSERT INTO reading_history "
        "(user_id, article_id, feed_id, category, read_at, duration_seconds, "
        "scroll_depth) "
        "VALUES (%(user_id)s, %(article_id)s, %(feed_id)s, %(category)s, "
        "%(read_at)s, %(duration_seconds)s, %(scroll_depth)s) "
        "RETURNING {columns}"
    ).format(columns=ENTRY_COLUMNS)
    values = entry.model_dump() | {"user_id": user_id, "read_at": read_at}
    cursor = await conn.execute(query, values)
    return HistoryEntryPublic.model_validate(await cursor.fetchone())


# Listing and deleting


async def list_history(
    *,
    conn: Connection,
    user_id: int,
    filters: HistoryFilters,
    limit: int,
    after: Cursor | None = None,
) -> list[HistoryEntryPublic]:
    """Return up to `limit` reads, newest first, starting after the cursor."""
    conditions = [
        sql.SQL("user_id = %(user_id)s"),
        sql.SQL("read_at >= {cutoff}").format(cutoff=RETENTION_CUTOFF),
    ]
    if filters.since is not None:
        conditions.append(sql.SQL("read_at >= %(since)s"))
    if filters.until is not None:
        conditions.append(sql.SQL("read_at < %(until)s"))
    if filters.category is not None:
        conditions.append(sql.SQL("category = %(category)s"))
    if after is not None:
        conditions.append(sql.SQL("(read_at, id) < (%(after_read_at)s, %(after_id)s)"))

    query = sql.SQL(
        "SELECT {columns} FROM reading_history WHERE {conditions} "
        "ORDER BY read_at DESC, id DESC LIMIT %(limit)s"
    ).format(columns=ENTRY_COLUMNS, conditions=sql.SQL(" AND ").join(conditions))
    params = {
        "user_id": user_id,
        "since": filters.since,
        "until": filters.until,
        "category": filters.category,
        "after_read_at": after.read_at if after else None,
        "after_id": after.entry_id if after else None,
        "limit": limit,
    }
    cursor = await conn.execute(query, params)
    return [HistoryEntryPublic.model_validate(row) for row in await cursor.fetchall()]


async def delete_entry(*, conn: Connection, user_id: int, entry_id: int) -> bool:
    """Forget one read of the user; return whether there was one."""
    cursor = await conn.execute(
        "DELETE FROM reading_history WHERE user_id = %(user_id)s AND id = %(entry_id)s",
        {"user_id": user_id, "entry_id": entry_id},
    )
    return cursor.rowcount > 0


async def delete_history(*, conn: Connection, user_id: int) -> int:
    """Forget every read of the user; return how many there were."""
    cursor = await conn.execute(
        "DELETE FROM reading_history WHERE user_id = %(user_id)s",
        {"user_id": user_id},
    )
    return cursor.rowcount


# Exporting


def _export_query(columns: sql.Composable) -> sql.Composed:
    return sql.SQL(
        "SELECT {columns} FROM reading_history "
        "WHERE user_id = %(user_id)s AND read_at >= {cutoff} "
        "ORDER BY read_at DESC, id DESC"
    ).format(columns=columns, cutoff=RETENTION_CUTOFF)


async def stream_history_csv(*, conn: Connection, user_id: int) -> AsyncIterator[bytes]:
    """Yield the user's history as CSV with a header, straight from COPY."""
    query = sql.SQL("COPY ({select}) TO STDOUT WITH (FORMAT csv, HEADER)").format(
        select=_export_query(CSV_COLUMNS)
    )
    async with conn.cursor() as cursor:
        async with cursor.copy(query, {"user_id": user_id}) as copy:
            async for chunk in copy:
                yield bytes(chunk)


async def stream_history_json(
    *, conn: Connection, user_id: int, batch_size: int = JSON_EXPORT_BATCH_SIZE
) -> AsyncIterator[bytes]:
    """Yield the user's history as one JSON array, read in batches server-side."""
    yield b"["
    separator = b""
    # A server-side cursor lives in a transaction; it keeps memory flat
    # however long the history is.
    async with conn.transaction():
        async with conn.cursor(name=EXPORT_CURSOR_NAME) as cursor:
            await cursor.execute(_export_query(ENTRY_COLUMNS), {"user_id": user_id})
            while rows := await cursor.fetchmany(batch_size):
                entries = (HistoryEntryPublic.model_validate(row) for row in rows)
                yield separator + b",".join(
                    entry.model_dump_json().encode() for entry in entries
                )
                separator = b","
    yield b"]"


# Health


async def fetch_schema_version(*, conn: Connection, timeout_ms: int) -> int:
    """Return the highest applied migration, 0 when none, within a time limit."""
    async with conn.transaction():
        await conn.execute(
            "SELECT set_config('statement_timeout', %s, true)", [str(timeout_ms)]
        )
        cursor = await conn.execute(
            "SELECT to_regclass('schema_migrations') IS NOT NULL AS present"
        )
        found = await cursor.fetchone()
        if not found or not found["present"]:
            return 0

        cursor = await conn.execute(
            "SELECT coalesce(max(version), 0) AS version "
            "FROM schema_migrations WHERE status = 'applied'"
        )
        row = await cursor.fetchone()
    return int(row["version"]) if row else 0
