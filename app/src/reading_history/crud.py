"""Reading and writing the service's tables.

Values are always bound as parameters; names are composed with psycopg.sql.
Connections come from the pool in autocommit mode, so every change that spans
statements opens its own transaction here and commits before returning.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncClientCursor, sql

from reading_history.copyout import copy_out_blocks
from reading_history.core.db import Connection
from reading_history.pagination import Cursor
from reading_history.schemas import (
    EXPORT_COLUMNS,
    ExportFormat,
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
# Exports are sent in blocks of about this size: one network write per row
# would cost more than the row itself.
EXPORT_BLOCK_BYTES = 64 * 1024

# Reads before this instant are past the user's retention period; none without one.
RETENTION_CUTOFF = sql.SQL(
    "coalesce(("
    "SELECT now() - make_interval(days => retention_days) "
    "FROM user_reading_preferences WHERE user_id = %(user_id)s"
    "), '-infinity'::timestamptz)"
)


# One fixed ISO 8601 shape in UTC, whatever the session's DateStyle.
READ_AT_AS_TEXT = sql.SQL(
    """to_char(read_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
)
# The shape the API answers with: whole seconds without a fraction.
READ_AT_AS_JSON_TEXT = sql.SQL("replace({}, '.000000Z', 'Z')").format(READ_AT_AS_TEXT)


def _entry_column(name: str, read_at: sql.Composable | None = None) -> sql.Composable:
    if name == "entry_id":
        return sql.SQL("{} AS {}").format(sql.Identifier("id"), sql.Identifier(name))
    if name == "read_at" and read_at is not None:
        return sql.SQL("{} AS {}").format(read_at, sql.Identifier(name))
    return sql.Identifier(name)


def _json_value(name: str) -> sql.Composable:
    """Return SQL writing one column of an entry as JSON text."""
    if name == "entry_id":
        return sql.SQL("id::text")
    if name == "read_at":
        return sql.SQL("""'"' || {} || '"'""").format(READ_AT_AS_JSON_TEXT)
    if name == "category":
        # to_json escapes quotes, backslashes and control characters.
        return sql.SQL("coalesce(to_json(category)::text, 'null')")
    return sql.SQL("coalesce({}::text, 'null')").format(sql.Identifier(name))


def _json_array_item() -> sql.Composable:
    """Return SQL writing an entry as a comma, then a JSON object.

    Written out rather than with row_to_json, which takes PostgreSQL longer
    than the whole rest of an export; keys keep the column order. Each comma
    comes first, so that only the very first one needs taking away.
    """
    parts: list[sql.Composable] = []
    for position, name in enumerate(EXPORT_COLUMNS):
        opening = ",{" if position == 0 else ","
        parts += [sql.Literal(f"{opening}{json.dumps(name)}:"), _json_value(name)]
    parts.append(sql.Literal("}"))
    return sql.SQL("concat({})").format(sql.SQL(", ").join(parts))


ENTRY_COLUMNS = sql.SQL(", ").join(_entry_column(name) for name in EXPORT_COLUMNS)
CSV_COLUMNS = sql.SQL(", ").join(
    _entry_column(name, READ_AT_AS_TEXT) for name in EXPORT_COLUMNS
)
JSON_ARRAY_ITEM = _json_array_item()
PREFERENCES_RETURNING = sql.SQL(", ").join(
    sql.Identifier(name) for name in ("user_id", *PREFERENCE_COLUMNS, "updated_at")
)


@dataclass(frozen=True)
class PreferencesChange:
    """Preferences as stored after a change, and the reads the change forgot."""

    preferences: PreferencesPublic
    # Reads past a retention period the change shortened.
    expired_deleted: int
    # Reads forgotten because the request asked for the whole history to go.
    history_deleted: int


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
) -> PreferencesChange:
    """Store every preference at once, then forget reads past the new retention."""
    return await _upsert_preferences(
        conn=conn,
        user_id=user_id,
        values=preferences.model_dump(include=set(PREFERENCE_COLUMNS)),
        delete_history=preferences.delete_history,
    )


async def update_preferences(
    *, conn: Connection, user_id: int, changes: PreferencesUpdate
) -> PreferencesChange:
    """Change only the given preferences, then forget reads past the retention."""
    return await _upsert_preferences(
        conn=conn,
        user_id=user_id,
        values=changes.model_dump(include=set(PREFERENCE_COLUMNS), exclude_unset=True),
        delete_history=changes.delete_history,
    )


