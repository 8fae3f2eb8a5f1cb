# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sessions of one database, and its stored read-only default.

Without C(pg_read_all_stats), pg_stat_activity hides the state, start time, client
address and backend type of other roles' sessions; their process id, role and
backend_xid stay visible. Session keeps what is hidden as None, so callers can tell
"not visible" from "not there".
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

TRUE_WORDS = {"on", "true", "yes", "1", "t", "y"}


@dataclass(frozen=True)
class Session:
    pid: int
    user: str | None
    application: str | None
    address: str | None
    backend_start: datetime.datetime | None
    state: str | None
    writing: bool

    @property
    def visible(self) -> bool:
        """Whether the login role may see this session's state and start time."""
        return self.state is not None and self.backend_start is not None

    def started_before(self, moment: datetime.datetime) -> bool:
        """True when it opened before moment, or when its start cannot be seen."""
        return self.backend_start is None or self.backend_start < moment

    def describe(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "user": self.user,
            "application": self.application,
            "client_addr": self.address,
            "backend_start": self.backend_start.isoformat() if self.backend_start else None,
            "state": self.state,
            "writing": self.writing,
        }


def setting_is_on(settings: list[str], name: str) -> bool:
    """Read a boolean out of a list of 'name=value' strings as pg_db_role_setting keeps."""
    for entry in settings:
        key, _, value = entry.partition("=")
        if key == name:
            return value.strip().lower() in TRUE_WORDS
    return False


def database_read_only(conn: Any, database: str) -> bool:
    """Whether default_transaction_read_only is stored as on for the database itself."""
    # setrole = 0 is the row for the database alone, not for a role inside it.
    row = conn.execute(
        "SELECT s.setconfig FROM pg_db_role_setting s"
        " JOIN pg_database d ON d.oid = s.setdatabase"
        " WHERE d.datname = %s AND s.setrole = 0",
        [database],
    ).fetchone()
    return setting_is_on(row[0] if row else [], "default_transaction_read_only")


def list_sessions(conn: Any) -> list[Session]:
    """Client sessions of the current database other than this one."""
    # backend_type is hidden for other roles' sessions too; those with a role are
    # client sessions, background workers have none.
    rows = conn.execute(
        "SELECT pid, usename, application_name, host(client_addr), backend_start, state,"
        " backend_xid IS NOT NULL"
        " FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND (backend_type = 'client backend' OR (backend_type IS NULL AND usename IS NOT NULL))"
        " ORDER BY pid"
    ).fetchall()
    return [Session(*row) for row in rows]


def server_now(conn: Any) -> datetime.datetime:
    return conn.execute("SELECT clock_timestamp()").fetchone()[0]


def terminate_backend(conn: Any, pid: int, wait_ms: int) -> bool:
    """Terminate a session and wait up to wait_ms for it to end; False if it was gone."""
    row = conn.execute(
        "SELECT pg_terminate_backend(%s::integer, %s::bigint)", [pid, wait_ms]
    ).fetchone()
    return bool(row[0])


def lacking_rights(conn: Any, roles: list[str]) -> list[str]:
    """Name the roles whose sessions the login role may not both see and terminate.

    Seeing their state needs pg_read_all_stats, terminating them pg_signal_backend;
    a superuser, or a member of the role itself, needs neither. Roles that do not
    exist have no sessions and are not named.
    """
    superuser, reads, signals = conn.execute(
        "SELECT rolsuper, pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER'),"
        " pg_has_role(current_user, 'pg_signal_backend', 'MEMBER')"
        " FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if superuser or (reads and signals) or not roles:
        return []
    rows = conn.execute(
        "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)"
        " AND NOT pg_has_role(current_user, oid, 'MEMBER') ORDER BY rolname",
        [list(roles)],
    ).fetchall()
    return [row[0] for row in rows]
