#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_restore
short_description: Replace a PostgreSQL database with a verified backup of M(pg_backup)
description:
  - Puts the content of a backup that M(pg_backup) wrote back in place of an existing
    database, for the database side of a rollback.
  - Refuses unless O(confirm) repeats the name of the database to replace.
  - "Before anything is created it checks that the archive's checksum is the one its
    manifest recorded, that the manifest says the backup was verified, that the local
    C(pg_restore) can read the archive (it must be of the major version of the
    C(pg_dump) that wrote it or newer), that the archive holds every table the manifest
    counted, that the server is not older than the one dumped, that every role owning
    objects in the archive exists, and that the login role may create databases."
  - The backup is restored into a new database, C(<database>_restore_<UTC time>), with
    the owner, encoding and locale of the database it replaces, as the login role and
    without C(--no-owner) or C(--no-privileges), so every object keeps its owner and
    its grants. Its row counts must be those of the manifest.
  - "Then, in a short maintenance step: the database to replace stops accepting
    connections, its sessions are ended, and in one transaction it is renamed
    C(<database>_before_restore_<UTC time>) and the new database takes its name. The
    row counts are checked again under the database's name before anyone but the
    owner may connect; then the connection limit, comment, settings and database
    privileges of the replaced database are given to the new one."
  - If anything fails before the end, the new database is dropped and the current
    database is left as it was, under its own name and accepting connections again.
  - The replaced database is kept, renamed. With O(keep_replaced), databases that
    earlier restores replaced are dropped once this restore has succeeded, the newest
    ones kept.
options:
  manifest:
    description:
      - Manifest of the backup to restore, C(<name>.manifest.json); the archive is the
        C(<name>.dump) file or C(<name>.dir) folder beside it.
    type: path
    required: true
  database:
    description:
      - Existing database to replace with the backup's content.
    type: str
    required: true
  confirm:
    description:
      - Must be the name of O(database) again, as a guard against replacing the wrong
        database.
    type: str
    required: true
  jobs:
    description:
      - Number of C(pg_restore) processes. With V(1) the restore runs in one
        transaction; above 1 it runs in parallel, which suits large directory backups.
    type: int
    default: 1
  terminate_timeout:
    description:
      - Seconds to wait for the sessions of O(database) to end during the maintenance
        step before giving up and leaving the database as it was.
    type: int
    default: 30
  keep_replaced:
    description:
      - Once the restore has succeeded, keep this many of the databases that restores of
        O(database) replaced, C(<database>_before_restore_<UTC time>), the one just
        replaced included, and drop the older ones, ordered by the time in their names.
      - A database still in use is not dropped; a warning names it.
      - By default nothing is dropped.
    type: int
  pg_restore_path:
    description:
      - Path of the C(pg_restore) program.
      - By default the newest C(/usr/lib/postgresql/<version>/bin/pg_restore), otherwise
        the first C(pg_restore) on the E(PATH).
    type: path
extends_documentation_fragment:
  - pg_connection
attributes:
  check_mode:
    support: full
    details:
      - Runs every check that comes before the restore, the checksum and the archive's
        table of contents included, and returns the names of the databases it would
        create, rename and drop, with RV(changed=true); nothing is created, renamed
        or dropped.
  diff_mode:
    support: none
    details: A database has no useful textual difference to show.
notes:
  - "The login role (O(login_user)) must be able to: connect to O(login_db) and to
    the database; create databases (C(CREATEDB)); act as the database's owner and as
    every role owning objects in the archive (membership in them), to hand objects
    back to their owners and rename the database; end the database's other sessions
    (C(pg_signal_backend), or a superuser when superusers are connected). A superuser
    has all of this. The service's own roles should not."
  - Sessions to the database end during the maintenance step; clients reconnect to
    the restored database once its privileges are back, a few seconds later.
  - The renamed database takes as much room as before; drop it once the restore is
    known good, with C(DROP DATABASE), or let O(keep_replaced) drop the older ones.
  - Taking a safety backup first is the caller's part; the db_restore role does it
    with M(pg_backup).
seealso:
  - module: pg_backup
  - module: pg_backup_retention
  - name: pg_restore
    description: Reference of the PostgreSQL restore program.
    link: https://www.postgresql.org/docs/current/app-pgrestore.html
author:
  - Reading history release team
"""

EXAMPLES = r"""
- name: Put the reading history back as it was before the release
  pg_restore:
    manifest: /var/backups/reading-history/reading_history_20250102T030405Z.manifest.json
    database: reading_history
    confirm: reading_history
    login_unix_socket: /var/run/postgresql
    login_user: postgres
    # The database replaced now stays; those replaced by earlier restores go.
    keep_replaced: 1
  become: true
  become_user: postgres
  register: restored

