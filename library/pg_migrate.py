#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_migrate
short_description: Apply, undo and repair the versioned SQL migrations of a PostgreSQL database
description:
  - Reads the migration files of O(path), named C(NNNN_snake_name.up.sql) with an optional
    C(NNNN_snake_name.down.sql) beside them, and brings the database to O(target_version).
    The C(up) files it has not applied yet run in version order; when the target is
    below the applied version the C(down) files run instead, highest version first.
  - Keeps its history in the C(schema_migrations) table, which it creates when missing and
    upgrades with new nullable columns when it predates them. Each applied file is
    recorded with the SHA-256 of its bytes, who applied it, when, how long it took and the
    release it came with. Everything done to the history (applied, failed, reverted,
    resolved, checksum accepted) is also added to C(schema_migrations_log), which keeps
    replaced checksums and undone versions.
  - Each file runs in one transaction together with its history row, so a migration is
    either applied and recorded, or not applied at all.
  - "A file whose first line is exactly C(-- reading-history: no-transaction) runs
    statement by statement outside a transaction instead, for commands such as
    C(CREATE INDEX CONCURRENTLY)."
  - Every migration runs with O(lock_timeout) and O(statement_timeout), so a migration
    queued behind a long transaction gives up instead of holding up the queries queued
    behind it. With O(lock_retries), a migration that gave up on a lock is run again
    after O(lock_retry_delay) seconds; no other error is retried.
  - A failed migration is rolled back, recorded with status C(failed) and its error,
    and the task fails naming the version and the error. Later runs refuse to go on
    until an operator resolves it with O(resolve).
  - Later runs also refuse to go on when the file of an applied migration was edited
    afterwards; every edited version is reported before anything runs, and a new
    checksum is only taken with O(accept_checksums).
  - Only one run at a time migrates a database. Runs wait for each other on a session
    advisory lock, up to O(lock_wait_timeout) seconds; a run that waited finds the work
    done and changes nothing, and one that gives up names the session holding the lock.
  - The module's session turns C(default_transaction_read_only) off for itself, so it
    migrates a database that M(pg_readonly) made read-only for everyone else.
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
      - Who applied the migrations, resolved a failure or accepted a checksum, recorded
        in the history.
      - Defaults to O(login_user) followed by C(@) and the managed host's name.
    type: str
  target_version:
    description:
      - Version to bring the database to.
      - Above the applied version, only the C(up) files up to it run. Below it, the
        C(down) files of every applied version above it run, highest first, each in
        its own transaction that also deletes the version's history row.
      - When an applied version above it has no C(down) file, or no file at all, the
        task fails naming it before anything runs.
      - V(0) undoes every migration. Defaults to the highest version in O(path).
    type: int
  resolve:
    description:
      - Resolves the migration recorded as failed, which otherwise blocks every run.
      - Recorded in the history row (C(resolution), C(resolved_by), C(resolved_at)) and in
        C(schema_migrations_log), together with the error it resolved.
      - Naming a version that is already applied changes nothing, so the option may
        stay set for the next run; naming one with no history row only warns.
    type: dict
    suboptions:
      version:
        description:
          - Version of the failed migration.
        type: int
        required: true
      action:
        description:
          - V(retry) runs the migration again, from its file as it is now. A
            no-transaction file whose bytes did not change resumes at the statement
            that failed, since the statements before it were committed.
          - V(mark_applied) records it as applied without running anything, once it was
            finished by hand; the file's current checksum is recorded.
        type: str
        required: true
        choices: [retry, mark_applied]
  accept_checksums:
    description:
      - Versions whose edited file is accepted as what was applied, after a review that
        the edit changes nothing in the database (a comment, say).
      - The new checksum is recorded, the old one kept in C(previous_checksum) and in
        C(schema_migrations_log), with who accepted it and when.
      - A version whose checksum already matches changes nothing.
    type: list
    elements: int
    default: []
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
        It is the longest a query of the app can be held up by a migration waiting for
        its lock.
      - A number with an optional unit (V(us), V(ms), V(s), V(min), V(h), V(d));
        V(0) means no limit.
    type: str
    default: 500ms
  statement_timeout:
    description:
      - PostgreSQL C(statement_timeout) for the migrations, in the form of O(lock_timeout).
      - In a transactional file the whole file counts as one statement.
    type: str
    default: 15min
  lock_retries:
    description:
      - How many more times a migration that gave up on a lock (SQLSTATE C(55P03),
        C(lock_not_available)) is run before it counts as failed.
      - A transactional file is run again whole, since it was rolled back; a
        no-transaction file runs again from the statement that gave up.
    type: int
    default: 0
  lock_retry_delay:
    description:
      - Seconds to wait before each retry of O(lock_retries), so the transaction in the
        way can finish.
    type: float
    default: 5
