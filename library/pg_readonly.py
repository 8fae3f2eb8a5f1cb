#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_readonly
short_description: Open or close a read-only window on a PostgreSQL database
description:
  - With O(state=on), stores C(default_transaction_read_only = on) for the database
    (C(ALTER DATABASE ... SET)), then waits up to O(grace_period) seconds for the write
    transactions open in it to end, and terminates those still open when O(terminate)
    is true. A write transaction is one with a transaction id (C(backend_xid) in
    C(pg_stat_activity)).
  - With O(state=off), removes that setting (C(ALTER DATABASE ... RESET)).
  - Returns the setting it found in RV(previous), so that a play can put it back
    afterwards whatever happened in between.
  - "The stored default only reaches sessions opened after the change: a session opened
    before keeps the default it started with, and may go on writing (after O(state=on))
    or go on refusing to write (after O(state=off)) until it reconnects. The app's
    connection pool reconnects on its own only when a connection breaks or reaches its
    maximum age. Name the app's role in O(terminate_idle_roles) to make its sessions
    reconnect now: each of its sessions opened before the change is terminated as soon
    as it is idle, within O(grace_period), and the pool opens a fresh one with the new
    default."
  - Sessions of M(pg_migrate) (application name C(ansible-pg_migrate)) are left alone,
    since they write on purpose and set their own default.
options:
  database:
    description:
      - Database to open or close the window on. The module connects to it.
    type: str
    required: true
  state:
    description:
      - V(on) makes new transactions of the database read-only by default; V(off)
        removes that default.
    type: str
    required: true
    choices: ["on", "off"]
  grace_period:
    description:
      - Seconds to wait for open write transactions to end (with O(state=on)) and for
        the sessions of O(terminate_idle_roles) opened before the change to become idle.
    type: float
    default: 30
  terminate:
    description:
      - Whether to terminate what is still in the way once O(grace_period) is over,
        that is write transactions (with O(state=on)) and busy sessions of
        O(terminate_idle_roles) opened before the change.
      - When false they are returned in RV(still_writing) and RV(sessions_before_change)
        with a warning, and the task succeeds.
    type: bool
    default: false
  terminate_idle_roles:
    description:
      - Roles whose sessions opened before the change are terminated once idle, so that
        their connection pool reconnects with the new default. Usually the app's role.
      - Needs a login role that may see those sessions' state and start time
        (C(pg_read_all_stats), or membership in the role) and may terminate them
        (C(pg_signal_backend), or membership in the role); the task fails saying so
        before it changes anything when it may not.
    type: list
    elements: str
    default: []
extends_documentation_fragment:
  - pg_connection
attributes:
  check_mode:
    support: full
    details:
      - Reads the setting and the sessions, returns RV(previous) and the write
        transactions open now in RV(still_writing), with RV(changed) true when the
        setting would change. Nothing is stored and no session is terminated.
  diff_mode:
    support: none
    details: RV(previous) and RV(state) say what changes.
notes:
  - C(ALTER DATABASE ... SET) needs the database's owner (the migrator role in this
    repository) or a superuser.
  - A session that is idle when it is looked at may start a request before it is
    terminated; that request fails and the app retries it or answers an error.
  - A setting stored for a role (C(ALTER ROLE ... SET)) or in the server's
    configuration is not changed, and a session may still run
    C(SET default_transaction_read_only = off) for itself, as M(pg_migrate) does. The
    window keeps well-behaved clients from writing; it is no security boundary.
  - O(login_db) is not used; the connection goes to O(database).
seealso:
  - module: pg_migrate
  - module: pg_state
author:
  - Reading history release team
"""

EXAMPLES = r"""
- name: Stop writes while the migrations run
  pg_readonly:
    database: reading_history
    state: "on"
    grace_period: 20
    terminate: true
    terminate_idle_roles: [reading_history_app]
    login_host: "{{ reading_history_db_host }}"
    login_user: "{{ reading_history_db_migrator_user }}"
    login_password: "{{ vault_migrator_db_password }}"
  register: window

- name: Put back the setting the database had, and reconnect the app's sessions
  pg_readonly:
    database: reading_history
    state: "{{ window.previous }}"
    terminate_idle_roles: [reading_history_app]
    login_host: "{{ reading_history_db_host }}"
    login_user: "{{ reading_history_db_migrator_user }}"
    login_password: "{{ vault_migrator_db_password }}"
  when: window.previous is defined
"""

RETURN = r"""
previous:
  description:
    - Whether C(default_transaction_read_only) was stored as on for the database before
      this task. Returned on failure too once it was read, so the setting can be put back.
  returned: always, and on failure once read
  type: str
  sample: "off"
state:
  description: The setting the database has now (in check mode, would have).
  returned: always
  type: str
  sample: "on"
