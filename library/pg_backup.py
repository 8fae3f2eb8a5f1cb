#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_backup
short_description: Dump a PostgreSQL database to a verified, checksummed backup file
description:
  - Dumps one database with C(pg_dump) in its custom format into O(backup_dir), under
    the name C(<database>_<UTC time>.dump), for example
    C(reading_history_20250102T030405Z.dump).
  - The dump is written under a temporary name in the same folder and moved into place
    only when C(pg_dump) succeeded, so a partial file never carries the final name.
  - The finished file is verified. Its checksum is read again, and C(pg_restore --list)
    must show a table definition and table data for every table counted and every
    table in O(expected_tables). A dump that fails verification is removed and the
    task fails.
  - A manifest, C(<same name>.manifest.json), is written beside the dump with its size,
    SHA-256, the server and C(pg_dump) versions, the start and end times, the release
    and schema version, the exact row count of every table of the C(public) schema and
    the result of the verification.
  - Row counts and the dump come from one exported snapshot, so the manifest describes
    exactly the data in the file.
options:
  database:
    description:
      - Database to dump.
    type: str
    required: true
  backup_dir:
    description:
      - Existing folder to write the dump and its manifest into.
      - It must be writable by the user the module runs as.
    type: path
    required: true
  app_release:
    description:
      - Release of the app that owns the data, recorded in the manifest.
    type: str
  expected_tables:
    description:
      - Tables that must be in the dump, besides every table of the C(public) schema.
      - A name without a schema is looked up in C(public); V(audit.events) names a table
        of another schema.
    type: list
    elements: str
    default: []
  pg_dump_path:
    description:
      - Path of the C(pg_dump) program.
      - By default the newest C(/usr/lib/postgresql/<version>/bin/pg_dump), otherwise
        the first C(pg_dump) on the E(PATH).
    type: path
  pg_restore_path:
    description:
      - Path of the C(pg_restore) program used to verify the dump.
      - Found the same way as O(pg_dump_path) by default.
    type: path
extends_documentation_fragment:
  - pg_connection
attributes:
  check_mode:
    support: full
    details:
      - Connects, runs every check that comes before dumping and returns the paths it
        would write, with RV(changed=true); nothing is dumped or written.
  diff_mode:
    support: none
    details: A backup file has no useful textual difference to show.
notes:
  - Every run writes a new file; the module never overwrites or prunes older backups.
  - The dump and the manifest are readable by their owner only, since they hold the
    service's data.
  - C(pg_dump) must be of the server's major version or newer.
  - O(login_db) is not used; the connection goes to O(database).
seealso:
  - module: pg_migrate
  - module: pg_state
  - name: pg_dump
    description: Reference of the PostgreSQL dump program and its custom format.
    link: https://www.postgresql.org/docs/current/app-pgdump.html
author:
  - Reading history release team
"""

EXAMPLES = r"""
- name: Back up the reading history before migrating it
  pg_backup:
    database: reading_history
    backup_dir: /var/backups/reading-history
    app_release: "{{ release_version }}"
    expected_tables:
      - reading_events
      - schema_migrations
    login_unix_socket: /var/run/postgresql
  become: true
  become_user: postgres
  register: backup

- name: Keep the backup's name for a rollback
  ansible.builtin.set_fact:
    rollback_dump: "{{ backup.dest }}"
    rollback_schema_version: "{{ backup.schema_version }}"

- name: See where a backup would go without making one
  pg_backup:
    database: reading_history
    backup_dir: /var/backups/reading-history
  check_mode: true
"""

RETURN = r"""
dest:
  description: Path of the dump, or of the dump it would write in check mode.
  returned: always
  type: str
  sample: /var/backups/reading-history/reading_history_20250102T030405Z.dump
manifest:
  description: Path of the manifest beside the dump.
  returned: always
  type: str
  sample: /var/backups/reading-history/reading_history_20250102T030405Z.manifest.json
size:
  description: Size of the dump in bytes.
  returned: changed and not in check mode
  type: int
  sample: 1048576
sha256:
  description: SHA-256 of the dump, in hexadecimal.
  returned: changed and not in check mode
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
elapsed:
  description: Seconds from the first check to the written manifest.
  returned: always
  type: float
  sample: 4.2