extends_documentation_fragment:
  - pg_connection
attributes:
  check_mode:
    support: full
    details:
      - Reads the history and the files and returns what would be applied in
        RV(pending), undone in RV(pending_revert), accepted in RV(accepted) and resolved
        in RV(resolved), with RV(changed) true when any of them is not empty. No
        statement that changes the database runs, not even the creation or upgrade of the
        history table; without that table every file is pending.
  diff_mode:
    support: none
    details: The lists of versions in the return values say what changes.
notes:
  - The advisory lock key is the 64-bit number made of the ASCII bytes of C(readhist),
    V(8243101776847926132), taken with the one-argument, C(bigint) form of
    C(pg_try_advisory_lock); the app must use the same key if it ever migrates too.
  - The lock is taken on the module's own connection, which must be a direct one; a
    transaction-pooling proxy in between would hand the session lock to another client.
  - A runner waiting for the lock holds no transaction open between its attempts, so a
    C(CREATE INDEX CONCURRENTLY) of the runner holding the lock never waits for it.
  - Once a migration holds a table lock, queries on that table wait until its
    transaction ends; O(lock_timeout) bounds only the wait for the lock. Keep
    transactional files short and move long data changes out of them.
  - A failed C(no-transaction) migration may have applied some of its statements; the
    history row keeps the number of the statement that failed in C(failed_statement).
  - Before each C(CREATE INDEX CONCURRENTLY) of a no-transaction file, an index of that
    name left C(INVALID) by an interrupted build is dropped with
    C(DROP INDEX CONCURRENTLY), so the statement can run again; a warning names it.
  - A C(down) file always runs in one transaction; one marked C(no-transaction) is refused
    before anything runs.
  - A transactional file must not contain its own C(BEGIN), C(COMMIT) or C(ROLLBACK).
  - When O(target_version) is not given, versions recorded in the database with no file
    in O(path), as after a rollback of the app, are reported in a warning and left alone.
  - O(login_db) is not used; the connection goes to O(database).
seealso:
  - module: pg_readonly
  - module: pg_schema
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
    lock_retries: 5
    lock_retry_delay: 10
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

- name: Run migration 7 again once the cause of its failure is fixed
  pg_migrate:
    path: /opt/reading-history/releases/{{ release_version }}/migrations
    database: reading_history
    applied_by: "{{ operator }}"
    resolve:
      version: 7
      action: retry
    login_unix_socket: /var/run/postgresql
  become: true
  become_user: postgres
  register: retried

- name: Accept the edited comment in migration 3 and undo everything above version 5
  pg_migrate:
    path: /opt/reading-history/releases/{{ release_version }}/migrations
    database: reading_history
    applied_by: "{{ operator }}"
    accept_checksums: [3]
    target_version: 5
    login_unix_socket: /var/run/postgresql
  become: true
  become_user: postgres
  register: downgrade
"""

RETURN = r"""
applied:
  description: Versions applied by this run, in order; empty in check mode.
  returned: always
  type: list
  elements: int
  sample: [6, 7]
reverted:
  description: Versions undone by this run with their down files, in order; empty in check mode.
  returned: always
  type: list
  elements: int
  sample: [9, 8]
pending:
  description:
    - Versions still to apply up to the target after this run; in check mode, what a run
      would apply.
  returned: always
  type: list
  elements: int
  sample: []
pending_revert:
  description:
    - Versions still to undo down to the target after this run; in check mode, what a
      run would undo, in the order it would.
  returned: always
  type: list
  elements: int
  sample: []
accepted:
  description: Checksums accepted by this run (in check mode, that a run would accept).
  returned: always
  type: list
  elements: dict
  sample:
    - {"version": 3, "name": "add_feed_index", "previous": "9f86d0...", "checksum": "2c26b4..."}
resolved:
  description:
    - The failed migration this run resolved (in check mode, would resolve), with how;
      null when none.
  returned: always
  type: dict
  sample: {"version": 7, "name": "add_source", "action": "retry"}
current_version:
  description: Highest applied version after this run, 0 when none is applied.
  returned: always
  type: int
  sample: 7
target_version:
  description:
    - Version this run brings the database to, O(target_version) when given, else the
      highest version among the files (0 when the folder has none).
  returned: always
  type: int
  sample: 7
lock_retries_used:
  description: How many times a migration was run again after giving up on a lock.
  returned: always
  type: int
  sample: 0
drifted:
  description: Applied versions whose file changed since, each with both checksums.
  returned: failure, when a file drifted
  type: list
  elements: dict
  sample: [{"version": 3, "name": "add_feed_index", "recorded": "9f86d0...", "file": "2c26b4..."}]
version:
  description: Version of the migration that failed, or that blocks the run.
  returned: failure, when a migration failed or a failed one blocks the run
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
    HistoryRow,
    ensure_history,
    log_event,
    read_history,
)