- name: Say where the replaced data went
  ansible.builtin.debug:
    msg: "restored; the previous data is in {{ restored.previous_database }}"

- name: Check a restore would go through, changing nothing
  pg_restore:
    manifest: /var/backups/reading-history/reading_history_20250102T030405Z.manifest.json
    database: reading_history
    confirm: reading_history
    login_host: reading-history.prod.db.example.net
    login_user: admin
    login_password: "{{ vault_db_admin_password }}"
  check_mode: true
"""

RETURN = r"""
database:
  description: Name of the database that was replaced, and now holds the backup.
  returned: always
  type: str
  sample: reading_history
archive:
  description: Path of the archive restored.
  returned: always
  type: str
  sample: /var/backups/reading-history/reading_history_20250102T030405Z.dump
restore_database:
  description: Name the new database had until it took the database's name.
  returned: when the checks passed
  type: str
  sample: reading_history_restore_20250103101500
previous_database:
  description: Name the replaced database now has, or would have in check mode.
  returned: when the checks passed
  type: str
  sample: reading_history_before_restore_20250103101500
dropped_databases:
  description:
    - Databases replaced by earlier restores that were dropped, or would be in check
      mode, because of O(keep_replaced).
  returned: when the checks passed
  type: list
  elements: str
  sample: [reading_history_before_restore_20241220093000]
tables:
  description: Row count of every table of the restored database, as checked after the swap.
  returned: changed and not in check mode
  type: dict
  sample: {"reading_history": 120000, "schema_migrations": 2}
verification:
  description: What was checked before and after the swap.
  returned: changed and not in check mode
  type: dict
  sample:
    checksum_matches: true
    toc_entries: 42
    counts_before_swap: true
    counts_after_swap: true
terminated_sessions:
  description: Number of sessions of the database ended during the maintenance step.
  returned: changed and not in check mode
  type: int
  sample: 4
schema_version:
  description: Schema version of the backup, as its manifest recorded it.
  returned: always
  type: int
  sample: 2
app_release:
  description: Release of the app when the backup was taken, as its manifest recorded it.
  returned: always
  type: str
  sample: 1.4.0-0123456789ab
pg_restore_version:
  description: Version of the C(pg_restore) used.
  returned: when the checks passed
  type: str
  sample: "15.8"
archive_pg_dump_version:
  description: Version of the C(pg_dump) that wrote the archive, from its header.
  returned: when the checks passed
  type: str
  sample: "15.8 (Debian 15.8-0+deb12u1)"
durations:
  description: Seconds spent in the checks, the restore and the maintenance step.
  returned: changed and not in check mode
  type: dict
  sample: {"checks": 0.4, "restore": 12.5, "maintenance": 0.3}
elapsed:
  description: Seconds from the first check to the end.
  returned: always
  type: float
  sample: 14.1