tables:
  description: Exact row count of every table of the C(public) schema, as dumped.
  returned: changed and not in check mode
  type: dict
  sample: {"reading_events": 120000, "schema_migrations": 7}
schema_version:
  description: Highest applied migration at the time of the dump, null without history.
  returned: changed and not in check mode
  type: int
  sample: 7
verified:
  description: Whether the dump passed verification; always true on success.
  returned: changed and not in check mode
  type: bool
  sample: true
verification:
  description: What the verification checked.
  returned: changed and not in check mode
  type: dict
  sample: {"checksum_matches": true, "toc_entries": 42, "tables_checked": ["public.reading_events"]}
server_version:
  description: Version of the server that was dumped.
  returned: always
  type: str
  sample: "15.8 (Debian 15.8-0+deb12u1)"
pg_dump_version:
  description: Version of the C(pg_dump) used.
  returned: always
  type: str
  sample: "15.8"
"""

import datetime
import glob
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pg_connection import (
    DatabaseError,
    connect,
    ensure_psycopg,
    error_text,
    libpq_environment,
    pg_argument_spec,
)
from ansible.module_utils.schema_history import applied_version

try:
    import psycopg
    from psycopg import sql
except ImportError:
    # pg_connection.ensure_psycopg reports the missing library.
    psycopg = None

APPLICATION_NAME = "ansible-pg_backup"
CLIENT_ROOT = "/usr/lib/postgresql"
VERSION_PATTERN = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
TOC_LINE_PATTERN = re.compile(r"^(\d+);\s+(\d+)\s+(\d+)\s+(.*)$")

# pg_restore prints an entry's kind unquoted, and some kinds are several words;
# the longest names come first so "TABLE DATA" is not read as "TABLE".
MULTI_WORD_KINDS = sorted(
    [
        "TABLE DATA",
        "TABLE ATTACH",
        "SEQUENCE SET",
        "SEQUENCE OWNED BY",
        "FK CONSTRAINT",
        "CHECK CONSTRAINT",
        "DEFAULT ACL",
        "MATERIALIZED VIEW",
        "MATERIALIZED VIEW DATA",
        "INDEX ATTACH",
        "SHELL TYPE",
        "EVENT TRIGGER",
        "FOREIGN TABLE",
        "FOREIGN DATA WRAPPER",
        "USER MAPPING",
        "ROW SECURITY",
        "PUBLICATION TABLE",
        "PUBLICATION TABLES IN SCHEMA",
        "OPERATOR CLASS",
        "OPERATOR FAMILY",
        "TEXT SEARCH CONFIGURATION",
        "TEXT SEARCH DICTIONARY",
        "TEXT SEARCH PARSER",
        "TEXT SEARCH TEMPLATE",
        "ACCESS METHOD",
        "PROCEDURAL LANGUAGE",
        "LARGE OBJECT",
        "BLOB METADATA",
        "DATABASE PROPERTIES",
    ],
    key=len,
    reverse=True,
)

Runner = Callable[[list[str]], tuple[int, str, str]]


@dataclass(frozen=True)
class TocEntry:
    """One line of pg_restore --list: what the archive holds and where it belongs."""

    dump_id: int
    kind: str
    schema: str
    name: str
    owner: str


@dataclass
class Verification:
    checksum_matches: bool = False
    toc_entries: int = 0
    tables_checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Client:
    path: str
    version: str
    major: int


def backup_stem(database: str, moment: datetime.datetime) -> str:
    """Name a backup after its database and UTC start time, safe as a file name."""
    safe_database = re.sub(r"[^A-Za-z0-9_.-]", "_", database)
    return f"{safe_database}_{moment.astimezone(datetime.UTC):%Y%m%dT%H%M%SZ}"


def iso_utc(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_toc_line(line: str) -> TocEntry | None:
    """Parse '<id>; <catalog oid> <oid> <kind> <schema> <name> <owner>'; None if not one."""
    match = TOC_LINE_PATTERN.match(line.strip())
    if not match:
        return None

    rest = match.group(4)
    kind = next((k for k in MULTI_WORD_KINDS if rest.startswith(f"{k} ")), rest.split(" ")[0])
    words = rest[len(kind) :].split()
    if len(words) < 3:
        return None

    # The schema is one word ("-" when none); the owner is the last; the name may have spaces.
    return TocEntry(int(match.group(1)), kind, words[0], " ".join(words[1:-1]), words[-1])


def parse_toc(listing: str) -> list[TocEntry]:
    """Parse pg_restore --list output; comment lines start with ';' and are skipped."""
    entries = (parse_toc_line(line) for line in listing.splitlines() if not line.startswith(";"))
    return [entry for entry in entries if entry is not None]


def qualified(table: str) -> tuple[str, str]:
    """Split 'schema.table' into its parts; a bare name belongs to public."""
    schema, dot, name = table.partition(".")
    return (schema, name) if dot else ("public", table)


def missing_from_toc(entries: list[TocEntry], tables: list[str]) -> list[str]:
    """Describe every table that lacks its definition or its data in the archive."""
    present = {(entry.kind, entry.schema, entry.name) for entry in entries}
    problems = []
    for table in tables:
        schema, name = qualified(table)
        for kind in ("TABLE", "TABLE DATA"):
            if (kind, schema, name) not in present:
                problems.append(f"{kind} entry for {schema}.{name} is missing")
    return problems


def verify_dump(
    run: Runner, pg_restore: str, path: str, expected_sha256: str, tables: list[str]
) -> Verification:
    """Check a finished dump against its checksum and its table of contents."""
    verification = Verification()

    # Read the file again: what is on disk is what a restore will get.
    verification.checksum_matches = sha256_of(path) == expected_sha256
    if not verification.checksum_matches:
        verification.problems.append("checksum of the file on disk differs from the dump's")

    rc, stdout, stderr = run([pg_restore, "--list", path])
    if rc != 0:
        verification.problems.append(f"pg_restore --list failed: {stderr.strip()}")
        return verification

    entries = parse_toc(stdout)
    verification.toc_entries = len(entries)
    verification.tables_checked = sorted("{}.{}".format(*qualified(t)) for t in set(tables))
    verification.problems.extend(missing_from_toc(entries, sorted(set(tables))))
    return verification


def newest_packaged_client(name: str) -> str | None:
    """Return the client of the newest PostgreSQL major installed the Debian way."""
    found = glob.glob(os.path.join(CLIENT_ROOT, "*", "bin", name))
    versioned = [path for path in found if path.split(os.sep)[-3].isdigit()]
    if not versioned:
        return None
    return max(versioned, key=lambda path: int(path.split(os.sep)[-3]))


def find_client(module: AnsibleModule, name: str, configured: str | None) -> str:
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            module.fail_json(msg=f"{name} at '{configured}' is not an executable file")
        return configured
    path = newest_packaged_client(name) or module.get_bin_path(name)
    if not path:
        module.fail_json(msg=f"{name} not found in {CLIENT_ROOT}/*/bin nor on the PATH")
    return path


def client_version(module: AnsibleModule, path: str) -> Client:
    argv = [path, "--version"]
    rc, stdout, stderr = module.run_command(argv)
    match = VERSION_PATTERN.search(stdout)
    if rc != 0 or not match:
        module.fail_json(
            msg=f"cannot tell the version of '{path}'",
            rc=rc,
            stdout=stdout,
            stderr=stderr,
            cmd=argv,
        )
    version = match.group(1) + (f".{match.group(2)}" if match.group(2) else "")
    return Client(path, version, int(match.group(1)))


def backup_dir_problem(backup_dir: str) -> str | None:
    if not os.path.isdir(backup_dir):
        return f"backup_dir '{backup_dir}' does not exist or is not a folder"
    if not os.access(backup_dir, os.W_OK | os.X_OK):
        return f"backup_dir '{backup_dir}' is not writable"
    return None


def public_tables(conn: Any) -> list[str]:
    # Plain tables only: a partitioned parent has no data of its own in a dump.
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY c.relname"
    ).fetchall()
    return [row[0] for row in rows]


def row_counts(conn: Any) -> dict[str, int]:
    counts = {}
    for table in public_tables(conn):
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))
        counts[table] = conn.execute(query).fetchone()[0]
    return counts


def server_version(conn: Any) -> tuple[str, int]:
    row = conn.execute(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int"
    ).fetchone()
    return row[0], row[1]


def export_snapshot(conn: Any) -> str:
    """Start a read-only repeatable-read transaction and share its snapshot with pg_dump."""
    # The checks ran in a transaction of their own; the snapshot needs a fresh one.
    conn.commit()
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return conn.execute("SELECT pg_export_snapshot()").fetchone()[0]


def write_manifest(module: AnsibleModule, path: str, manifest: dict[str, Any]) -> None:
    """Write the manifest under a temporary name and move it into place in one step."""
    fd, temporary = tempfile.mkstemp(
        dir=os.path.dirname(path), prefix=".manifest.", suffix=".partial"
    )
    module.add_cleanup_file(temporary)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        json.dump(manifest, stream, indent=2, sort_keys=True)
        stream.write("\n")
    module.atomic_move(temporary, path)


def remove_quietly(*paths: str) -> None:
    for path in paths:
        with suppress(FileNotFoundError):
            os.unlink(path)


@contextmanager
def private_files():
    """Create files readable by their owner only; atomic_move applies the umask too."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def run_dump(
    module: AnsibleModule, pg_dump: str, temporary: str, snapshot: str, env: dict[str, str]
) -> None:
    # --no-password: a missing password must fail rather than wait for a prompt.
    argv = [
        pg_dump,
        "--format=custom",
        f"--file={temporary}",
        "--no-password",
        f"--snapshot={snapshot}",
    ]
    rc, stdout, stderr = module.run_command(argv, environ_update=env)
    if rc != 0:
        database = env["PGDATABASE"]
        module.fail_json(
            msg=f"pg_dump of database '{database}' failed: {stderr.strip()}",
            rc=rc,
            stdout=stdout,
            stderr=stderr,
            cmd=argv,
        )


