#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_migrate
short_description: Apply the pending SQL migrations of a folder to a PostgreSQL database
description:
  - Reads the migration files of O(path), named C(NNNN_snake_name.up.sql) with an optional
    C(NNNN_snake_name.down.sql) beside them, and applies the C(up) files that the
    database has not applied yet, in version order.
  - Keeps its history in the C(schema_migrations) table, which it creates when missing.
    Each applied file is recorded with the SHA-256 of its bytes, who applied it, when,
    how long it took and the release it came with.
  - Each file runs in one transaction together with its history row, so a migration is
    either applied and recorded, or not applied at all.
  - "A file whose first line is exactly C(-- reading-history: no-transaction) runs
    statement by statement outside a transaction instead, for commands such as
    C(CREATE INDEX CONCURRENTLY)."
  - A failed migration is rolled back, recorded with status C(failed) and its error,
    and the task fails. Later runs refuse to go on until someone repairs the database
    and deletes that history row.
  - Later runs also refuse to go on when the file of an applied migration was edited
    afterwards; every edited version is reported before anything runs.
  - Only one run at a time migrates a database. Runs wait for each other on a session
    advisory lock, up to O(lock_wait_timeout) seconds.
options:
  path:
    description:
      - Folder holding the migration files.
      - Versions are four digits and start at V(0001).
      - Files that do not end in C(.sql) are ignored; a C(.sql) file with a name that
        does not fit the pattern fails the task, and so do two files of one version.
    type: path
    required: true
  database:
    description:
      - Database to migrate.
    type: str
    required: true
  app_release:
    description:
      - Release of the app the migrations come with, recorded in the history.
    type: str
  applied_by:
    description:
      - Who applied the migrations, recorded in the history.
      - Defaults to O(login_user) followed by C(@) and the managed host's name.
    type: str
  lock_wait_timeout:
    description:
      - Seconds to wait for another run to release the migration lock before failing.
      - The failure names the session that holds the lock.
    type: float
    default: 60
  lock_timeout:
    description:
      - PostgreSQL C(lock_timeout) for the migrations, so a migration that waits for a
        table lock behind live traffic gives up instead of queueing that traffic behind it.
      - A number with an optional unit (V(us), V(ms), V(s), V(min), V(h), V(d));
        V(0) means no limit.
    type: str
    default: 5s
  statement_timeout:
    description:
      - PostgreSQL C(statement_timeout) for the migrations, in the form of O(lock_timeout).
      - In a transactional file the whole file counts as one statement.
    type: str
    default: 15min
extends_documentation_fragment:
  - pg_connection
attributes:
  check_mode:
    support: full
    details:
      - Reads the history and the files and returns what would be applied in
        RV(pending), with RV(changed) true when something is pending. No statement that
        changes the database runs, not even the creation of the history table; without
        that table every file is pending.
  diff_mode:
    support: none
    details: The list of versions in RV(pending) and RV(applied) says what changes.
notes:
  - The advisory lock key is the 64-bit number made of the ASCII bytes of C(readhist),
    V(8243101776847926132), taken with the one-argument, C(bigint) form of
    C(pg_try_advisory_lock); the app must use the same key if it ever migrates too.
  - Down files are discovered and checked for a matching up file but never run.
  - A failed C(no-transaction) migration may have applied some of its statements; it
    needs a look by hand before its history row is deleted.
  - A transactional file must not contain its own C(BEGIN), C(COMMIT) or C(ROLLBACK).
  - Versions recorded in the database with no file in O(path), as after a rollback of
    the app, are reported in a warning and left alone.
  - O(login_db) is not used; the connection goes to O(database).
seealso:
  - module: pg_backup
  - module: pg_state
author:
  - Reading history release team
"""

EXAMPLES = r"""
- name: Apply the migrations shipped with the release
  pg_migrate:
    path: /opt/reading-history/releases/{{ release_version }}/migrations
    database: reading_history
    app_release: "{{ release_version }}"
    login_unix_socket: /var/run/postgresql
  become: true
  become_user: postgres
  register: migration

- name: Tell which versions this release applied
  ansible.builtin.debug:
    msg: "applied {{ migration.applied }}, schema now at {{ migration.current_version }}"