"""

import datetime
import time
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pg_archive import (
    ManifestError,
    archive_path,
    checksum_problems,
    count_problems,
    major_of,
    missing_from_toc,
    parse_toc,
    parse_toc_header,
    qualified,
    read_manifest,
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
    DatabaseProperties,
    client_version,
    connect_with,
    copy_database_privileges,
    copy_database_settings,
    create_database,
    database_exists,
    database_properties,
    drop_database,
    find_client,
    first_error,
    name_stamp,
    restore_argv,
    role_may_create_databases,
    row_counts,
    server_version,
    timestamped_name,
    timestamped_names,
)

try:
    from psycopg import sql
except ImportError:
    # pg_connection.ensure_psycopg reports the missing library.
    sql = None

APPLICATION_NAME = "ansible-pg_restore"
POLL_SECONDS = 0.2
REPLACED_LABEL = "before_restore"


class RestoreFailed(Exception):
    """A step of the restore that went wrong; the current database is put back."""


@dataclass
class Archive:
    """The backup to restore, as read and checked from disk."""

    manifest_path: str
    manifest: dict[str, Any]
    path: str
    pg_restore: Client
    dumped_by: str
    toc_entries: int
    owners: list[str]


@dataclass
class Swap:
    """How far the maintenance step got, so a failure can be undone exactly."""

    database: str
    new: str
    old: str
    created: bool = False
    closed: bool = False
    swapped: bool = False
    done: bool = False
    terminated: set[int] = field(default_factory=set)


class RestoreModule:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params = module.params
        self.database = self.params["database"]
        self.started = time.monotonic()
        self.durations: dict[str, float] = {}

    # Reporting ---------------------------------------------------------------

    def fail(self, problem: str, **extra: Any) -> None:
        self.module.fail_json(
            msg=f"restore of database '{self.database}' refused or failed: {problem}", **extra
        )

    def lap(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.durations[name] = round(now - since, 3)
        return now

    # Checks on disk ----------------------------------------------------------

    def read_archive(self) -> Archive:
        path = self.params["manifest"]
        try:
            manifest = read_manifest(path)
        except ManifestError as error:
            self.fail(str(error))
        if manifest["verified"] is not True:
            self.fail(f"backup '{path}' was not verified when it was taken")

        archive = archive_path(path, manifest)
        problems = checksum_problems(archive, manifest["format"], manifest)
        if problems:
            self.fail(f"archive '{archive}' does not match its manifest: " + "; ".join(problems))

        client = client_version(
            self.module, find_client(self.module, "pg_restore", self.params["pg_restore_path"])
        )
        argv = [client.path, "--list", archive]
        rc, listing, stderr = self.module.run_command(argv)
        if rc != 0:
            self.fail(
                f"pg_restore {client.version} ({client.path}) cannot read archive "
                f"'{archive}': {first_error(stderr)}",
                rc=rc,
                cmd=argv,
            )

        dumped_by = parse_toc_header(listing).get("Dumped by pg_dump version") or str(
            manifest.get("pg_dump_version") or ""
        )
        archive_major = major_of(dumped_by)
        if archive_major is None or client.major < archive_major:
            self.fail(
                f"pg_restore {client.version} ({client.path}) is older than the pg_dump "
                f"'{dumped_by}' that wrote '{archive}'; point pg_restore_path at a client of "
                f"major {archive_major} or newer"
            )

        entries = parse_toc(listing)
        tables = ["{}.{}".format(*qualified(name)) for name in manifest["tables"]]
        missing = missing_from_toc(entries, tables)
        if missing:
            self.fail(f"archive '{archive}' lacks what its manifest counted: " + "; ".join(missing))

        owners = sorted({entry.owner for entry in entries if entry.owner not in ("", "-")})
        return Archive(path, manifest, archive, client, dumped_by, len(entries), owners)

    # Checks on the server ----------------------------------------------------

    def check_server(self, conn: Any, archive: Archive, swap: Swap) -> DatabaseProperties:
        version_text, version_num = server_version(conn)
        source_major = major_of(str(archive.manifest.get("server_version") or ""))
        if source_major is not None and version_num // 10000 < source_major:
            self.fail(
                f"server {version_text} is older than server "
                f"{archive.manifest['server_version']} the backup was taken from"
            )

        target = database_properties(conn, self.database)
        if target is None:
            self.fail(
                f"database '{self.database}' does not exist; this module replaces an "
                "existing database, whose owner and privileges the restored one takes"
            )
        for name in (swap.new, swap.old):
            if database_exists(conn, name):
                self.fail(f"database '{name}' already exists")

        if not role_may_create_databases(conn):
            self.fail(f"role '{self.params['login_user']}' may not create databases (CREATEDB)")
        missing = [
            owner
            for owner in archive.owners
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [owner]).fetchone()
            is None
        ]
        if missing:
            self.fail(
                f"objects in '{archive.path}' are owned by roles this server lacks: "
                + ", ".join(missing)
            )
        return target

    # The restore -------------------------------------------------------------

    def count(self, dbname: str, purpose: str) -> tuple[int, dict[str, int]]:
        with connect_with(self.module, self.params, dbname, APPLICATION_NAME, purpose) as conn:
            oid = conn.execute(
                "SELECT oid FROM pg_database WHERE datname = current_database()"
            ).fetchone()[0]
            return oid, row_counts(conn)

    def restore_into(self, archive: Archive, swap: Swap) -> int:
        argv = restore_argv(
            archive.pg_restore.path, archive.path, swap.new, jobs=self.params["jobs"]
        )
        rc, _, stderr = self.module.run_command(
            argv, environ_update=libpq_environment(self.params, swap.new)
        )
        if rc != 0:
            raise RestoreFailed(
                f"pg_restore into new database '{swap.new}' failed: {first_error(stderr)}"
            )
        oid, found = self.count(swap.new, f"checking restored database '{swap.new}'")
        problems = count_problems(archive.manifest["tables"], found)
        if problems:
            raise RestoreFailed(
                f"restored database '{swap.new}' differs from the manifest: " + "; ".join(problems)
            )
        return oid

    def end_sessions(self, conn: Any, dbname: str, swap: Swap) -> None:
        """End every other session of a database, and wait until they are gone."""
        deadline = time.monotonic() + self.params["terminate_timeout"]
        while True:
            pids = [
                row[0]
                for row in conn.execute(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    [dbname],
                ).fetchall()
            ]
            if not pids:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"sessions {pids} of database '{dbname}' did not end within "
                    f"{self.params['terminate_timeout']} seconds"
                )
            for pid in pids:
                conn.execute("SELECT pg_terminate_backend(%s)", [pid])
                swap.terminated.add(pid)
            time.sleep(POLL_SECONDS)

    def allow_connections(self, conn: Any, dbname: str, allowed: bool) -> None:
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                sql.Identifier(dbname), sql.Literal(allowed)
            )
        )

    def rename_pair(self, conn: Any, first: tuple[str, str], second: tuple[str, str]) -> None:
        """Rename two databases in one transaction: both renames happen or neither."""
        with conn.transaction():
            for old_name, new_name in (first, second):
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(old_name), sql.Identifier(new_name)
                    )
                )

    def swap_in(self, conn: Any, swap: Swap) -> None:
        # New sessions are refused from here on, the login role's own included.
        self.allow_connections(conn, swap.database, False)
        swap.closed = True
        self.end_sessions(conn, swap.database, swap)
        self.rename_pair(conn, (swap.database, swap.old), (swap.new, swap.database))
        swap.swapped = True

    def swap_back(self, conn: Any, swap: Swap) -> None:
        self.end_sessions(conn, swap.database, swap)
        self.rename_pair(conn, (swap.database, swap.new), (swap.old, swap.database))
        swap.swapped = False

    def undo(self, conn: Any, swap: Swap, target: DatabaseProperties) -> list[str]:
        """Put the current database back under its name; return what could not be undone.

        Each step that succeeds is marked undone on the swap, so undoing twice is harmless.
        """
        problems = []
        if swap.swapped:
            try:
                self.swap_back(conn, swap)
            except (DatabaseError, TimeoutError) as error:
                problems.append(f"could not give the database its name back: {error_text(error)}")
                # With the names crossed, the rest would act on the wrong database.
                return problems
        if swap.closed:
            try:
                self.allow_connections(conn, swap.database, target.allow_connections)
                swap.closed = False
            except DatabaseError as error:
                problems.append(f"could not let it accept connections again: {error_text(error)}")
        if swap.created:
            try:
                drop_database(conn, swap.new)
                swap.created = False
            except DatabaseError as error:
                problems.append(f"could not drop new database '{swap.new}': {error_text(error)}")
        return problems

    def finish(self, conn: Any, swap: Swap, target: DatabaseProperties) -> None:
        """Open the restored database to the roles the replaced one admitted."""
        copy_database_settings(conn, swap.database, target)
        copy_database_privileges(conn, swap.database, target)
        if not target.allow_connections:
            self.allow_connections(conn, swap.database, False)
        # The replaced database is left as it was, but for its name.
        self.allow_connections(conn, swap.old, target.allow_connections)

    def replace(self, conn: Any, archive: Archive, swap: Swap, target: DatabaseProperties):
        """Restore, check, swap, check again and open; RestoreFailed says where it stopped."""
        moment = time.monotonic()
        create_database(conn, swap.new, target, owner=target.owner)
        swap.created = True
        restored_oid = self.restore_into(archive, swap)
        moment = self.lap("restore", moment)

        self.swap_in(conn, swap)
        oid, found = self.count(self.database, f"checking restored database '{self.database}'")
        problems = count_problems(archive.manifest["tables"], found)
        if oid != restored_oid:
            problems.insert(0, f"database '{self.database}' is not the restored one")
        if problems:
            raise RestoreFailed("after the swap, " + "; ".join(problems))
        self.finish(conn, swap, target)
        swap.done = True
        self.lap("maintenance", moment)
        return found

    # Databases replaced earlier -----------------------------------------------

    def replaced_databases(self, conn: Any) -> list[str]:
        """Databases that restores of this one replaced, newest first by their name's time."""
        names = [row[0] for row in conn.execute("SELECT datname FROM pg_database").fetchall()]
        return timestamped_names(names, self.database, REPLACED_LABEL)

    def beyond_keep(self, replaced: list[str]) -> list[str]:
        keep = self.params["keep_replaced"]
        return [] if keep is None else sorted(replaced, reverse=True)[keep:]

    def drop_replaced(self, conn: Any) -> tuple[list[str], list[str]]:
        """Drop the replaced databases beyond keep_replaced; return those dropped and warnings.

        A session still open in one means someone is looking at it: it stays.
        """
        dropped, warnings = [], []
        for name in self.beyond_keep(self.replaced_databases(conn)):
            try:
                conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
                dropped.append(name)
            except DatabaseError as error:
                warnings.append(f"kept replaced database '{name}': {error_text(error)}")
        return dropped, warnings

    def run(self) -> None:
        archive = self.read_archive()
        stamp = name_stamp(datetime.datetime.now(datetime.UTC))
        swap = Swap(
            database=self.database,
            new=timestamped_name(self.database, "restore", stamp),
            old=timestamped_name(self.database, REPLACED_LABEL, stamp),
        )
        manifest = archive.manifest
        about = {
            "database": self.database,
            "archive": archive.path,
            "schema_version": manifest.get("schema_version"),
            "app_release": manifest.get("app_release"),
            "restore_database": swap.new,
            "previous_database": swap.old,
            "pg_restore_version": archive.pg_restore.version,
            "archive_pg_dump_version": archive.dumped_by,
        }

        with connect(self.module, autocommit=True, application_name=APPLICATION_NAME) as conn:
            target = self.check_server(conn, archive, swap)
            self.lap("checks", self.started)
            if self.module.check_mode:
                doomed = self.beyond_keep([*self.replaced_databases(conn), swap.old])
                self.module.exit_json(
                    changed=True,
                    msg=f"would restore '{archive.path}' into new database '{swap.new}', "
                    f"rename '{self.database}' to '{swap.old}' and '{swap.new}' to "
                    f"'{self.database}'"
                    + (f", and drop {', '.join(doomed)}" if doomed else ""),
                    dropped_databases=doomed,
                    elapsed=round(time.monotonic() - self.started, 3),
                    **about,
                )

            try:
                found = self.replace(conn, archive, swap, target)
            except (DatabaseError, TimeoutError, RestoreFailed) as error:
                leftovers = self.undo(conn, swap, target)
                outcome = (
                    f"database '{self.database}' is as it was"
                    if not leftovers
                    else "undoing it failed, see below: " + "; ".join(leftovers)
                )
                self.fail(f"{error_text(error)}; {outcome}", **about)
            finally:
                # Anything unforeseen still leaves the current database in place.
                if not swap.done and (swap.created or swap.closed):
                    self.undo(conn, swap, target)

            dropped, warnings = self.drop_replaced(conn)

        for warning in warnings:
            self.module.warn(warning)
        self.module.exit_json(
            changed=True,
            msg=f"restored '{archive.path}' into database '{self.database}'; the data it "
            f"replaced is in database '{swap.old}'",
            tables=found,
            verification={
                "checksum_matches": True,
                "toc_entries": archive.toc_entries,
                "counts_before_swap": True,
                "counts_after_swap": True,
            },
            terminated_sessions=len(swap.terminated),
            dropped_databases=dropped,
            durations=self.durations,
            elapsed=round(time.monotonic() - self.started, 3),
            **about,
        )