@dataclass(frozen=True)
class Plan:
    """Where a backup goes and which clients make and check it."""

    database: str
    backup_dir: str
    stem: str
    started_at: datetime.datetime
    pg_dump: Client
    pg_restore: str

    @property
    def dest(self) -> str:
        return os.path.join(self.backup_dir, f"{self.stem}.dump")

    @property
    def manifest(self) -> str:
        return os.path.join(self.backup_dir, f"{self.stem}.manifest.json")

    def paths(self) -> dict[str, str]:
        return {"dest": self.dest, "manifest": self.manifest}


@dataclass(frozen=True)
class Dump:
    temporary: str
    schema_version: int | None
    tables: dict[str, int]


def plan_backup(module: AnsibleModule, database: str, backup_dir: str) -> Plan:
    started_at = datetime.datetime.now(datetime.UTC)
    plan = Plan(
        database=database,
        backup_dir=backup_dir,
        stem=backup_stem(database, started_at),
        started_at=started_at,
        pg_dump=client_version(
            module, find_client(module, "pg_dump", module.params["pg_dump_path"])
        ),
        pg_restore=find_client(module, "pg_restore", module.params["pg_restore_path"]),
    )

    # Never replace an earlier backup, even one made in the same second.
    if os.path.exists(plan.dest) or os.path.exists(plan.manifest):
        module.fail_json(msg=f"backup file '{plan.dest}' already exists", **plan.paths())
    return plan