terminated:
  description:
    - Sessions this task terminated, each with its C(reason), one of
      C(write_transaction), C(idle_session) or C(busy_session).
  returned: always
  type: list
  elements: dict
  sample:
    - {"pid": 4242, "user": "reading_history_app", "application": "reading-history",
       "client_addr": "10.0.0.21", "backend_start": "2024-05-01T12:00:03+00:00",
       "state": "idle", "writing": false, "reason": "idle_session"}
still_writing:
  description:
    - Sessions with a write transaction still open when the task ended, O(terminate)
      being false; in check mode, those open now.
  returned: always
  type: list
  elements: dict
  sample: []
sessions_before_change:
  description:
    - Process ids of the sessions opened before the setting changed (or whose start the
      login role cannot see) that are still there; they keep the old default until they
      reconnect. Empty when the setting did not change.
  returned: always
  type: list
  elements: int
  sample: [4250, 4251]
waited:
  description: Seconds spent waiting for write transactions and busy sessions.
  returned: always
  type: float
  sample: 1.4
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pg_connection import (
    DatabaseError,
    connect,
    ensure_psycopg,
    error_text,
    pg_argument_spec,
)
from ansible.module_utils.pg_sessions import (
    Session,
    database_read_only,
    lacking_rights,
    list_sessions,
    server_now,
    terminate_backend,
)

try:
    from psycopg import sql
except ImportError:  # reported by ensure_psycopg before any use
    sql = None

APPLICATION_NAME = "ansible-pg_readonly"
MIGRATOR_APPLICATION = "ansible-pg_migrate"
POLL_SECONDS = 0.2
# How long pg_terminate_backend waits for a terminated session to be gone.
TERMINATE_WAIT_MS = 5000
INSUFFICIENT_PRIVILEGE = "42501"


class WindowError(Exception):
    """The window could not be set up as asked; the message says why."""


@dataclass
class Outcome:
    previous: str
    state: str
    terminated: list[dict[str, Any]] = field(default_factory=list)
    still_writing: list[dict[str, Any]] = field(default_factory=list)
    sessions_before_change: list[int] = field(default_factory=list)
    waited: float = 0.0

    def as_result(self) -> dict[str, Any]:
        return {
            "previous": self.previous,
            "state": self.state,
            "terminated": self.terminated,
            "still_writing": self.still_writing,
            "sessions_before_change": self.sessions_before_change,
            "waited": round(self.waited, 3),
        }


def word(flag: bool) -> str:
    return "on" if flag else "off"


def store_setting(conn: Any, database: str, read_only: bool) -> None:
    name = sql.Identifier(database)
    if read_only:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(name)
        )
    else:
        conn.execute(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(name))


def others(sessions: list[Session]) -> list[Session]:
    """The sessions the window is about: all but those of the migration module."""
    return [s for s in sessions if s.application != MIGRATOR_APPLICATION]