- name: List pending migrations without applying them
  pg_migrate:
    path: /opt/reading-history/releases/{{ release_version }}/migrations
    database: reading_history
    login_host: "{{ reading_history_db_host }}"
    login_user: release
    login_password: "{{ vault_release_db_password }}"
  check_mode: true
  register: preview
"""

RETURN = r"""
applied:
  description: Versions applied by this run, in order; empty in check mode.
  returned: always
  type: list
  elements: int
  sample: [6, 7]
pending:
  description:
    - Versions still to apply after this run; in check mode, what a run would apply.
  returned: always
  type: list
  elements: int
  sample: []
current_version:
  description: Highest applied version after this run, 0 when none is applied.
  returned: always
  type: int
  sample: 7
target_version:
  description: Highest version among the files, 0 when the folder has none.
  returned: always
  type: int
  sample: 7
drifted:
  description: Applied versions whose file changed since, each with both checksums.
  returned: failure, when a file drifted
  type: list
  elements: dict
  sample: [{"version": 3, "name": "add_feed_index", "recorded": "9f86d0...", "file": "2c26b4..."}]
version:
  description: Version of the migration that failed.
  returned: failure, when a migration failed
  type: int
  sample: 7
"""

import hashlib
import os
import re
import socket
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
from ansible.module_utils.schema_history import (
    HISTORY_TABLE_DDL,
    HistoryRow,
    history_table_exists,
    read_history,
)

APPLICATION_NAME = "ansible-pg_migrate"
FILE_PATTERN = re.compile(
    r"^(?P<version>\d{4})_(?P<name>[a-z0-9]+(?:_[a-z0-9]+)*)\.(?P<direction>up|down)\.sql$"
)
NO_TRANSACTION_MARKER = b"-- reading-history: no-transaction"
DURATION_PATTERN = re.compile(r"^\d+\s*(us|ms|s|min|h|d)?$")

# The ASCII bytes of "readhist" as one bigint: readable in pg_locks, unlikely to collide.
LOCK_KEY = int.from_bytes(b"readhist", "big")
LOCK_POLL_SECONDS = 0.5


class MigrationFileError(Exception):
    """The migration folder is not in a state that can be applied."""


class MigrationError(Exception):
    """A migration's SQL failed; carries the database's error text."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up_path: str
    checksum: str
    no_transaction: bool
    down_path: str | None = None

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass
class Status:
    """How the files compare with the history."""

    pending: list[Migration] = field(default_factory=list)
    drifted: list[dict[str, Any]] = field(default_factory=list)
    failed: list[HistoryRow] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)


def wants_no_transaction(content: bytes) -> bool:
    """True when the first line is exactly the marker (a CRLF ending is tolerated)."""
    first_line = content.split(b"\n", 1)[0].rstrip(b"\r")
    return first_line == NO_TRANSACTION_MARKER