def check_server(module: AnsibleModule, conn: Any, plan: Plan) -> dict[str, str]:
    """Refuse a pg_dump older than the server: it would fail or miss newer objects."""
    version_text, version_num = server_version(conn)
    versions = {"server_version": version_text, "pg_dump_version": plan.pg_dump.version}
    server_major = version_num // 10000
    if plan.pg_dump.major < server_major:
        module.fail_json(
            msg=f"pg_dump {plan.pg_dump.version} ({plan.pg_dump.path}) is older than server "
            f"{version_text}; point pg_dump_path at a client of major {server_major} or newer",
            **plan.paths(),
            **versions,
        )
    return versions


def dump_database(module: AnsibleModule, conn: Any, plan: Plan) -> Dump:
    # Counts and dump share one snapshot, so the manifest matches the file.
    snapshot = export_snapshot(conn)
    schema_version = applied_version(conn)
    tables = row_counts(conn)

    fd, temporary = tempfile.mkstemp(
        dir=plan.backup_dir, prefix=f".{plan.stem}.", suffix=".partial"
    )
    os.close(fd)
    module.add_cleanup_file(temporary)

    env = libpq_environment(module.params, plan.database)
    run_dump(module, plan.pg_dump.path, temporary, snapshot, env)
    return Dump(temporary, schema_version, tables)