class Window:
    """Waits for, and ends, what stands in the way of the new default."""

    def __init__(
        self,
        conn: Any,
        outcome: Outcome,
        roles: list[str],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.conn = conn
        self.outcome = outcome
        self.roles = set(roles)
        self.clock = clock
        self.sleep = sleep
        self.ended: set[int] = set()

    def end(self, session: Session, reason: str) -> None:
        try:
            gone = terminate_backend(self.conn, session.pid, TERMINATE_WAIT_MS)
        except DatabaseError as error:
            hint = ""
            if getattr(error, "sqlstate", None) == INSUFFICIENT_PRIVILEGE:
                hint = (
                    f"; the login role needs pg_signal_backend or membership in role "
                    f"'{session.user}'"
                )
            raise WindowError(
                f"terminating session {session.pid} of role '{session.user}' failed: "
                f"{error_text(error)}{hint}"
            ) from error
        self.ended.add(session.pid)
        if gone:
            self.outcome.terminated.append({**session.describe(), "reason": reason})

    def stale(self, sessions: list[Session], changed_at: Any) -> list[Session]:
        """Sessions of the named roles opened before the change, not yet ended."""
        if changed_at is None or not self.roles:
            return []
        mine = [s for s in sessions if s.user in self.roles and s.pid not in self.ended]
        hidden = sorted({s.user for s in mine if not s.visible})
        if hidden:
            raise WindowError(
                f"the login role cannot see the state of sessions of "
                f"{', '.join(map(repr, hidden))}: grant it pg_read_all_stats, or leave "
                "terminate_idle_roles empty"
            )
        return [s for s in mine if s.started_before(changed_at)]

    def settle(self, grace: float, wait_for_writes: bool, changed_at: Any) -> list[Session]:
        """Wait until nothing is in the way or grace runs out; return what still is."""
        started = self.clock()
        deadline = started + grace
        while True:
            sessions = others(list_sessions(self.conn))
            stale = self.stale(sessions, changed_at)
            for session in stale:
                if session.state == "idle" and not session.writing:
                    self.end(session, "idle_session")
            left = [s for s in sessions if s.pid not in self.ended]
            writers = [s for s in left if s.writing] if wait_for_writes else []
            busy = [s for s in stale if s.pid not in self.ended and s not in writers]
            in_the_way = writers + busy
            if not in_the_way or self.clock() >= deadline:
                self.outcome.waited = self.clock() - started
                return in_the_way
            self.sleep(min(POLL_SECONDS, max(deadline - self.clock(), 0)))

    def finish(self, in_the_way: list[Session], terminate: bool) -> list[str]:
        """Terminate what is left when asked; otherwise report it. Return warnings."""
        if terminate:
            for session in in_the_way:
                self.end(session, "write_transaction" if session.writing else "busy_session")
            return []
        warnings = []
        writers = [s for s in in_the_way if s.writing]
        busy = [s for s in in_the_way if not s.writing]
        self.outcome.still_writing = [s.describe() for s in writers]
        if writers:
            warnings.append(
                "write transactions still open after the grace period (terminate is "
                f"false): sessions {', '.join(str(s.pid) for s in writers)}"
            )
        if busy:
            warnings.append(
                "sessions opened before the change still busy after the grace period "
                "(terminate is false) keep the old default until they reconnect: "
                f"sessions {', '.join(str(s.pid) for s in busy)}"
            )
        return warnings

    def record_leftovers(self, changed_at: Any) -> None:
        if changed_at is None:
            return
        sessions = others(list_sessions(self.conn))
        self.outcome.sessions_before_change = [
            s.pid for s in sessions if s.pid not in self.ended and s.started_before(changed_at)
        ]


def main() -> None:
    argument_spec = pg_argument_spec()
    argument_spec.update(
        database=dict(type="str", required=True),
        state=dict(type="str", required=True, choices=["on", "off"]),
        grace_period=dict(type="float", default=30),
        terminate=dict(type="bool", default=False),
        terminate_idle_roles=dict(type="list", elements="str", default=[]),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    database = params["database"]
    wanted = params["state"]

    if not database:
        module.fail_json(msg="database must not be empty")
    if params["grace_period"] < 0:
        module.fail_json(msg="grace_period must not be negative")
    if any(not role for role in params["terminate_idle_roles"]):
        module.fail_json(msg="terminate_idle_roles must not hold an empty name")
    ensure_psycopg(module)

    what = "making database '{}' " + ("read-only" if wanted == "on" else "writable again")
    outcome: Outcome | None = None
    try:
        with connect(
            module, dbname=database, autocommit=True, application_name=APPLICATION_NAME
        ) as conn:
            # The database may already default to read-only; this session must write.
            conn.execute("SELECT set_config('default_transaction_read_only', 'off', false)")
            outcome = Outcome(previous=word(database_read_only(conn, database)), state=wanted)
            changed = outcome.previous != wanted
            warnings = run(module, conn, outcome, changed)
    except (DatabaseError, WindowError) as error:
        extra = outcome.as_result() if outcome else {}
        module.fail_json(msg=f"{what.format(database)} failed: {error_text(error)}", **extra)

    for warning in warnings:
        module.warn(warning)
    changed = changed or bool(outcome.terminated)
    module.exit_json(changed=changed, **outcome.as_result())


def run(module: AnsibleModule, conn: Any, outcome: Outcome, changed: bool) -> list[str]:
    """Store the setting, then wait for and end what is in the way; return warnings."""
    params = module.params
    wanted = params["state"]
    # Found out before anything changes, rather than half way through the window.
    lacking = lacking_rights(conn, params["terminate_idle_roles"])
    if lacking:
        raise WindowError(
            f"the login role may not see and terminate the sessions of "
            f"{', '.join(map(repr, lacking))}: grant it pg_read_all_stats and "
            "pg_signal_backend, or leave terminate_idle_roles empty"
        )
    if module.check_mode:
        if wanted == "on":
            writers = [s for s in others(list_sessions(conn)) if s.writing]
            outcome.still_writing = [s.describe() for s in writers]
        return []

    changed_at = None
    if changed:
        store_setting(conn, params["database"], wanted == "on")
        # Sessions that started before this moment may have read the old default.
        changed_at = server_now(conn)

    window = Window(conn, outcome, params["terminate_idle_roles"])
    in_the_way = window.settle(params["grace_period"], wanted == "on", changed_at)
    warnings = window.finish(in_the_way, params["terminate"])
    window.record_leftovers(changed_at)
    return warnings


if __name__ == "__main__":
    main()