def checksum_of(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def scan_folder(folder: str) -> tuple[dict[int, list[str]], dict[int, list[str]], list[str]]:
    """Sort the .sql files of folder into up files and down files by version."""
    ups: dict[int, list[str]] = {}
    downs: dict[int, list[str]] = {}
    malformed = []
    for entry in sorted(os.listdir(folder)):
        if not entry.endswith(".sql") or not os.path.isfile(os.path.join(folder, entry)):
            continue
        match = FILE_PATTERN.match(entry)
        if not match:
            malformed.append(entry)
            continue
        files = ups if match.group("direction") == "up" else downs
        files.setdefault(int(match.group("version")), []).append(entry)
    return ups, downs, malformed


def folder_problems(
    ups: dict[int, list[str]], downs: dict[int, list[str]], malformed: list[str]
) -> list[str]:
    problems = [
        f"'{name}' does not fit NNNN_snake_name.up.sql or NNNN_snake_name.down.sql"
        for name in malformed
    ]
    # The app counts from 0001 too; a 0000 would read as "no schema" to it.
    problems.extend(f"'{name}': versions start at 0001" for name in ups.get(0, []))
    for files in [*ups.values(), *downs.values()]:
        if len(files) > 1:
            problems.append(f"one version in several files: {', '.join(map(repr, files))}")
    for version, files in downs.items():
        expected = {name.replace(".down.sql", ".up.sql") for name in files}
        if not expected & set(ups.get(version, [])):
            problems.append(f"'{files[0]}' has no matching up file")
    return problems


def load_migration(folder: str, up_name: str, down_name: str | None) -> Migration:
    match = FILE_PATTERN.match(up_name)
    path = os.path.join(folder, up_name)
    with open(path, "rb") as stream:
        content = stream.read()
    return Migration(
        version=int(match.group("version")),
        name=match.group("name"),
        up_path=path,
        checksum=checksum_of(content),
        no_transaction=wants_no_transaction(content),
        down_path=os.path.join(folder, down_name) if down_name else None,
    )


def discover_migrations(folder: str) -> list[Migration]:
    """Return the migrations of folder in version order, or raise MigrationFileError."""
    ups, downs, malformed = scan_folder(folder)
    problems = folder_problems(ups, downs, malformed)
    if problems:
        raise MigrationFileError("; ".join(problems))

    return [
        load_migration(folder, ups[version][0], (downs.get(version) or [None])[0])
        for version in sorted(ups)
    ]


def compare_with_history(migrations: list[Migration], history: dict[int, HistoryRow]) -> Status:
    status = Status()
    status.failed = [row for row in history.values() if row.status == "failed"]
    on_disk = {migration.version for migration in migrations}
    status.unknown = sorted(version for version in history if version not in on_disk)

    for migration in migrations:
        row = history.get(migration.version)
        if row is None:
            status.pending.append(migration)
        elif row.status == "applied" and row.checksum != migration.checksum:
            status.drifted.append(
                {
                    "version": migration.version,
                    "name": migration.name,
                    "recorded": row.checksum,
                    "file": migration.checksum,
                }
            )
    return status


def blocking_message(status: Status) -> str | None:
    """Explain why nothing may run, or return None when the way is clear."""
    if status.failed:
        failures = "; ".join(
            f"{row.version:04d}_{row.name}: {row.error or 'no error recorded'}"
            for row in status.failed
        )
        return (
            f"migration recorded as failed, repair it and delete its row from "
            f"schema_migrations before migrating again: {failures}"
        )
    if status.drifted:
        versions = ", ".join(f"{item['version']:04d}_{item['name']}" for item in status.drifted)
        return f"applied migration files were edited since they ran (checksum differs): {versions}"
    return None


def skip_quoted(text: str, start: int, quote: str, backslash_escapes: bool) -> int:
    """Return the index just past the quoted run that opens at start."""
    index = start + 1
    while index < len(text):
        char = text[index]
        if backslash_escapes and char == "\\":
            index += 2
            continue
        if char == quote:
            # A doubled quote stands for the quote itself and does not close the run.
            if text.startswith(quote * 2, index):
                index += 2
                continue
            return index + 1
        index += 1
    return len(text)


def skip_block_comment(text: str, start: int) -> int:
    """Return the index past a /* comment */; PostgreSQL lets them nest."""
    depth, index = 0, start
    while index < len(text):
        if text.startswith("/*", index):
            depth, index = depth + 1, index + 2
        elif text.startswith("*/", index):
            depth, index = depth - 1, index + 2
            if depth == 0:
                return index
        else:
            index += 1
    return len(text)


DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def is_identifier_char(char: str) -> bool:
    return char.isalnum() or char in "_$"


def skip_token(text: str, index: int) -> tuple[int, bool]:
    """Skip the comment, string or character at index; say whether it was code."""
    previous = text[index - 1] if index else ""
    if text.startswith("--", index):
        end = text.find("\n", index)
        return (len(text) if end < 0 else end + 1), False
    if text.startswith("/*", index):
        return skip_block_comment(text, index), False
    if text[index] in "'\"":
        escapes = (
            text[index] == "'"
            and previous in "eE"
            and (index < 2 or not is_identifier_char(text[index - 2]))
        )
        return skip_quoted(text, index, text[index], escapes), True
    tag = DOLLAR_TAG.match(text, index) if not is_identifier_char(previous) else None
    if tag:
        end = text.find(tag.group(0), tag.end())
        return (len(text) if end < 0 else end + len(tag.group(0))), True
    return index + 1, not text[index].isspace()


def split_statements(text: str) -> list[str]:
    """Split SQL on the semicolons that end statements, not those in strings or comments."""
    statements, start, index, has_code = [], 0, 0, False
    while index < len(text):
        if text[index] == ";":
            if has_code:
                statements.append(text[start:index].strip())
            start, index, has_code = index + 1, index + 1, False
            continue
        index, is_code = skip_token(text, index)
        has_code = has_code or is_code
    if has_code:
        statements.append(text[start:].strip())
    return statements


def acquire_lock(
    conn: Any,
    wait_seconds: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Try the advisory lock until it is ours or wait_seconds have passed."""
    deadline = clock() + wait_seconds
    while True:
        if conn.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY]).fetchone()[0]:
            return True
        remaining = deadline - clock()
        if remaining <= 0:
            return False
        sleep(min(LOCK_POLL_SECONDS, remaining))


def lock_holder(conn: Any) -> str:
    """Describe the session holding the migration lock, for the failure message."""
    # A bigint advisory key shows in pg_locks split in two halves, with objsubid 1.
    row = conn.execute(
        "SELECT a.pid, a.application_name, a.usename, host(a.client_addr)"
        " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
        " AND l.classid::bigint = %s AND l.objid::bigint = %s"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        [LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF],
    ).fetchone()
    if row is None:
        return "a session that has since gone"
    pid, application, user, address = row
    origin = address or "a local socket"
    return f"pid {pid} (application '{application or '-'}', user '{user}', from {origin})"


def record(
    conn: Any,
    migration: Migration,
    status: str,
    duration_ms: int,
    who: dict[str, Any],
    error: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO schema_migrations"
        " (version, name, checksum, status, applied_by, duration_ms, app_release, error)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        [
            migration.version,
            migration.name,
            migration.checksum,
            status,
            who["applied_by"],
            duration_ms,
            who["app_release"],
            error,
        ],
    )


def read_sql(migration: Migration) -> str:
    with open(migration.up_path, "rb") as stream:
        content = stream.read()

    # The file might have changed since discovery; what runs is what gets recorded.
    if checksum_of(content) != migration.checksum:
        raise MigrationError(f"file {migration.up_path} changed while migrating")
    return content.decode("utf-8")


def execute_sql(conn: Any, migration: Migration, text: str, who: dict[str, Any]) -> None:
    started = time.monotonic()
    statements = split_statements(text)

    # Outside a transaction each statement commits alone, as CONCURRENTLY requires.
    if migration.no_transaction:
        for statement in statements:
            conn.execute(statement)
        record(conn, migration, "applied", elapsed_ms(started), who)
        return

    with conn.transaction():
        if statements:
            conn.execute(text)
        record(conn, migration, "applied", elapsed_ms(started), who)


def run_migration(conn: Any, migration: Migration, who: dict[str, Any]) -> None:
    """Apply one migration and record it; raise MigrationError after recording a failure."""
    started = time.monotonic()
    try:
        execute_sql(conn, migration, read_sql(migration), who)
        return
    except (DatabaseError, UnicodeDecodeError) as error:
        message = error_text(error)
    except MigrationError as error:
        message = str(error)

    # The failed transaction is gone; the failure is written in a fresh one.
    try:
        with conn.transaction():
            record(conn, migration, "failed", elapsed_ms(started), who, error=message)
    except DatabaseError as error:
        message = f"{message} (recording the failure failed too: {error_text(error)})"
    raise MigrationError(message)


def elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def set_session_timeouts(conn: Any, lock_timeout: str, statement_timeout: str) -> None:
    # set_config takes the values as bound parameters; the server validates them.
    conn.execute(
        "SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)",
        [lock_timeout, statement_timeout],
    )


def versions(migrations: list[Migration]) -> list[int]:
    return [migration.version for migration in migrations]


def summary(migrations: list[Migration], history: dict[int, HistoryRow]) -> dict[str, int]:
    applied = [row.version for row in history.values() if row.status == "applied"]
    return {
        "current_version": max(applied, default=0),
        "target_version": max(versions(migrations), default=0),
    }


def main() -> None:
    argument_spec = pg_argument_spec()
    argument_spec.update(
        path=dict(type="path", required=True),
        database=dict(type="str", required=True),
        app_release=dict(type="str"),
        applied_by=dict(type="str"),
        lock_wait_timeout=dict(type="float", default=60),
        lock_timeout=dict(type="str", default="5s"),
        statement_timeout=dict(type="str", default="15min"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)

    folder = module.params["path"]
    database = module.params["database"]
    lock_wait_timeout = module.params["lock_wait_timeout"]
    lock_timeout = module.params["lock_timeout"].strip()
    statement_timeout = module.params["statement_timeout"].strip()
    who = {
        "applied_by": module.params["applied_by"]
        or f"{module.params['login_user']}@{socket.gethostname()}",
        "app_release": module.params["app_release"],
    }

    if not os.path.isdir(folder):
        module.fail_json(msg=f"migration folder '{folder}' does not exist or is not a folder")
    if not database:
        module.fail_json(msg="database must not be empty")
    if lock_wait_timeout < 0:
        module.fail_json(msg="lock_wait_timeout must not be negative")
    if not DURATION_PATTERN.match(lock_timeout):
        module.fail_json(msg=f"lock_timeout '{lock_timeout}' is not a duration like 5s or 1min")
    if not DURATION_PATTERN.match(statement_timeout):
        module.fail_json(
            msg=f"statement_timeout '{statement_timeout}' is not a duration like 30s or 15min"
        )

    # The files are judged before the database is touched.
    try:
        migrations = discover_migrations(folder)
    except MigrationFileError as error:
        module.fail_json(msg=f"migration folder '{folder}' is not usable: {error}")
    ensure_psycopg(module)

    try:
        with connect(
            module, dbname=database, autocommit=True, application_name=APPLICATION_NAME
        ) as conn:
            if module.check_mode:
                preview(module, conn, migrations)
            set_session_timeouts(conn, lock_timeout, statement_timeout)
            migrate(module, conn, migrations, who)
    except DatabaseError as error:
        module.fail_json(msg=f"migrating database '{database}' failed: {error_text(error)}")


def check_history(
    module: AnsibleModule, migrations: list[Migration], history: dict[int, HistoryRow]
) -> Status:
    """Fail when the history forbids going on; warn about versions this folder lacks."""
    status = compare_with_history(migrations, history)
    if message := blocking_message(status):
        failed = status.failed[0].version if status.failed else None
        module.fail_json(
            msg=message,
            drifted=status.drifted,
            version=failed,
            pending=versions(status.pending),
            **summary(migrations, history),
        )

    if status.unknown:
        module.warn(
            "the database has applied versions with no file here, so its schema is "
            f"newer than these migrations: {', '.join(map(str, status.unknown))}"
        )
    return status


def preview(module: AnsibleModule, conn: Any, migrations: list[Migration]) -> None:
    """Check mode: read the history without creating it and say what would run."""
    history = read_history(conn)
    status = check_history(module, migrations, history)
    module.exit_json(
        changed=bool(status.pending),
        applied=[],
        pending=versions(status.pending),
        **summary(migrations, history),
    )


def migrate(
    module: AnsibleModule, conn: Any, migrations: list[Migration], who: dict[str, Any]
) -> None:
    params = module.params

    # One run at a time: a second one waits here, then finds the work done. The lock
    # goes with the session when the module closes its connection.
    if not acquire_lock(conn, params["lock_wait_timeout"]):
        module.fail_json(
            msg=f"migration lock on database '{params['database']}' still held after "
            f"{params['lock_wait_timeout']:g}s by {lock_holder(conn)}"
        )

    # Created under the lock, so two first runs cannot race to create it.
    if not history_table_exists(conn):
        conn.execute(HISTORY_TABLE_DDL)
    history = read_history(conn)
    status = check_history(module, migrations, history)

    applied = []
    for migration in status.pending:
        try:
            run_migration(conn, migration, who)
        except MigrationError as error:
            outcome = "may be partly applied" if migration.no_transaction else "was rolled back"
            module.fail_json(
                msg=f"migration {migration.label} failed and {outcome}: {error}",
                version=migration.version,
                applied=applied,
                pending=[v for v in versions(status.pending) if v not in applied],
                **summary(migrations, read_history(conn)),
            )
        applied.append(migration.version)

    module.exit_json(
        changed=bool(applied),
        applied=applied,
        pending=[],
        **summary(migrations, read_history(conn)),
    )


if __name__ == "__main__":
    main()
