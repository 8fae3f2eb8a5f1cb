#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_schema
short_description: Compare a PostgreSQL database's schema with the one a release expects
description:
  - Reads the expected schema from O(expected), a JSON description written by
    C(tools/schema-snapshot) from the release's migrations, and compares it with the
    live schema of O(database). Tables, their columns (type, nullability, default,
    identity, generation), constraints and indexes are compared, and every index must be
    valid; an interrupted C(CREATE INDEX CONCURRENTLY) leaves an C(INVALID) one behind.
  - Every difference is returned in RV(differences), and the task fails listing them
    when O(fail_on_differences) is true.
  - Compares the version the expected schema was made at with the database's applied
    version (from C(schema_migrations)), and says in RV(schema_ahead) and
    RV(schema_behind) whether the database is ahead of the code or behind it, which a
    rollback of the app needs to know.
  - Counts the rows of the tables it checked, for the record of a release.
  - Changes nothing; its session runs read-only transactions.
options:
  database:
    description:
      - Database to inspect.
    type: str
    required: true
  expected:
    description:
      - Path on the managed host of the expected-schema JSON file.
    type: path
    required: true
  fail_on_differences:
    description:
      - Whether any difference fails the task.
      - Set it to V(false) to inspect a database that is meant to differ, such as one
        whose schema is ahead of the app after a rollback, and judge RV(compatible).
    type: bool
    default: true
  count_rows:
    description:
      - Whether to count the rows of each expected table (C(count(*)), which reads the
        whole table).
    type: bool
    default: true
  statement_timeout:
    description:
      - PostgreSQL C(statement_timeout) for each query of the module, row counts
        included; a number with an optional unit (V(ms), V(s), V(min), V(h)).
    type: str
    default: 1min
extends_documentation_fragment:
  - pg_connection
attributes:
  check_mode:
    support: full
    details: Only reads, so check mode and a normal run behave the same.
  diff_mode:
    support: none
    details: RV(differences) lists what differs; nothing is changed.
notes:
  - The tables C(schema_migrations) and C(schema_migrations_log) belong to M(pg_migrate)
    and are left out on both sides.
  - Only the schema named in the expected file is compared, usually C(public).
  - Index and constraint definitions are compared as PostgreSQL prints them, so the
    expected file should come from the same major version as the server.
  - O(login_db) is not used; the connection goes to O(database).
seealso:
  - module: pg_migrate
  - module: pg_state
author:
  - Reading history release team
"""

EXAMPLES = r"""
- name: Check the schema is the one the release expects
  pg_schema:
    database: reading_history
    expected: /var/lib/reading-history/migrations/expected_schema.json
    login_host: "{{ reading_history_db_host }}"
    login_user: "{{ reading_history_db_migrator_user }}"
    login_password: "{{ vault_migrator_db_password }}"
  register: schema

- name: Before rolling the app back, see whether the schema still suits it
  pg_schema:
    database: reading_history
    expected: /opt/reading-history/releases/{{ previous_release }}/expected_schema.json
    fail_on_differences: false
    count_rows: false
    login_unix_socket: /var/run/postgresql
  become: true
  become_user: postgres
  register: previous_schema

- name: Refuse a rollback the schema cannot serve
  ansible.builtin.assert:
    that: previous_schema.compatible
    fail_msg: "{{ previous_schema.differences | map(attribute='message') | list }}"
"""

RETURN = r"""
matches:
  description: Whether the live schema is exactly the expected one.
  returned: always
  type: bool
  sample: false
compatible:
  description:
    - Whether everything the expected schema describes is there as described, leaving
      out additions the app would not notice (extra tables, indexes, constraints and
      columns, save a NOT NULL column without a default that its inserts would fail on).
  returned: always
  type: bool
  sample: true
differences:
  description:
    - Every difference, each with its C(kind), C(table), C(name) (column, constraint or
      index, null for a table), what was C(expected), what was C(found), and a C(message).
    - Kinds are C(missing_table), C(extra_table), C(missing_column), C(extra_column),
      C(column_type), C(column_nullable), C(column_default), C(column_identity),
      C(column_generated), C(missing_constraint), C(extra_constraint),
      C(constraint_definition), C(missing_index), C(extra_index), C(index_definition)
      and C(invalid_index).
  returned: always
  type: list
  elements: dict
  sample:
    - {"kind": "column_type", "table": "reading_history", "name": "feed_id",
       "expected": "bigint", "found": "integer",
       "message": "column reading_history.feed_id is integer, expected bigint"}
expected_version:
  description: Schema version the expected description was made at.
  returned: always
  type: int
  sample: 4
