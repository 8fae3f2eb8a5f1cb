#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_backup
short_description: Dump a PostgreSQL database to a verified, checksummed backup
description:
  - Dumps one database with C(pg_dump) into O(backup_dir), under the name
    C(<database>_<UTC time>), for example C(reading_history_20250102T030405Z.dump).
  - O(format=custom) writes one file, C(<name>.dump); O(format=directory) writes a
    folder, C(<name>.dir), with one file per table, dumped by O(jobs) processes at once.
  - The dump is written under a temporary name in the same folder and moved into place
    only when C(pg_dump) succeeded, so a partial dump never carries the final name.
  - "Before anything is written the module checks, and fails naming the problem, that
    the folder exists and is writable, that the database answers, that C(pg_dump) is
    not of an older major version than the server (and C(pg_restore) not older than
    C(pg_dump)), that the folder has room for the database's size times
    O(space_factor), and, for the test restore, that the role may create databases."
  - "The finished dump is verified before it counts: its checksum is read again from
    disk, C(pg_restore --list) must show a table definition and table data for every
    table counted and every table in O(expected_tables), and with O(verify_restore)
    the dump is restored into a scratch database made for the purpose, whose tables
    and row counts must be those of the manifest. The scratch database is dropped
    afterwards, whether the restore passed or not. A dump that fails verification is
    removed and the task fails."
  - A manifest, C(<name>.manifest.json), is written beside the dump last, so a dump
    without one is not a backup. It holds the format, size and SHA-256 of the dump
    (and of each of its files), the database, the server and C(pg_dump) versions, the
    start and end times, the release and schema version, the exact row count of every
    table and what the verification checked and found.
  - "The SHA-256 of a directory dump is that of the lines C(sha256sum) prints for its
    files, C(<SHA-256>  <name>) and a newline each, in the byte order of the names;
    inside the folder, C(find . -maxdepth 1 -type f -printf '%P\\0' | LC_ALL=C sort -z
    | xargs -0 sha256sum | sha256sum) prints it."
  - Row counts and the dump come from one exported snapshot, so the manifest describes
    exactly the data in the dump.
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
  format:
    description:
      - Format of the dump, as C(pg_dump --format) names them.
      - V(custom) is one compressed file; V(directory) is a folder that O(jobs)
        processes dump and restore in parallel.
    type: str
    choices: [custom, directory]
    default: custom
  jobs:
    description:
      - Number of tables dumped at once, and restored at once by the test restore.
      - Above 1 only with O(format=directory).
    type: int
    default: 1
  verify_restore:
    description:
      - Whether to restore the dump into a scratch database and compare its tables and
        row counts with the manifest before the backup counts.
      - It takes about as long as restoring the database, and needs a role that may
        create databases (see O(maintenance_user)).
      - Without it the dump is verified by its checksum and table of contents only,
        which do not notice a dump cut short or damaged inside its data.
    type: bool
    default: true
  maintenance_user:
    description:
      - Role that creates, fills and drops the scratch database of the test restore,
        connecting to O(login_db) on the same server.
      - It must have C(CREATEDB). By default O(login_user) does it, which then needs
        C(CREATEDB) itself.
      - The scratch database is restored with C(--no-owner --no-privileges), so this
        role needs no membership in the roles that own the tables.
    type: str
  maintenance_password:
    description:
      - Password of O(maintenance_user), passed to C(pg_restore) only through
        E(PGPASSWORD).
    type: str
  space_factor:
    description:
      - Free space the backup folder must have before the dump starts, as a multiple
        of the database's size on the server (C(pg_database_size)).
      - A dump holds no indexes and no dead rows and the custom and directory formats
        are compressed, so it is nearly always smaller than the database; V(1.0) leaves
        a margin. V(0) turns the check off.
    type: float
    default: 1.0
  app_release:
    description:
      - Release of the app that owns the data, recorded in the manifest.
    type: str
  expected_tables:
    description:
      - Tables that must be in the dump, besides every table counted.
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
        would write and the scratch database it would use, with RV(changed=true);
        nothing is dumped, written or created.
  diff_mode:
    support: none
    details: A backup has no useful textual difference to show.
notes:
  - Every run writes a new backup; the module never overwrites older backups, and
    M(pg_backup_retention) prunes them.
  - The dump and the manifest are readable by their owner only, since they hold the
    service's data.
  - C(pg_dump) must be of the server's major version or newer.
  - The dump connects to O(database); O(login_db) is where the scratch database of the
    test restore is created from.
  - "Row counts cover every plain table outside the system schemas; a table of
    C(public) is named bare, one of another schema C(<schema>.<table>)."
  - The scratch database, C(<database>_verify_<UTC time>), lives on the server being
    backed up, which needs room for a second copy of the data while it exists.