def verify_in_place(
    module: AnsibleModule, plan: Plan, sha256: str, tables: list[str]
) -> Verification:
    """Verify the dump under its final name; a dump that fails is removed."""
    verification = verify_dump(module.run_command, plan.pg_restore, plan.dest, sha256, tables)
    if not verification.ok:
        remove_quietly(plan.dest, plan.manifest)
        module.fail_json(
            msg=f"verification of the dump of database '{plan.database}' failed: "
            + "; ".join(verification.problems),
            verification=asdict(verification),
            **plan.paths(),
        )
    return verification


def main() -> None:
    argument_spec = pg_argument_spec()
    argument_spec.update(
        database=dict(type="str", required=True),
        backup_dir=dict(type="path", required=True),
        app_release=dict(type="str"),
        expected_tables=dict(type="list", elements="str", default=[]),
        pg_dump_path=dict(type="path"),
        pg_restore_path=dict(type="path"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)

    database = module.params["database"]
    backup_dir = module.params["backup_dir"]
    app_release = module.params["app_release"]
    expected_tables = module.params["expected_tables"]

    if not database:
        module.fail_json(msg="database must not be empty")
    if problem := backup_dir_problem(backup_dir):
        module.fail_json(msg=f"cannot back up database '{database}': {problem}")
    ensure_psycopg(module)

    with private_files():
        try:
            back_up(module, database, backup_dir, app_release, expected_tables)
        except DatabaseError as error:
            module.fail_json(msg=f"backup of database '{database}' failed: {error_text(error)}")
        finally:
            module.do_cleanup_files()


def back_up(
    module: AnsibleModule,
    database: str,
    backup_dir: str,
    app_release: str | None,
    expected_tables: list[str],
) -> None:
    started = time.monotonic()
    plan = plan_backup(module, database, backup_dir)

    # Connecting is itself a check: an unreachable database fails here, before any file.
    with connect(module, dbname=database, application_name=APPLICATION_NAME) as conn:
        versions = check_server(module, conn, plan)

        if module.check_mode:
            module.exit_json(
                changed=True,
                elapsed=round(time.monotonic() - started, 3),
                **plan.paths(),
                **versions,
            )

        # The snapshot lives as long as this transaction, so pg_dump runs inside it.
        dump = dump_database(module, conn, plan)

    # Only a complete dump gets the final name.
    sha256 = sha256_of(dump.temporary)
    size = os.path.getsize(dump.temporary)
    module.atomic_move(dump.temporary, plan.dest)
    # Counted tables are named in full, so a dot inside a name is not read as a schema.
    counted = [f"public.{table}" for table in dump.tables]
    verification = verify_in_place(module, plan, sha256, [*counted, *expected_tables])

    # The manifest comes last: its presence means the dump is whole and verified.
    manifest = {
        "file": os.path.basename(plan.dest),
        "size": size,
        "sha256": sha256,
        "database": database,
        **versions,
        "started_at": iso_utc(plan.started_at),
        "finished_at": iso_utc(datetime.datetime.now(datetime.UTC)),
        "app_release": app_release,
        "schema_version": dump.schema_version,
        "tables": dump.tables,
        "verified": True,
        "verification": asdict(verification),
    }
    try:
        write_manifest(module, plan.manifest, manifest)
    except OSError as error:
        remove_quietly(plan.dest, plan.manifest)
        module.fail_json(msg=f"writing manifest '{plan.manifest}' failed: {error}")

    module.exit_json(
        changed=True,
        size=size,
        sha256=sha256,
        tables=dump.tables,
        schema_version=dump.schema_version,
        verified=True,
        verification=asdict(verification),
        elapsed=round(time.monotonic() - started, 3),
        **plan.paths(),
        **versions,
    )


if __name__ == "__main__":
    main()