database_version:
  description:
    - Highest applied version of the database; null without a C(schema_migrations) table.
  returned: always
  type: int
  sample: 5
schema_ahead:
  description: Whether the database has applied versions the expected schema does not know.
  returned: always
  type: bool
  sample: true
schema_behind:
  description: Whether the database lacks versions the expected schema has.
  returned: always
  type: bool
  sample: false
rows:
  description: Exact row count of each expected table present; empty when O(count_rows) is false.
  returned: always
  type: dict
  sample: {"reading_history": 1200345, "user_reading_preferences": 5210}
tables:
  description: The tables of the expected schema, in order.
  returned: always
  type: list
  elements: str
  sample: ["api_tokens", "audit_log", "reading_history", "user_reading_preferences"]
"""

import json
import re
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pg_connection import (
    DatabaseError,
    connect,
    ensure_psycopg,
    error_text,
    pg_argument_spec,
)
from ansible.module_utils.schema_history import applied_version
from ansible.module_utils.schema_snapshot import (
    check_description,
    compare_schema,
    compatible,
    read_schema,
)

try:
    from psycopg import sql
except ImportError:  # reported by ensure_psycopg before any use
    sql = None

APPLICATION_NAME = "ansible-pg_schema"
DURATION_PATTERN = re.compile(r"^\d+\s*(us|ms|s|min|h|d)?$")
# Differences named in the failure message; all of them are in the result.
LISTED_IN_MESSAGE = 10


def load_expected(path: str) -> dict[str, Any]:
    """Read the expected-schema file, or raise ValueError saying what is wrong."""
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except OSError as error:
        raise ValueError(f"cannot read it: {error.strerror or error}") from error
    except ValueError as error:
        raise ValueError(f"it is not JSON: {error}") from error
    problems = check_description(data)
    if problems:
        raise ValueError("; ".join(problems))
    return data


def count_rows(conn: Any, schema: str, tables: list[str]) -> dict[str, int]:
    return {
        table: conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
        ).fetchone()[0]
        for table in tables
    }


def inspect(conn: Any, expected: dict[str, Any], counting: bool) -> dict[str, Any]:
    schema = expected["schema"]
    found = read_schema(conn, schema)
    differences = compare_schema(expected["tables"], found)
    present = [table for table in expected["tables"] if table in found]
    database_version = applied_version(conn)
    expected_version = expected["version"]
    return {
        "matches": not differences,
        "compatible": compatible(differences),
        "differences": differences,
        "expected_version": expected_version,
        "database_version": database_version,
        "schema_ahead": database_version is not None and database_version > expected_version,
        "schema_behind": (database_version or 0) < expected_version,
        "rows": count_rows(conn, schema, present) if counting else {},
        "tables": sorted(expected["tables"]),
    }


def failure_message(database: str, result: dict[str, Any]) -> str:
    differences = result["differences"]
    listed = "; ".join(item["message"] for item in differences[:LISTED_IN_MESSAGE])
    more = len(differences) - LISTED_IN_MESSAGE
    if more > 0:
        listed += f"; and {more} more"
    return (
        f"schema of database '{database}' differs from the expected one (expected "
        f"version {result['expected_version']}, database version "
        f"{result['database_version']}): {len(differences)} differences: {listed}"
    )


def main() -> None:
    argument_spec = pg_argument_spec()
    argument_spec.update(
        database=dict(type="str", required=True),
        expected=dict(type="path", required=True),
        fail_on_differences=dict(type="bool", default=True),
        count_rows=dict(type="bool", default=True),
        statement_timeout=dict(type="str", default="1min"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    database = params["database"]
    timeout = params["statement_timeout"].strip()

    if not database:
        module.fail_json(msg="database must not be empty")
    if not DURATION_PATTERN.match(timeout):
        module.fail_json(msg=f"statement_timeout '{timeout}' is not a duration like 30s or 1min")
    try:
        expected = load_expected(params["expected"])
    except ValueError as error:
        module.fail_json(msg=f"expected schema '{params['expected']}' is not usable: {error}")
    ensure_psycopg(module)

    try:
        with connect(
            module, dbname=database, autocommit=True, application_name=APPLICATION_NAME
        ) as conn:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false),"
                " set_config('default_transaction_read_only', 'on', false)",
                [timeout],
            )
            result = inspect(conn, expected, params["count_rows"])
    except DatabaseError as error:
        module.fail_json(
            msg=f"reading the schema of database '{database}' failed: {error_text(error)}"
        )

    if result["differences"] and params["fail_on_differences"]:
        module.fail_json(msg=failure_message(database, result), **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