seealso:
  - module: pg_backup_retention
  - module: pg_restore
  - module: pg_migrate
  - name: pg_dump
    description: Reference of the PostgreSQL dump program and its formats.
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
      - reading_history
      - schema_migrations
    login_host: db1
    login_user: reading_history_migrator
    login_password: "{{ vault_migrator_password }}"
  register: backup

- name: Keep the backup's name for a rollback
  ansible.builtin.set_fact:
    rollback_manifest: "{{ backup.manifest }}"
    rollback_schema_version: "{{ backup.schema_version }}"

- name: Dump a large database with four processes, test-restored by an admin role
  pg_backup:
    database: reading_history
    backup_dir: /var/backups/reading-history
    format: directory
    jobs: 4
    login_host: db1
    login_user: reading_history_migrator
    login_password: "{{ vault_migrator_password }}"
    maintenance_user: backup_admin
    maintenance_password: "{{ vault_backup_admin_password }}"
  register: big_backup

- name: See where a backup would go without making one
  pg_backup:
    database: reading_history
    backup_dir: /var/backups/reading-history
  check_mode: true
"""

RETURN = r"""
dest:
  description: Path of the dump (file or folder), or of the dump it would write in check mode.
  returned: always
  type: str
  sample: /var/backups/reading-history/reading_history_20250102T030405Z.dump
manifest:
  description: Path of the manifest beside the dump.
  returned: always
  type: str
  sample: /var/backups/reading-history/reading_history_20250102T030405Z.manifest.json
format:
  description: Format of the dump.
  returned: always
  type: str
  sample: custom
size:
  description: Size of the dump in bytes, all its files together.
  returned: changed and not in check mode
  type: int
  sample: 1048576
sha256:
  description:
    - SHA-256 of the dump, in hexadecimal; for a directory dump, of the listing of
      its files' SHA-256 described above.
  returned: changed and not in check mode
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
files:
  description:
    - Each file of the dump by its name (inside the folder for a directory dump), with
      its size and SHA-256, as the manifest records them.
  returned: changed and not in check mode
  type: dict
  sample: {"reading_history_20250102T030405Z.dump": {"size": 1048576, "sha256": "9f86d0..."}}
elapsed:
  description: Seconds from the first check to the written manifest.
  returned: always
  type: float
  sample: 4.2
durations:
  description: Seconds spent checking, dumping, hashing and verifying.
  returned: changed and not in check mode
  type: dict
  sample: {"checks": 0.1, "dump": 3.2, "checksum": 0.2, "verification": 0.7}
tables:
  description: Exact row count of every table, as dumped.
  returned: changed and not in check mode
  type: dict
  sample: {"reading_history": 120000, "schema_migrations": 7}
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
  description: What the verification checked and found.
  returned: changed and not in check mode
  type: dict
  sample:
    checks: [checksum, table_of_contents, test_restore]
    checksum_matches: true
    toc_entries: 42
    tables_checked: [public.reading_history]
    restore: {"database": "reading_history_verify_20250102030405", "tables": 4, "rows": 120011,
              "dropped": true, "seconds": 2.5}
    problems: []
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
database_size:
  description: Size of the database on the server, in bytes, as the space check read it.
  returned: always
  type: int
  sample: 8912896
free_space:
  description: Free bytes in O(backup_dir) before the dump.
  returned: always
  type: int
  sample: 53687091200
scratch_database:
  description: Scratch database of the test restore; null without O(verify_restore).
  returned: always
  type: str
  sample: reading_history_verify_20250102030405
