#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_state
short_description: Report the state of a PostgreSQL server and one of its databases
description:
  - Connects to a PostgreSQL server and reports what a release step needs to know
    before or after it acts, namely whether the server answers, its version, whether it is a
    standby, whether the database is read-only, the applied schema version and the
    tables of the C(public) schema.
  - Changes nothing, so it runs the same way in check mode.
options:
  database:
    description:
      - Database to inspect.
      - Defaults to the value of O(login_db).
    type: str
  fail_on_unreachable:
    description:
      - Whether a server that cannot be reached fails the task.
      - When V(false), the task succeeds with RV(reachable=false) and the reason in
        RV(error), so a play can branch on it.
    type: bool
    default: true
extends_documentation_fragment:
  - pg_connection
attributes:
  check_mode:
    support: full
    details: Only reads, so check mode and a normal run behave the same.
  diff_mode:
    support: none
    details: Nothing is changed, so there is no difference to show.
notes:
  - RV(tables) holds the planner's estimates from C(pg_class.reltuples), which are
    only as fresh as the last C(ANALYZE); use M(pg_backup) for exact counts.
  - The schema version is read from the C(schema_migrations) table that M(pg_migrate)
    keeps, found through the login role's C(search_path).
seealso:
  - module: pg_migrate
  - module: pg_backup
author:
  - Reading history release team
"""

EXAMPLES = r"""
- name: Stop early when the database is not in a state to migrate
  pg_state:
    database: reading_history
    login_host: "{{ reading_history_db_host }}"
    login_user: release
    login_password: "{{ vault_release_db_password }}"
  register: db_state

- name: Refuse to migrate a standby or a read-only database
  ansible.builtin.assert:
    that:
      - not db_state.in_recovery
      - not db_state.read_only.database
    fail_msg: "database is read-only or a standby (schema {{ db_state.schema_version }})"

- name: Probe a server that may be down without failing the play
  pg_state:
    login_unix_socket: /var/run/postgresql
    fail_on_unreachable: false
  register: probe

- name: Show why the server did not answer
  ansible.builtin.debug:
    msg: "{{ probe.error }}"
  when: not probe.reachable
"""

RETURN = r"""
reachable:
  description: Whether a connection to the server could be made.
  returned: always
  type: bool
  sample: true
error:
  description: Why the server could not be reached.
  returned: when RV(reachable) is false
  type: str
  sample: "cannot connect to database 'postgres' on 127.0.0.1:5432 as 'release': ..."
database:
  description: Name of the database inspected.
  returned: always
  type: str
  sample: reading_history
database_exists:
  description: Whether the database exists.
  returned: when RV(reachable) is true
  type: bool
  sample: true
server_version:
  description: Server version as the server spells it.
  returned: when RV(reachable) is true
  type: str
  sample: "15.8 (Debian 15.8-0+deb12u1)"
server_version_num:
  description: Server version as a number, for comparisons.
  returned: when RV(reachable) is true
  type: int
  sample: 150008
in_recovery:
  description: Whether the server is a standby or still replaying its log.
  returned: when RV(reachable) is true
  type: bool
  sample: false
read_only:
  description: Read-only settings that would block a migration.
  returned: when RV(reachable) is true
  type: dict
  sample: {"database": false, "session": false}
  contains:
    database:
      description:
        - Value of C(default_transaction_read_only) stored for the database itself
          (C(ALTER DATABASE ... SET)), false when none is stored.
      type: bool
      sample: false
    session:
      description:
        - Value of C(transaction_read_only) in a fresh session on the database, which
          also reflects role settings and recovery; null when the database is missing.
      type: bool
      sample: false
schema_version:
  description:
    - Highest applied migration version, 0 when the history table is empty.
    - Null when the database or its C(schema_migrations) table does not exist.
  returned: when RV(reachable) is true
  type: int
  sample: 7
tables:
  description:
    - Tables of the C(public) schema with the planner's estimated row count.
    - An estimate is null when the table was never analysed.
  returned: when RV(reachable) is true
  type: dict
  sample: {"reading_events": 120000, "schema_migrations": 7}
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pg_connection import (
    DatabaseError,
    PgConnectError,
    connect,
    ensure_psycopg,
    error_text,
    pg_argument_spec,
)
from ansible.module_utils.schema_history import applied_version