try:
    from psycopg import sql
except ImportError:  # reported by ensure_psycopg before any use
    sql = None

APPLICATION_NAME = "ansible-pg_migrate"
FILE_PATTERN = re.compile(
    r"^(?P<version>\d{4})_(?P<name>[a-z0-9]+(?:_[a-z0-9]+)*)\.(?P<direction>up|down)\.sql$"
)
NO_TRANSACTION_MARKER = b"-- reading-history: no-transaction"
DURATION_PATTERN = re.compile(r"^\d+\s*(us|ms|s|min|h|d)?$")
# SQLSTATE of "canceling statement due to lock timeout", the only error retried.
LOCK_NOT_AVAILABLE = "55P03"

# The ASCII bytes of "readhist" as one bigint: readable in pg_locks, unlikely to collide.
LOCK_KEY = int.from_bytes(b"readhist", "big")
LOCK_POLL_SECONDS = 0.5

_IDENTIFIER = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
CONCURRENT_INDEX = re.compile(
    r"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    rf"(?P<first>{_IDENTIFIER})(?:\s*\.\s*(?P<second>{_IDENTIFIER}))?\s+ON\b",
    re.IGNORECASE,
)


class MigrationFileError(Exception):
    """The migration folder is not in a state that can be applied."""


class MigrationError(Exception):
    """A migration's SQL failed; carries the database's error text."""


class StatementError(Exception):
    """A statement of a no-transaction file failed; number counts from 1."""

    def __init__(self, number: int, message: str) -> None:
        super().__init__(message)
        self.number = number
        self.message = message