"""

import datetime
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pg_archive import (
    FORMATS,
    MANIFEST_VERSION,
    archive_name,
    backup_stem,
    count_problems,
    digest_of,
    iso_utc,
    manifest_name,
    missing_from_toc,
    parse_toc,
    parse_toc_header,
    parse_toc_line,
    qualified,
    remove_path,
    sha256_of,
)
from ansible.module_utils.pg_connection import (
    DatabaseError,
    connect,
    ensure_psycopg,
    error_text,
    libpq_environment,
    pg_argument_spec,
)
from ansible.module_utils.pg_dump_tools import (
    Client,
    client_version,
    connect_with,
    create_database,
    database_exists,
    database_properties,
    drop_database,
    find_client,
    first_error,
    login_params,
    name_stamp,
    newest_packaged_client,
    restore_argv,
    role_may_create_databases,
    row_counts,
    server_version,
    timestamped_name,
)
from ansible.module_utils.schema_history import applied_version

try:
    import psycopg
except ImportError:
    # pg_connection.ensure_psycopg reports the missing library.
    psycopg = None

APPLICATION_NAME = "ansible-pg_backup"

# Names the tests and other callers import from this module.
__all__ = [
    "backup_stem",
    "missing_from_toc",
    "newest_packaged_client",
    "parse_toc",
    "parse_toc_line",
    "verify_dump",
]

Runner = Callable[[list[str]], tuple[int, str, str]]


@dataclass
class Verification:
    checks: list[str] = field(default_factory=list)
    checksum_matches: bool = False
    toc_entries: int = 0
    archive_version: str | None = None
    tables_checked: list[str] = field(default_factory=list)
    restore: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_dump(
    run: Runner,
    pg_restore: str,
    path: str,
    expected_sha256: str,
    tables: list[str],
    archive_format: str = "custom",
) -> Verification:
    """Check a finished dump against its checksum and its table of contents."""
    verification = Verification(checks=["checksum", "table_of_contents"])

    # Read the dump again: what is on disk is what a restore will get.
    try:
        digest = digest_of(path, archive_format) if archive_format == "directory" else None
        actual = digest.sha256 if digest else sha256_of(path)
    except OSError as error:
        verification.problems.append(f"cannot read the dump again: {error}")
        return verification
    verification.checksum_matches = actual == expected_sha256
    if not verification.checksum_matches:
        verification.problems.append("checksum of the dump on disk differs from the one taken")

    rc, stdout, stderr = run([pg_restore, "--list", path])
    if rc != 0:
        verification.problems.append(f"pg_restore --list failed: {stderr.strip()}")
        return verification

    entries = parse_toc(stdout)
    verification.toc_entries = len(entries)
    verification.archive_version = parse_toc_header(stdout).get("Dump Version")
    verification.tables_checked = sorted("{}.{}".format(*qualified(t)) for t in set(tables))
    verification.problems.extend(missing_from_toc(entries, sorted(set(tables))))
    return verification


def backup_dir_problem(backup_dir: str) -> str | None:
    if not os.path.isdir(backup_dir):
        return f"backup_dir '{backup_dir}' does not exist or is not a folder"
    if not os.access(backup_dir, os.W_OK | os.X_OK):
        return f"backup_dir '{backup_dir}' is not writable"
    return None


def free_space(folder: str) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def database_size(conn: Any) -> int:
    return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def export_snapshot(conn: Any) -> str:
    """Start a read-only repeatable-read transaction and share its snapshot with pg_dump."""
    # The checks ran in a transaction of their own; the snapshot needs a fresh one.
    conn.commit()
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    return conn.execute("SELECT pg_export_snapshot()").fetchone()[0]


def fsync_folder(folder: str) -> None:
    """Make a rename or a new file in a folder survive a crash."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_manifest(module: AnsibleModule, path: str, manifest: dict[str, Any]) -> None:
    """Write the manifest under a temporary name and move it into place in one step."""
    fd, temporary = tempfile.mkstemp(
        dir=os.path.dirname(path), prefix=".manifest.", suffix=".partial"
    )
    module.add_cleanup_file(temporary)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        json.dump(manifest, stream, indent=2, sort_keys=True)
        stream.write("\n")
        stream.flush()
        os.fsync(stream.fileno())
    module.atomic_move(temporary, path)
    fsync_folder(os.path.dirname(path))