def main() -> None:
    argument_spec = pg_argument_spec()
    argument_spec.update(
        manifest=dict(type="path", required=True),
        database=dict(type="str", required=True),
        confirm=dict(type="str", required=True),
        jobs=dict(type="int", default=1),
        terminate_timeout=dict(type="int", default=30),
        keep_replaced=dict(type="int"),
        pg_restore_path=dict(type="path"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    database = module.params["database"]

    if not database:
        module.fail_json(msg="database must not be empty")
    if module.params["confirm"] != database:
        module.fail_json(
            msg=f"refusing to replace database '{database}': confirm must be '{database}', "
            f"not '{module.params['confirm']}'"
        )
    if module.params["login_db"] == database:
        module.fail_json(
            msg=f"login_db must be another database than '{database}', such as postgres: "
            "a database cannot be renamed while the restore is connected to it"
        )
    if module.params["jobs"] < 1:
        module.fail_json(msg=f"jobs must be 1 or more, not {module.params['jobs']}")
    keep_replaced = module.params["keep_replaced"]
    if keep_replaced is not None and keep_replaced < 1:
        module.fail_json(
            msg=f"keep_replaced must be 1 or more, not {keep_replaced}: the database this "
            "restore replaces is the way back from it"
        )
    ensure_psycopg(module)

    restore = RestoreModule(module)
    try:
        restore.run()
    except DatabaseError as error:
        restore.fail(error_text(error))


if __name__ == "__main__":
    main()
