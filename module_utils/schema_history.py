# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The schema_migrations table that the migration module and the app both read.

Its shape is shared with the app, so it is defined once here and nowhere else on the
automation side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HISTORY_TABLE_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
  version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
  status text NOT NULL CHECK (status IN ('applied','failed')), applied_by text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now(), duration_ms integer NOT NULL,
  app_release text, error text)
"""


@dataclass(frozen=True)
class HistoryRow:
    version: int
    name: str
    checksum: str
    status: str
    error: str | None


def history_table_exists(conn: Any) -> bool:
    # Unqualified, like the DDL, so both resolve through the same search_path.
    row = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    return bool(row[0])


def applied_version(conn: Any) -> int | None:
    """Return the highest applied version, 0 for an empty history, None without one."""
    if not history_table_exists(conn):
        return None
    row = conn.execute(
        "SELECT coalesce(max(version), 0) FROM schema_migrations WHERE status = 'applied'"
    ).fetchone()
    return int(row[0])


def read_history(conn: Any) -> dict[int, HistoryRow]:
    """Return every history row by version; empty when the table does not exist."""
    if not history_table_exists(conn):
        return {}
    rows = conn.execute(
        "SELECT version, name, checksum, status, error FROM schema_migrations ORDER BY version"
    ).fetchall()
    return {row[0]: HistoryRow(*row) for row in rows}