@contextmanager
def private_files():
    """Create files readable by their owner only; atomic_move applies the umask too."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


@contextmanager
def temporaries() -> Iterator[list[str]]:
    """Collect paths to remove whatever happens, files and folders alike."""
    paths: list[str] = []
    try:
        yield paths
    finally:
        for path in paths:
            try:
                remove_path(path)
            except OSError:
                pass


@dataclass(frozen=True)
class Options:
    database: str
    backup_dir: str
    archive_format: str
    jobs: int
    verify_restore: bool
    space_factor: float
    app_release: str | None
    expected_tables: list[str]

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Options:
        return cls(
            database=params["database"],
            backup_dir=params["backup_dir"],
            archive_format=params["format"],
            jobs=params["jobs"],
            verify_restore=params["verify_restore"],
            space_factor=params["space_factor"],
            app_release=params["app_release"],
            expected_tables=params["expected_tables"],
        )


@dataclass(frozen=True)
class Plan:
    """Where a backup goes and which clients make and check it."""

    options: Options
    stem: str
    started_at: datetime.datetime
    pg_dump: Client
    pg_restore: Client

    @property
    def database(self) -> str:
        return self.options.database

    @property
    def dest(self) -> str:
        return os.path.join(
            self.options.backup_dir, archive_name(self.stem, self.options.archive_format)
        )

    @property
    def manifest(self) -> str:
        return os.path.join(self.options.backup_dir, manifest_name(self.stem))

    @property
    def scratch(self) -> str | None:
        if not self.options.verify_restore:
            return None
        return timestamped_name(self.database, "verify", name_stamp(self.started_at))

    def paths(self) -> dict[str, Any]:
        return {
            "dest": self.dest,
            "manifest": self.manifest,
            "format": self.options.archive_format,
            "scratch_database": self.scratch,
        }


@dataclass(frozen=True)
class Dump:
    temporary: str
    schema_version: int | None
    tables: dict[str, int]


def plan_backup(module: AnsibleModule, options: Options) -> Plan:
    started_at = datetime.datetime.now(datetime.UTC)
    params = module.params
    pg_restore = find_client(module, "pg_restore", params["pg_restore_path"])
    plan = Plan(
        options=options,
        stem=backup_stem(options.database, started_at),
        started_at=started_at,
        pg_dump=client_version(module, find_client(module, "pg_dump", params["pg_dump_path"])),
        pg_restore=client_version(module, pg_restore),
    )

    # Never replace an earlier backup, even one made in the same second.
    for path in (plan.dest, plan.manifest):
        if os.path.lexists(path):
            module.fail_json(msg=f"backup '{path}' already exists", **plan.paths())
    return plan


def check_server(module: AnsibleModule, conn: Any, plan: Plan) -> dict[str, str]:
    """Refuse a pg_dump older than the server, and a pg_restore that cannot read its dump."""
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
    if plan.pg_restore.major < plan.pg_dump.major:
        module.fail_json(
            msg=f"pg_restore {plan.pg_restore.version} ({plan.pg_restore.path}) cannot verify "
            f"a dump of pg_dump {plan.pg_dump.version}; point pg_restore_path at a client of "
            f"major {plan.pg_dump.major} or newer",
            **plan.paths(),
            **versions,
        )
    return versions


def check_space(module: AnsibleModule, conn: Any, plan: Plan) -> dict[str, int]:
    """Refuse to start a dump the backup folder has no room for."""
    size = database_size(conn)
    available = free_space(plan.options.backup_dir)
    needed = int(size * plan.options.space_factor)
    space = {"database_size": size, "free_space": available}
    if available < needed:
        module.fail_json(
            msg=f"not enough free space in '{plan.options.backup_dir}' to back up database "
            f"'{plan.database}': {available} bytes free, {needed} needed (database size "
            f"{size} bytes x space_factor {plan.options.space_factor})",
            **plan.paths(),
            **space,
        )
    return space


def maintenance_params(module: AnsibleModule) -> dict[str, Any]:
    params = module.params
    return login_params(params, params["maintenance_user"], params["maintenance_password"])


def check_scratch_role(module: AnsibleModule, plan: Plan) -> None:
    """Make sure the test restore will be able to make its scratch database."""
    params = maintenance_params(module)
    purpose = f"test restore of database '{plan.database}'"
    with connect_with(module, params, params["login_db"], APPLICATION_NAME, purpose) as conn:
        if not role_may_create_databases(conn):
            module.fail_json(
                msg=f"{purpose}: role '{params['login_user']}' may not create the scratch "
                "database; give it CREATEDB, name a role that has it in maintenance_user, "
                "or set verify_restore to false",
                **plan.paths(),
            )
        if database_exists(conn, plan.scratch):
            module.fail_json(
                msg=f"{purpose}: scratch database '{plan.scratch}' already exists",
                **plan.paths(),
            )


def run_dump(
    module: AnsibleModule, plan: Plan, temporary: str, snapshot: str, env: dict[str, str]
) -> None:
    # --no-password: a missing password must fail rather than wait for a prompt.
    argv = [
        plan.pg_dump.path,
        f"--format={plan.options.archive_format}",
        f"--file={temporary}",
        "--no-password",
        f"--snapshot={snapshot}",
    ]
    if plan.options.archive_format == "directory":
        argv.append(f"--jobs={plan.options.jobs}")
    rc, stdout, stderr = module.run_command(argv, environ_update=env)
    if rc != 0:
        module.fail_json(
            msg=f"pg_dump of database '{plan.database}' failed: {stderr.strip()}",
            rc=rc,
            stdout=stdout,
            stderr=stderr,
            cmd=argv,
            **plan.paths(),
        )


def dump_database(module: AnsibleModule, conn: Any, plan: Plan, cleanup: list[str]) -> Dump:
    # Counts and dump share one snapshot, so the manifest matches the file.
    snapshot = export_snapshot(conn)
    schema_version = applied_version(conn)
    tables = row_counts(conn)

    prefix, suffix = f".{plan.stem}.", ".partial"
    if plan.options.archive_format == "directory":
        # pg_dump fills an empty folder it is given.
        temporary = tempfile.mkdtemp(dir=plan.options.backup_dir, prefix=prefix, suffix=suffix)
    else:
        fd, temporary = tempfile.mkstemp(dir=plan.options.backup_dir, prefix=prefix, suffix=suffix)
        os.close(fd)
    cleanup.append(temporary)

    env = libpq_environment(module.params, plan.database)
    run_dump(module, plan, temporary, snapshot, env)
    return Dump(temporary, schema_version, tables)


def test_restore(
    module: AnsibleModule, plan: Plan, expected: dict[str, int], verification: Verification
) -> None:
    """Restore the dump into a scratch database and compare what arrived with the manifest.

    The scratch database is dropped afterwards, whether the restore passed or failed.
    """
    params = maintenance_params(module)
    purpose = f"test restore of '{plan.dest}'"
    started = time.monotonic()
    verification.checks.append("test_restore")
    outcome: dict[str, Any] = {"database": plan.scratch, "tables": 0, "rows": 0, "dropped": False}
    verification.restore = outcome

    with connect_with(module, params, params["login_db"], APPLICATION_NAME, purpose) as admin:
        created = False
        try:
            source = database_properties(admin, plan.database)
            create_database(admin, plan.scratch, source, owner=None)
            created = True

            # One transaction for a custom dump; several jobs for a directory dump.
            argv = restore_argv(
                plan.pg_restore.path,
                plan.dest,
                plan.scratch,
                jobs=plan.options.jobs,
                keep_owners=False,
            )
            rc, _, stderr = module.run_command(
                argv, environ_update=libpq_environment(params, plan.scratch)
            )
            if rc != 0:
                verification.problems.append(
                    f"test restore into '{plan.scratch}' failed: {first_error(stderr)}"
                )
                return

            with connect_with(module, params, plan.scratch, APPLICATION_NAME, purpose) as scratch:
                found = row_counts(scratch)
            outcome["tables"] = len(found)
            outcome["rows"] = sum(found.values())
            verification.problems.extend(
                f"test restore: {problem}" for problem in count_problems(expected, found)
            )
        except DatabaseError as error:
            verification.problems.append(
                f"test restore into '{plan.scratch}' failed: {error_text(error)}"
            )
        finally:
            if created:
                drop_database(admin, plan.scratch)
                outcome["dropped"] = True
            outcome["seconds"] = round(time.monotonic() - started, 3)


def main() -> None:
    argument_spec = pg_argument_spec()
    argument_spec.update(
        database=dict(type="str", required=True),
        backup_dir=dict(type="path", required=True),
        format=dict(type="str", choices=FORMATS, default="custom"),
        jobs=dict(type="int", default=1),
        verify_restore=dict(type="bool", default=True),
        maintenance_user=dict(type="str"),
        maintenance_password=dict(type="str", no_log=True),
        space_factor=dict(type="float", default=1.0),
        app_release=dict(type="str"),
        expected_tables=dict(type="list", elements="str", default=[]),
        pg_dump_path=dict(type="path"),
        pg_restore_path=dict(type="path"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    options = Options.from_params(module.params)

    if not options.database:
        module.fail_json(msg="database must not be empty")
    if options.jobs < 1:
        module.fail_json(msg=f"jobs must be 1 or more, not {options.jobs}")
    if options.jobs > 1 and options.archive_format != "directory":
        module.fail_json(
            msg=f"jobs={options.jobs} needs format=directory: a custom dump is written by "
            "one process"
        )
    if options.space_factor < 0:
        module.fail_json(msg=f"space_factor must be 0 or more, not {options.space_factor}")
    if problem := backup_dir_problem(options.backup_dir):
        module.fail_json(msg=f"cannot back up database '{options.database}': {problem}")
    ensure_psycopg(module)

    with private_files(), temporaries() as cleanup:
        try:
            back_up(module, options, cleanup)
        except DatabaseError as error:
            module.fail_json(
                msg=f"backup of database '{options.database}' failed: {error_text(error)}"
            )
        finally:
            module.do_cleanup_files()


def back_up(module: AnsibleModule, options: Options, cleanup: list[str]) -> None:
    started = time.monotonic()
    durations: dict[str, float] = {}
    plan = plan_backup(module, options)

    # Connecting is itself a check: an unreachable database fails here, before any file.
    with connect(module, dbname=options.database, application_name=APPLICATION_NAME) as conn:
        versions = check_server(module, conn, plan)
        space = check_space(module, conn, plan)
        if options.verify_restore:
            check_scratch_role(module, plan)
        durations["checks"] = round(time.monotonic() - started, 3)

        if module.check_mode:
            checks = "checksum, table of contents" + (
                f" and a test restore into '{plan.scratch}'" if options.verify_restore else ""
            )
            module.exit_json(
                changed=True,
                msg=f"would dump database '{options.database}' ({space['database_size']} "
                f"bytes on the server) into '{plan.dest}' and verify it by {checks}",
                elapsed=round(time.monotonic() - started, 3),
                **plan.paths(),
                **versions,
                **space,
            )

        # The snapshot lives as long as this transaction, so pg_dump runs inside it.
        moment = time.monotonic()
        dump = dump_database(module, conn, plan, cleanup)
        durations["dump"] = round(time.monotonic() - moment, 3)

    # Only a complete dump gets the final name.
    moment = time.monotonic()
    digest = digest_of(dump.temporary, options.archive_format)
    durations["checksum"] = round(time.monotonic() - moment, 3)
    if options.archive_format == "directory":
        os.rename(dump.temporary, plan.dest)
    else:
        module.atomic_move(dump.temporary, plan.dest)
    fsync_folder(options.backup_dir)
    # The names of the files inside the archive, not the temporary's.
    files = digest.files
    if options.archive_format == "custom":
        files = {os.path.basename(plan.dest): files[os.path.basename(dump.temporary)]}

    committed = False
    try:
        moment = time.monotonic()
        # Counted tables are named in full, so a dot inside a name is not read as a schema.
        counted = ["{}.{}".format(*qualified(table)) for table in dump.tables]
        verification = verify_dump(
            module.run_command,
            plan.pg_restore.path,
            plan.dest,
            digest.sha256,
            [*counted, *options.expected_tables],
            options.archive_format,
        )
        if verification.ok and options.verify_restore:
            test_restore(module, plan, dump.tables, verification)
        durations["verification"] = round(time.monotonic() - moment, 3)
        if not verification.ok:
            module.fail_json(
                msg=f"verification of the dump of database '{options.database}' failed: "
                + "; ".join(verification.problems),
                verification=asdict(verification),
                **plan.paths(),
            )

        # The manifest comes last: its presence means the dump is whole and verified.
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "file": os.path.basename(plan.dest),
            "format": options.archive_format,
            "jobs": options.jobs,
            "size": digest.size,
            "sha256": digest.sha256,
            "files": files,
            "database": options.database,
            **versions,
            "pg_restore_version": plan.pg_restore.version,
            "archive_version": verification.archive_version,
            "started_at": iso_utc(plan.started_at),
            "finished_at": iso_utc(datetime.datetime.now(datetime.UTC)),
            "app_release": options.app_release,
            "schema_version": dump.schema_version,
            "tables": dump.tables,
            "verified": True,
            "verification": asdict(verification),
            "durations": durations,
        }
        try:
            write_manifest(module, plan.manifest, manifest)
        except OSError as error:
            module.fail_json(
                msg=f"writing manifest '{plan.manifest}' failed: {error}", **plan.paths()
            )
        committed = True
    finally:
        if not committed:
            remove_path(plan.dest)
            remove_path(plan.manifest)

    module.exit_json(
        changed=True,
        size=digest.size,
        sha256=digest.sha256,
        files=files,
        tables=dump.tables,
        schema_version=dump.schema_version,
        verified=True,
        verification=asdict(verification),
        durations=durations,
        elapsed=round(time.monotonic() - started, 3),
        **plan.paths(),
        **versions,
        **space,
    )


if __name__ == "__main__":
    main()