async def _upsert_preferences(
    *,
    conn: Connection,
    user_id: int,
    values: Mapping[str, Any],
    delete_history: bool,
) -> PreferencesChange:
    columns = [name for name in PREFERENCE_COLUMNS if name in values]
    query = _upsert_preferences_query(columns)

    async with conn.transaction():
        cursor = await conn.execute(query, {"user_id": user_id, **values})
        row = await cursor.fetchone()
        # Stored reads go only when asked: turning tracking off keeps them.
        history_deleted = (
            await _delete_all_reads(conn=conn, user_id=user_id) if delete_history else 0
        )
        expired_deleted = await _forget_expired(conn=conn, user_id=user_id)

    return PreferencesChange(
        preferences=PreferencesPublic.model_validate(row),
        expired_deleted=expired_deleted,
        history_deleted=history_deleted,
    )


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

        return await _insert_read(
            conn=conn, user_id=user_id, entry=entry, read_at=read_at
        )


async def _lock_privacy_choices(*, conn: Connection, user_id: int) -> dict[str, Any]:
    # FOR SHARE keeps the choices fixed until the read is stored, so a
    # concurrent change of mind (tracking off, history deleted) waits for it.
    choices = await _select_choices_for_share(conn=conn, user_id=user_id)
    if choices is not None:
        return choices

    # Every read refers to a preferences row, so a first read creates one
    # with the defaults.
    await conn.execute(
        "INSERT INTO user_reading_preferences (user_id) VALUES (%(user_id)s) "
        "ON CONFLICT (user_id) DO NOTHING",
        {"user_id": user_id},
    )
    choices = await _select_choices_for_share(conn=conn, user_id=user_id)
    assert choices is not None, "the row was inserted just above"
    return choices


async def _select_choices_for_share(
    *, conn: Connection, user_id: int
) -> dict[str, Any] | None:
    cursor = await conn.execute(
        "SELECT tracking_enabled, retention_days, excluded_categories, now() AS now "
        "FROM user_reading_preferences WHERE user_id = %(user_id)s FOR SHARE",
        {"user_id": user_id},
    )
    return await cursor.fetchone()


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
    # Forgets the user's reads past their retention in the same statement.
    query = sql.SQL(
        "WITH forgotten AS ("
        "DELETE FROM reading_history "
        "WHERE user_id = %(user_id)s AND read_at < {cutoff}) "
        "INSERT INTO reading_history "
        "(user_id, article_id, feed_id, category, read_at, duration_seconds, "
        "scroll_depth) "
        "VALUES (%(user_id)s, %(article_id)s, %(feed_id)s, %(category)s, "
        "%(read_at)s, %(duration_seconds)s, %(scroll_depth)s) "
        "RETURNING {columns}"
    ).format(cutoff=RETENTION_CUTOFF, columns=ENTRY_COLUMNS)
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
    return await _delete_all_reads(conn=conn, user_id=user_id)


async def _delete_all_reads(*, conn: Connection, user_id: int) -> int:
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


def export_copy_statement(export_format: ExportFormat) -> sql.Composed:
    """Return the COPY that writes a user's export; it takes %(user_id)s."""
    if export_format == "csv":
        return sql.SQL("COPY ({select}) TO STDOUT WITH (FORMAT csv, HEADER)").format(
            select=_export_query(CSV_COLUMNS)
        )
    # One array item a line, written as PostgreSQL wrote it: CSV escapes only
    # fields holding its delimiter, quote or a newline, and with control
    # characters for those, no JSON text ever does (JSON escapes them all).
    return sql.SQL(
        "COPY ({select}) TO STDOUT "
        "WITH (FORMAT csv, DELIMITER E'\\x01', QUOTE E'\\x02')"
    ).format(select=_export_query(JSON_ARRAY_ITEM))


async def stream_history_csv(*, conn: Connection, user_id: int) -> AsyncIterator[bytes]:
    """Yield the user's history as CSV with a header, straight from COPY."""
    async for block in _export_blocks(conn=conn, export_format="csv", user_id=user_id):
        yield block


async def stream_history_json(
    *, conn: Connection, user_id: int
) -> AsyncIterator[bytes]:
    """Yield the user's history as one JSON array, its entries written by COPY.

    Each entry is a line of its own: the newline ending each row of COPY is
    whitespace to JSON.
    """
    yield b"["
    first = True
    async for block in _export_blocks(conn=conn, export_format="json", user_id=user_id):
        # Every entry comes after a comma, the first one too: drop that one.
        yield block[1:] if first else block
        first = False
    yield b"]"


async def _export_blocks(
    *, conn: Connection, export_format: ExportFormat, user_id: int
) -> AsyncIterator[bytes]:
    # COPY takes no bound parameters: psycopg writes the user id in as a literal.
    statement = AsyncClientCursor(conn).mogrify(
        export_copy_statement(export_format), {"user_id": user_id}
    )
    blocks = copy_out_blocks(
        conn=conn, statement=statement.encode(), block_bytes=EXPORT_BLOCK_BYTES
    )
    async for block in blocks:
        yield block


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