class StepFailed(Exception):
    """A step of the run failed; the history already says so where it should."""

    def __init__(self, message: str, version: int) -> None:
        super().__init__(message)
        self.version = version


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
class Plan:
    """What a run would do, worked out from the files, the history and the options."""

    target: int
    up: list[Migration] = field(default_factory=list)
    down: list[Migration] = field(default_factory=list)
    accept: list[dict[str, Any]] = field(default_factory=list)
    resolve: dict[str, Any] | None = None
    drifted: list[dict[str, Any]] = field(default_factory=list)
    failed: list[HistoryRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(self.up or self.down or self.accept or self.resolve)


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


def down_file_marked(migration: Migration) -> bool:
    with open(migration.down_path, "rb") as stream:
        return wants_no_transaction(stream.read())


def failure_message(row: HistoryRow) -> str:
    when = f" at {row.applied_at}" if row.applied_at else ""
    by = f" by {row.applied_by}" if row.applied_by else ""
    return (
        f"migration {row.version:04d}_{row.name} failed (run{by}{when}): "
        f"{row.error or 'no error recorded'}; once its cause is fixed, run again with "
        f"resolve={{version: {row.version}, action: retry}} to run it again, or with "
        f"action mark_applied if it was finished by hand"
    )


def plan_checksums(
    plan: Plan,
    by_version: dict[int, Migration],
    history: dict[int, HistoryRow],
    accept: list[int],
) -> None:
    """Sort edited applied files into those accepted now and those that block."""
    for version in sorted(set(accept)):
        row = history.get(version)
        if version not in by_version or row is None or row.status != "applied":
            plan.warnings.append(
                f"accept_checksums: version {version} is not an applied migration with a "
                "file here, so there is nothing to accept"
            )

    for version, row in sorted(history.items()):
        migration = by_version.get(version)
        if migration is None or row.status != "applied" or row.checksum == migration.checksum:
            continue
        item = {"version": version, "name": migration.name}
        if version in accept:
            plan.accept.append({**item, "previous": row.checksum, "checksum": migration.checksum})
        else:
            plan.drifted.append({**item, "recorded": row.checksum, "file": migration.checksum})

    if plan.drifted:
        labels = ", ".join(f"{item['version']:04d}_{item['name']}" for item in plan.drifted)
        numbers = ", ".join(str(item["version"]) for item in plan.drifted)
        plan.problems.append(
            f"applied migration files were edited since they ran (checksum differs): "
            f"{labels}; put the files back, or accept them with accept_checksums: [{numbers}]"
        )


def plan_resolution(
    plan: Plan,
    by_version: dict[int, Migration],
    history: dict[int, HistoryRow],
    resolve: dict[str, Any] | None,
) -> None:
    """Check the resolve option against the history; failed rows left over block."""
    wanted = resolve["version"] if resolve else None
    if resolve:
        row = history.get(wanted)
        if row is None:
            plan.warnings.append(
                f"resolve: version {wanted} has no history row, so there is nothing to resolve"
            )
        elif row.status == "applied":
            plan.warnings.append(f"resolve: version {wanted} is already applied")
        elif wanted not in by_version:
            plan.problems.append(f"resolve: version {wanted} has no file here")
        elif wanted > plan.target:
            plan.problems.append(
                f"resolve: version {wanted} is above the target version {plan.target}"
            )
        else:
            plan.resolve = {"version": wanted, "name": row.name, "action": resolve["action"]}

    resolving = plan.resolve["version"] if plan.resolve else None
    plan.failed = [
        row for row in history.values() if row.status == "failed" and row.version != resolving
    ]
    plan.problems.extend(failure_message(row) for row in plan.failed)


def plan_direction(
    plan: Plan,
    migrations: list[Migration],
    history: dict[int, HistoryRow],
    explicit_target: bool,
) -> None:
    """Work out the down files to run, highest first, then the up files, lowest first."""
    by_version = {migration.version: migration for migration in migrations}
    resolving = plan.resolve or {}
    applied = {
        version
        for version, row in history.items()
        if row.status == "applied"
        or (version == resolving.get("version") and resolving.get("action") == "mark_applied")
    }

    unknown = sorted(version for version in applied if version not in by_version)
    if unknown and not explicit_target:
        # A newer release applied these; without a target they are left alone.
        plan.warnings.append(
            "the database has applied versions with no file here, so its schema is "
            f"newer than these migrations: {', '.join(map(str, unknown))}"
        )
        applied -= set(unknown)

    cannot = []
    for version in sorted((v for v in applied if v > plan.target), reverse=True):
        migration = by_version.get(version)
        if migration is None:
            cannot.append(f"version {version} has no file here")
        elif migration.down_path is None:
            cannot.append(f"{migration.label} has no down file")
        elif down_file_marked(migration):
            cannot.append(
                f"{os.path.basename(migration.down_path)} is marked no-transaction, "
                "but a down file must run in a transaction"
            )
        else:
            plan.down.append(migration)
    if cannot:
        plan.down = []
        plan.problems.append(f"cannot migrate down to version {plan.target}: {'; '.join(cannot)}")

    plan.up = [
        migration
        for migration in migrations
        if migration.version <= plan.target
        and (
            migration.version not in history
            or (
                migration.version == resolving.get("version") and resolving.get("action") == "retry"
            )
        )
    ]


def make_plan(
    migrations: list[Migration],
    history: dict[int, HistoryRow],
    target_version: int | None = None,
    resolve: dict[str, Any] | None = None,
    accept: list[int] | tuple[int, ...] = (),
) -> Plan:
    """Decide what a run does; any entry in problems means it must not start."""
    by_version = {migration.version: migration for migration in migrations}
    highest = max(by_version, default=0)
    plan = Plan(target=highest if target_version is None else target_version)
    if target_version is not None and target_version != 0 and target_version not in by_version:
        plan.problems.append(
            f"target_version {target_version} has no migration file here (the highest is {highest})"
        )
        return plan

    plan_checksums(plan, by_version, history, list(accept))
    plan_resolution(plan, by_version, history, resolve)
    plan_direction(plan, migrations, history, target_version is not None)
    return plan


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


def strip_leading_comments(text: str) -> str:
    """Drop the comments and blank space a statement starts with."""
    index = 0
    while index < len(text):
        if text[index].isspace():
            index += 1
        elif text.startswith("--", index):
            end = text.find("\n", index)
            index = len(text) if end < 0 else end + 1
        elif text.startswith("/*", index):
            index = skip_block_comment(text, index)
        else:
            break
    return text[index:]


def concurrent_index_name(statement: str) -> str | None:
    """Return the index a CREATE INDEX CONCURRENTLY statement names, as written."""
    match = CONCURRENT_INDEX.match(strip_leading_comments(statement))
    if not match:
        return None
    return ".".join(part for part in match.group("first", "second") if part)


def acquire_lock(
    conn: Any,
    wait_seconds: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Try the advisory lock until it is ours or wait_seconds have passed.

    Each try is a statement of its own in autocommit, so no transaction stays open
    while waiting: a CREATE INDEX CONCURRENTLY of the holder never has to wait for us.
    """
    deadline = clock() + wait_seconds
    while True:
        if conn.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY]).fetchone()[0]:
            return True
        remaining = deadline - clock()
        if remaining <= 0:
            return False
        sleep(min(LOCK_POLL_SECONDS, remaining))


def describe_holder(row: tuple | None) -> str:
    if row is None:
        return "a session that has since gone"
    pid, application, user, address, since, state = row
    origin = address or "a local socket"
    started = (
        f"connected since {since:%Y-%m-%d %H:%M:%S %Z}".rstrip()
        if since is not None
        else "connection time not visible to this role"
    )
    return (
        f"pid {pid} (application '{application or '-'}', user '{user}', from {origin}, "
        f"{started}, {state or 'state not visible'})"
    )


def lock_holder(conn: Any) -> str:
    """Describe the session holding the migration lock, for the failure message."""
    # A bigint advisory key shows in pg_locks split in two halves, with objsubid 1.
    row = conn.execute(
        "SELECT a.pid, a.application_name, a.usename, host(a.client_addr),"
        " a.backend_start, a.state"
        " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
        " AND l.classid::bigint = %s AND l.objid::bigint = %s"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        [LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF],
    ).fetchone()
    return describe_holder(row)


def read_file(path: str, expected_checksum: str | None = None) -> tuple[str, str]:
    """Return a file's text and checksum; fail if it changed since discovery."""
    with open(path, "rb") as stream:
        content = stream.read()
    checksum = checksum_of(content)
    # The file might have changed since discovery; what runs is what gets recorded.
    if expected_checksum is not None and checksum != expected_checksum:
        raise MigrationError(f"file {path} changed while migrating")
    try:
        return content.decode("utf-8"), checksum
    except UnicodeDecodeError as error:
        raise MigrationError(f"file {path} is not UTF-8: {error}") from error


def is_lock_timeout(error: BaseException) -> bool:
    return getattr(error, "sqlstate", None) == LOCK_NOT_AVAILABLE


def elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


RECORD_APPLIED = (
    "INSERT INTO schema_migrations AS m"
    " (version, name, checksum, status, applied_by, duration_ms, app_release,"
    " resolution, resolved_by, resolved_at)"
    " VALUES (%(version)s, %(name)s, %(checksum)s, 'applied', %(by)s, %(ms)s, %(release)s,"
    " %(resolution)s, %(resolved_by)s, CASE WHEN %(resolution)s::text IS NOT NULL THEN now() END)"
    " ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name, checksum = EXCLUDED.checksum,"
    " status = 'applied', applied_by = EXCLUDED.applied_by, applied_at = now(),"
    " duration_ms = EXCLUDED.duration_ms, app_release = EXCLUDED.app_release,"
    " failed_statement = NULL, resolution = EXCLUDED.resolution,"
    " resolved_by = EXCLUDED.resolved_by, resolved_at = EXCLUDED.resolved_at"
    " WHERE m.status = 'failed'"
)

RECORD_FAILED = (
    "INSERT INTO schema_migrations AS m"
    " (version, name, checksum, status, applied_by, duration_ms, app_release, error,"
    " failed_statement)"
    " VALUES (%(version)s, %(name)s, %(checksum)s, 'failed', %(by)s, %(ms)s, %(release)s,"
    " %(error)s, %(statement)s)"
    " ON CONFLICT (version) DO UPDATE SET name = EXCLUDED.name, checksum = EXCLUDED.checksum,"
    " status = 'failed', applied_by = EXCLUDED.applied_by, applied_at = now(),"
    " duration_ms = EXCLUDED.duration_ms, app_release = EXCLUDED.app_release,"
    " error = EXCLUDED.error, failed_statement = EXCLUDED.failed_statement"
    " WHERE m.status = 'failed'"
)


class Migrator:
    """Runs the steps of a plan on a connection that holds the migration lock."""

    def __init__(
        self,
        conn: Any,
        who: dict[str, Any],
        lock_retries: int = 0,
        lock_retry_delay: float = 0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.conn = conn
        self.who = who
        self.lock_retries = lock_retries
        self.lock_retry_delay = lock_retry_delay
        self.sleep = sleep
        self.retries_used = 0
        self.warnings: list[str] = []

    def log(self, migration: Migration, action: str, **values: Any) -> None:
        log_event(
            self.conn,
            migration.version,
            migration.name,
            action,
            self.who["applied_by"],
            app_release=self.who["app_release"],
            **values,
        )

    def may_retry(self, error: BaseException, attempt: int) -> bool:
        """Wait and say yes when a lock timeout may be retried once more."""
        if not is_lock_timeout(error) or attempt > self.lock_retries:
            return False
        self.retries_used += 1
        self.sleep(self.lock_retry_delay)
        return True

    def attempts_note(self, attempt: int) -> str:
        return f" (gave up after {attempt} attempts)" if attempt > 1 else ""

    # Checksums and resolutions.

    def accept(self, item: dict[str, Any], migration: Migration) -> None:
        with self.conn.transaction():
            cursor = self.conn.execute(
                "UPDATE schema_migrations SET previous_checksum = checksum, checksum = %s,"
                " checksum_accepted_by = %s, checksum_accepted_at = now()"
                " WHERE version = %s AND status = 'applied' AND checksum = %s",
                [item["checksum"], self.who["applied_by"], item["version"], item["previous"]],
            )
            if cursor.rowcount != 1:
                raise StepFailed(
                    f"accepting the checksum of {migration.label} failed: its history row "
                    "changed meanwhile",
                    migration.version,
                )
            self.log(
                migration,
                "checksum_accepted",
                checksum=item["checksum"],
                previous_checksum=item["previous"],
            )

    def mark_applied(self, row: HistoryRow, migration: Migration) -> None:
        with self.conn.transaction():
            cursor = self.conn.execute(
                "UPDATE schema_migrations SET status = 'applied', checksum = %s,"
                " resolution = 'mark_applied', resolved_by = %s, resolved_at = now(),"
                " failed_statement = NULL WHERE version = %s AND status = 'failed'",
                [migration.checksum, self.who["applied_by"], migration.version],
            )
            if cursor.rowcount != 1:
                raise StepFailed(
                    f"marking {migration.label} as applied failed: its history row "
                    "changed meanwhile",
                    migration.version,
                )
            self.log(
                migration,
                "resolved_mark_applied",
                checksum=migration.checksum,
                previous_checksum=row.checksum,
                detail=row.error,
            )

    def note_retry(self, row: HistoryRow, migration: Migration) -> None:
        # Committed before the run, so the operator's decision is kept even if it fails.
        with self.conn.transaction():
            self.log(
                migration,
                "resolved_retry",
                checksum=migration.checksum,
                previous_checksum=row.checksum,
                detail=row.error,
            )

    # Going up.

    def apply(
        self, migration: Migration, resume_at: int = 0, resolution: str | None = None
    ) -> None:
        """Apply one migration and record it; raise StepFailed after recording a failure."""
        started = time.monotonic()
        failed_statement = None
        partly = "may be partly applied" if migration.no_transaction else "was rolled back"
        try:
            text, _ = read_file(migration.up_path, migration.checksum)
        except MigrationError as error:
            message, outcome = str(error), "did not run"
        else:
            statements = split_statements(text)
            try:
                if migration.no_transaction:
                    self.run_statements(migration, statements, resume_at, started, resolution)
                else:
                    self.run_transaction(migration, text, bool(statements), started, resolution)
                return
            except StatementError as error:
                failed_statement, message = error.number, error.message
                outcome = f"{partly}: statement {error.number} of {len(statements)} failed"
            except (DatabaseError, MigrationError) as error:
                message, outcome = error_text(error), partly

        # The failed transaction is gone; the failure is written in a fresh one.
        try:
            with self.conn.transaction():
                self.conn.execute(
                    RECORD_FAILED,
                    {
                        "version": migration.version,
                        "name": migration.name,
                        "checksum": migration.checksum,
                        "by": self.who["applied_by"],
                        "ms": elapsed_ms(started),
                        "release": self.who["app_release"],
                        "error": message,
                        "statement": failed_statement,
                    },
                )
                self.log(
                    migration,
                    "failed",
                    checksum=migration.checksum,
                    duration_ms=elapsed_ms(started),
                    detail=message,
                )
        except DatabaseError as error:
            message = f"{message} (recording the failure failed too: {error_text(error)})"
        raise StepFailed(
            f"migration {migration.label} failed and {outcome}: {message}", migration.version
        )

    def record_applied(self, migration: Migration, started: float, resolution: str | None) -> None:
        cursor = self.conn.execute(
            RECORD_APPLIED,
            {
                "version": migration.version,
                "name": migration.name,
                "checksum": migration.checksum,
                "by": self.who["applied_by"],
                "ms": elapsed_ms(started),
                "release": self.who["app_release"],
                "resolution": resolution,
                "resolved_by": self.who["applied_by"] if resolution else None,
            },
        )
        if cursor.rowcount != 1:
            raise MigrationError(f"version {migration.version} was recorded as applied meanwhile")
        self.log(migration, "applied", checksum=migration.checksum, duration_ms=elapsed_ms(started))

    def run_transaction(
        self,
        migration: Migration,
        text: str,
        has_code: bool,
        started: float,
        resolution: str | None,
    ) -> None:
        attempt = 1
        while True:
            try:
                with self.conn.transaction():
                    if has_code:
                        self.conn.execute(text)
                    self.record_applied(migration, started, resolution)
                return
            except DatabaseError as error:
                if self.may_retry(error, attempt):
                    attempt += 1
                    continue
                raise MigrationError(f"{error_text(error)}{self.attempts_note(attempt)}") from error

    def run_statements(
        self,
        migration: Migration,
        statements: list[str],
        resume_at: int,
        started: float,
        resolution: str | None,
    ) -> None:
        # Outside a transaction each statement commits alone, as CONCURRENTLY requires.
        index, attempt = resume_at, 1
        while index < len(statements):
            try:
                self.drop_invalid_index(statements[index])
                self.conn.execute(statements[index])
            except DatabaseError as error:
                if self.may_retry(error, attempt):
                    attempt += 1
                    continue
                raise StatementError(
                    index + 1, f"{error_text(error)}{self.attempts_note(attempt)}"
                ) from error
            index += 1
        try:
            with self.conn.transaction():
                self.record_applied(migration, started, resolution)
        except (DatabaseError, MigrationError) as error:
            raise MigrationError(
                f"every statement ran, but recording it failed: {error_text(error)}"
            ) from error

    def drop_invalid_index(self, statement: str) -> None:
        """Drop the INVALID index an interrupted build of this statement left behind."""
        name = concurrent_index_name(statement)
        if name is None:
            return
        row = self.conn.execute(
            "SELECT n.nspname, c.relname FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE i.indexrelid = to_regclass(%s) AND NOT i.indisvalid",
            [name],
        ).fetchone()
        if row is None:
            return
        self.conn.execute(
            sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(*row))
        )
        self.warnings.append(
            f"dropped the invalid index {row[0]}.{row[1]} left by an interrupted build, "
            "to build it again"
        )

    # Going down.

    def revert(self, migration: Migration, row: HistoryRow) -> None:
        """Run a down file and delete the history row in one transaction."""
        started, attempt = time.monotonic(), 1
        try:
            text, checksum = read_file(migration.down_path)
            has_code = bool(split_statements(text))
            while True:
                try:
                    with self.conn.transaction():
                        if has_code:
                            self.conn.execute(text)
                        cursor = self.conn.execute(
                            "DELETE FROM schema_migrations"
                            " WHERE version = %s AND status = 'applied'",
                            [migration.version],
                        )
                        if cursor.rowcount != 1:
                            raise MigrationError("its history row changed meanwhile")
                        self.log(
                            migration,
                            "reverted",
                            checksum=checksum,
                            previous_checksum=row.checksum,
                            duration_ms=elapsed_ms(started),
                        )
                    return
                except DatabaseError as error:
                    if self.may_retry(error, attempt):
                        attempt += 1
                        continue
                    raise MigrationError(
                        f"{error_text(error)}{self.attempts_note(attempt)}"
                    ) from error
        except MigrationError as error:
            message = str(error)

        # Nothing of the down file stayed, so the version is still applied: the log
        # keeps the failure, and the history row stays as it was.
        try:
            with self.conn.transaction():
                self.log(
                    migration, "revert_failed", duration_ms=elapsed_ms(started), detail=message
                )
        except DatabaseError as error:
            message = f"{message} (recording the failure failed too: {error_text(error)})"
        raise StepFailed(
            f"undoing migration {migration.label} failed and was rolled back, so version "
            f"{migration.version} is still applied: {message}",
            migration.version,
        )


def prepare_session(conn: Any, lock_timeout: str, statement_timeout: str) -> None:
    # set_config takes the values as bound parameters; the server validates them. The
    # session must write even when the database defaults to read-only transactions.
    conn.execute(
        "SELECT set_config('lock_timeout', %s, false),"
        " set_config('statement_timeout', %s, false),"
        " set_config('default_transaction_read_only', 'off', false)",
        [lock_timeout, statement_timeout],
    )


def versions(migrations: list[Migration]) -> list[int]:
    return [migration.version for migration in migrations]


def current_version(history: dict[int, HistoryRow]) -> int:
    return max((row.version for row in history.values() if row.status == "applied"), default=0)


def validate(module: AnsibleModule) -> None:
    params = module.params
    if not os.path.isdir(params["path"]):
        module.fail_json(
            msg=f"migration folder '{params['path']}' does not exist or is not a folder"
        )
    if not params["database"]:
        module.fail_json(msg="database must not be empty")
    for option in ("lock_wait_timeout", "lock_retries", "lock_retry_delay", "target_version"):
        if params[option] is not None and params[option] < 0:
            module.fail_json(msg=f"{option} must not be negative")
    for option, example in (("lock_timeout", "500ms or 1s"), ("statement_timeout", "30s or 15min")):
        if not DURATION_PATTERN.match(params[option]):
            module.fail_json(msg=f"{option} '{params[option]}' is not a duration like {example}")
    if any(version < 1 for version in params["accept_checksums"]):
        module.fail_json(msg="accept_checksums takes versions from 1")
    if params["resolve"] and params["resolve"]["version"] < 1:
        module.fail_json(msg="resolve.version must be a version from 1")


def main() -> None:
    argument_spec = pg_argument_spec()
    argument_spec.update(
        path=dict(type="path", required=True),
        database=dict(type="str", required=True),
        app_release=dict(type="str"),
        applied_by=dict(type="str"),
        target_version=dict(type="int"),
        resolve=dict(
            type="dict",
            options=dict(
                version=dict(type="int", required=True),
                action=dict(type="str", required=True, choices=["retry", "mark_applied"]),
            ),
        ),
        accept_checksums=dict(type="list", elements="int", default=[]),
        lock_wait_timeout=dict(type="float", default=60),
        lock_timeout=dict(type="str", default="500ms"),
        statement_timeout=dict(type="str", default="15min"),
        lock_retries=dict(type="int", default=0),
        lock_retry_delay=dict(type="float", default=5),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    module.params["lock_timeout"] = module.params["lock_timeout"].strip()
    module.params["statement_timeout"] = module.params["statement_timeout"].strip()
    validate(module)

    folder = module.params["path"]
    database = module.params["database"]
    who = {
        "applied_by": module.params["applied_by"]
        or f"{module.params['login_user']}@{socket.gethostname()}",
        "app_release": module.params["app_release"],
    }

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
            prepare_session(conn, module.params["lock_timeout"], module.params["statement_timeout"])
            if module.check_mode:
                preview(module, conn, migrations)
            migrate(module, conn, migrations, who)
    except DatabaseError as error:
        module.fail_json(msg=f"migrating database '{database}' failed: {error_text(error)}")


def plan_for(module: AnsibleModule, migrations: list[Migration], history: dict) -> Plan:
    """Make the plan; fail before anything runs when it cannot be carried out."""
    params = module.params
    plan = make_plan(
        migrations,
        history,
        target_version=params["target_version"],
        resolve=params["resolve"],
        accept=params["accept_checksums"],
    )
    if plan.problems:
        module.fail_json(
            msg="; ".join(plan.problems),
            drifted=plan.drifted,
            version=plan.failed[0].version if plan.failed else None,
            pending=versions(plan.up),
            pending_revert=versions(plan.down),
            current_version=current_version(history),
            target_version=plan.target,
        )
    for warning in plan.warnings:
        module.warn(warning)
    return plan


def preview(module: AnsibleModule, conn: Any, migrations: list[Migration]) -> None:
    """Check mode: read the history without creating it and say what would run."""
    history = read_history(conn)
    plan = plan_for(module, migrations, history)
    module.exit_json(
        changed=plan.changes,
        applied=[],
        reverted=[],
        pending=versions(plan.up),
        pending_revert=versions(plan.down),
        accepted=plan.accept,
        resolved=plan.resolve,
        lock_retries_used=0,
        current_version=current_version(history),
        target_version=plan.target,
    )


def carry_out(
    runner: Migrator,
    plan: Plan,
    migrations: list[Migration],
    history: dict[int, HistoryRow],
    done: dict[str, Any],
) -> None:
    """Run the plan's steps in order, noting each in done as it completes."""
    by_version = {migration.version: migration for migration in migrations}
    for item in plan.accept:
        runner.accept(item, by_version[item["version"]])
        done["accepted"].append(item)

    resolution, resume_at = {}, {}
    if plan.resolve:
        version, action = plan.resolve["version"], plan.resolve["action"]
        row, migration = history[version], by_version[version]
        if action == "mark_applied":
            runner.mark_applied(row, migration)
        else:
            runner.note_retry(row, migration)
            resolution[version] = "retry"
            # Statements before the one that failed were committed: go on from it, as
            # long as the file is the one that failed.
            same_file = row.checksum == migration.checksum
            if migration.no_transaction and row.failed_statement and same_file:
                resume_at[version] = row.failed_statement - 1
        done["resolved"] = plan.resolve

    for migration in plan.down:
        runner.revert(migration, history[migration.version])
        done["reverted"].append(migration.version)
    for migration in plan.up:
        runner.apply(
            migration,
            resume_at=resume_at.get(migration.version, 0),
            resolution=resolution.get(migration.version),
        )
        done["applied"].append(migration.version)


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

    # Created or upgraded under the lock, so two first runs cannot race to do it.
    upgraded = ensure_history(conn)
    history = read_history(conn)
    plan = plan_for(module, migrations, history)

    runner = Migrator(conn, who, params["lock_retries"], params["lock_retry_delay"])
    done: dict[str, Any] = {"applied": [], "reverted": [], "accepted": [], "resolved": None}
    try:
        carry_out(runner, plan, migrations, history, done)
    except StepFailed as error:
        for warning in runner.warnings:
            module.warn(warning)
        module.fail_json(
            msg=str(error),
            version=error.version,
            pending=[v for v in versions(plan.up) if v not in done["applied"]],
            pending_revert=[v for v in versions(plan.down) if v not in done["reverted"]],
            lock_retries_used=runner.retries_used,
            current_version=current_version(read_history(conn)),
            target_version=plan.target,
            **done,
        )

    for warning in runner.warnings:
        module.warn(warning)
    module.exit_json(
        changed=bool(upgraded) or plan.changes,
        pending=[],
        pending_revert=[],
        lock_retries_used=runner.retries_used,
        current_version=current_version(read_history(conn)),
        target_version=plan.target,
        **done,
    )


if __name__ == "__main__":
    main()