APPLICATION_NAME = "ansible-pg_state"
TRUE_WORDS = {"on", "true", "yes", "1", "t", "y"}


def server_facts(conn: Any) -> dict[str, Any]:
    row = conn.execute(
        "SELECT current_setting('server_version'),"
        " current_setting('server_version_num')::int, pg_is_in_recovery()"
    ).fetchone()
    return {"server_version": row[0], "server_version_num": row[1], "in_recovery": row[2]}


def database_oid(conn: Any, database: str) -> int | None:
    row = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", [database]).fetchone()
    return row[0] if row else None


def setting_is_on(settings: list[str], name: str) -> bool:
    """Read a boolean out of a list of 'name=value' strings as pg_db_role_setting keeps."""
    for entry in settings:
        key, _, value = entry.partition("=")
        if key == name:
            return value.strip().lower() in TRUE_WORDS
    return False


def database_read_only(conn: Any, oid: int) -> bool:
    # setrole = 0 is the row for the database alone, not for a role inside it.
    row = conn.execute(
        "SELECT setconfig FROM pg_db_role_setting WHERE setdatabase = %s AND setrole = 0",
        [oid],
    ).fetchone()
    return setting_is_on(row[0] if row else [], "default_transaction_read_only")


def session_read_only(conn: Any) -> bool:
    return conn.execute("SELECT current_setting('transaction_read_only')").fetchone()[0] == "on"


def estimated_tables(conn: Any) -> dict[str, int | None]:
    rows = conn.execute(
        "SELECT c.relname, c.reltuples::bigint FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY c.relname"
    ).fetchall()
    # A negative estimate is PostgreSQL's way of saying "never analysed".
    return {name: (estimate if estimate >= 0 else None) for name, estimate in rows}


def database_facts(conn: Any) -> dict[str, Any]:
    return {
        "session_read_only": session_read_only(conn),
        "schema_version": applied_version(conn),
        "tables": estimated_tables(conn),
    }


def open_connection(module: AnsibleModule, dbname: str, fail: bool) -> Any:
    return connect(
        module,
        dbname=dbname,
        autocommit=True,
        fail_on_error=fail,
        application_name=APPLICATION_NAME,
    )


def inspect(module: AnsibleModule, login_db: str, database: str, fail: bool) -> dict[str, Any]:
    """Gather the facts; raises PgConnectError when fail is false and a connection fails."""
    # The maintenance database answers even when the inspected one does not exist.
    with open_connection(module, login_db, fail) as conn:
        facts = server_facts(conn)
        oid = database_oid(conn, database)
        stored_read_only = database_read_only(conn, oid) if oid is not None else False
        inside = database_facts(conn) if oid is not None and database == login_db else None

    # A second session is needed only when the inspected database is another one.
    if oid is not None and inside is None:
        with open_connection(module, database, fail) as conn:
            inside = database_facts(conn)

    # A missing database has no tables and no schema version.
    facts.update(
        database_exists=oid is not None,
        read_only={
            "database": stored_read_only,
            "session": inside["session_read_only"] if inside else None,
        },
        schema_version=inside["schema_version"] if inside else None,
        tables=inside["tables"] if inside else {},
    )
    return facts


def main() -> None:
    argument_spec = pg_argument_spec()
    argument_spec.update(
        database=dict(type="str"),
        fail_on_unreachable=dict(type="bool", default=True),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)

    login_db = module.params["login_db"]
    database = module.params["database"] or login_db
    fail_on_unreachable = module.params["fail_on_unreachable"]

    ensure_psycopg(module)

    # Read everything; an unreachable server is a result only when asked for.
    try:
        facts = inspect(module, login_db, database, fail_on_unreachable)
    except PgConnectError as error:
        module.exit_json(changed=False, database=database, reachable=False, error=str(error))
    except DatabaseError as error:
        module.fail_json(
            msg=f"reading the state of database '{database}' failed: {error_text(error)}"
        )

    module.exit_json(changed=False, database=database, reachable=True, **facts)


if __name__ == "__main__":
    main()
