# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The schema_migrations table that the migration module and the app both read.

Its shape is shared with the app, so it is defined once here and nowhere else on the
automation side. The app reads only ``version`` and ``status``:

    SELECT coalesce(max(version), 0) FROM schema_migrations WHERE status = 'applied'

so every column added after the first release is nullable and says more about a row
without changing what those two mean. Beside it, ``schema_migrations_log`` keeps one
row per thing done to the history (applied, failed, reverted, resolved, checksum
accepted), which is where a replaced checksum or an undone version is remembered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

HISTORY_TABLE = "schema_migrations"
LOG_TABLE = "schema_migrations_log"
# The automation's own tables, left out when the app's schema is compared.
HISTORY_TABLES = (HISTORY_TABLE, LOG_TABLE)

HISTORY_TABLE_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
  version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
  status text NOT NULL CHECK (status IN ('applied','failed')), applied_by text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now(), duration_ms integer NOT NULL,
  app_release text, error text)
"""

# Columns added after the first shape of the table, each nullable:
#   resolution         how a failed row was resolved: retry or mark_applied
#   resolved_by/at     who resolved it, and when
#   previous_checksum  the checksum replaced by the last accepted one
#   checksum_accepted_by/at  who accepted the current checksum, and when
#   failed_statement   for a no-transaction file, the statement (from 1) that failed
HISTORY_COLUMNS = {
    "resolution": "text",
    "resolved_by": "text",
    "resolved_at": "timestamptz",
    "previous_checksum": "text",
    "checksum_accepted_by": "text",
    "checksum_accepted_at": "timestamptz",
    "failed_statement": "integer",
}

# Written out rather than assembled, so that it is plain SQL with no identifier built
# from a string; HISTORY_COLUMNS and this statement are checked against each other.
HISTORY_UPGRADE_DDL = """
ALTER TABLE schema_migrations
  ADD COLUMN IF NOT EXISTS resolution text,
  ADD COLUMN IF NOT EXISTS resolved_by text,
  ADD COLUMN IF NOT EXISTS resolved_at timestamptz,
  ADD COLUMN IF NOT EXISTS previous_checksum text,
  ADD COLUMN IF NOT EXISTS checksum_accepted_by text,
  ADD COLUMN IF NOT EXISTS checksum_accepted_at timestamptz,
  ADD COLUMN IF NOT EXISTS failed_statement integer
"""

# action is one of LOG_ACTIONS; checksum is that of the file that ran (the down file
# for a revert) or the new one accepted, previous_checksum the one it replaced.
LOG_TABLE_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations_log (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  version integer NOT NULL, name text NOT NULL, action text NOT NULL,
  checksum text, previous_checksum text, performed_by text NOT NULL,
  performed_at timestamptz NOT NULL DEFAULT now(), duration_ms integer,
  app_release text, detail text)
"""

LOG_ACTIONS = (
    "applied",
    "failed",
    "reverted",
    "revert_failed",
    "resolved_retry",
    "resolved_mark_applied",
    "checksum_accepted",
)


@dataclass(frozen=True)
class HistoryRow:
    version: int
    name: str
    checksum: str
    status: str
    error: str | None
    applied_by: str | None = None
    applied_at: str | None = None
    failed_statement: int | None = None


def history_table_exists(conn: Any) -> bool:
    # Unqualified, like the DDL, so both resolve through the same search_path.
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    return bool(row[0])


def missing_history_parts(conn: Any) -> list[str]:
    """Name what the history lacks: the table, its newer columns, the log table."""
    if not history_table_exists(conn):
        return [HISTORY_TABLE, *HISTORY_COLUMNS, LOG_TABLE]
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass('schema_migrations')"
        " AND attnum > 0 AND NOT attisdropped"
    ).fetchall()
    present = {row[0] for row in rows}
    missing = [name for name in HISTORY_COLUMNS if name not in present]
    log = conn.execute("SELECT to_regclass('schema_migrations_log') IS NOT NULL").fetchone()
    if not log[0]:
        missing.append(LOG_TABLE)
    return missing


def ensure_history(conn: Any) -> list[str]:
    """Create or upgrade the history in one transaction; return what was missing.

    Nothing is run when nothing is missing, so an up-to-date table is not locked at
    all: ALTER TABLE would take an exclusive lock even when every column exists.
    """
    missing = missing_history_parts(conn)
    if missing:
        with conn.transaction():
            conn.execute(HISTORY_TABLE_DDL)
            conn.execute(HISTORY_UPGRADE_DDL)
            conn.execute(LOG_TABLE_DDL)
    return missing


def applied_version(conn: Any) -> int | None:
    """Return the highest applied version, 0 for an empty history, None without one."""
    if not history_table_exists(conn):
        return None
    row = conn.execute(
        "SELECT coalesce(max(version), 0) FROM schema_migrations WHERE status = 'applied'"
    ).fetchone()
    return int(row[0])


def read_history(conn: Any) -> dict[int, HistoryRow]:
    """Return every history row by version; empty when the table does not exist.

    Rows are read as JSON objects so the same query reads the first shape of the
    table (as check mode may find it) and the upgraded one.
    """
    if not history_table_exists(conn):
        return {}
    rows = conn.execute(
        "SELECT row_to_json(m)::text FROM schema_migrations m ORDER BY version"
    ).fetchall()
    history = {}
    for (text,) in rows:
        record = json.loads(text)
        history[record["version"]] = HistoryRow(
            version=record["version"],
            name=record["name"],
            checksum=record["checksum"],
            status=record["status"],
            error=record.get("error"),
            applied_by=record.get("applied_by"),
            applied_at=record.get("applied_at"),
            failed_statement=record.get("failed_statement"),
        )
    return history


def log_event(
    conn: Any,
    version: int,
    name: str,
    action: str,
    performed_by: str,
    checksum: str | None = None,
    previous_checksum: str | None = None,
    duration_ms: int | None = None,
    app_release: str | None = None,
    detail: str | None = None,
) -> None:
    """Add one row to schema_migrations_log, in the caller's transaction if any."""
    if action not in LOG_ACTIONS:
        raise ValueError(f"unknown history action {action!r}")
    conn.execute(
        "INSERT INTO schema_migrations_log (version, name, action, checksum,"
        " previous_checksum, performed_by, duration_ms, app_release, detail)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [
            version,
            name,
            action,
            checksum,
            previous_checksum,
            performed_by,
            duration_ms,
            app_release,
            detail,
        ],
    )
