# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The PostgreSQL client programs and the database work pg_backup and pg_restore share.

Finding pg_dump and pg_restore and their versions, counting every table's rows,
making and dropping the databases a restore goes into, and restoring an archive
into one of them. Only psycopg 3.1 APIs are used.
"""

from __future__ import annotations

import datetime
import glob
import os
import re
from dataclasses import dataclass
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pg_archive import table_key
from ansible.module_utils.pg_connection import (
    connection_kwargs,
    describe_server,
    error_text,
)

try:
    import psycopg
    from psycopg import sql
except ImportError:
    # pg_connection.ensure_psycopg reports the missing library.
    psycopg = None

CLIENT_ROOT = "/usr/lib/postgresql"
CLIENT_VERSION_PATTERN = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")
# Databases a restore makes must fit PostgreSQL's 63-byte identifiers.
MAX_IDENTIFIER = 63
DATABASE_PRIVILEGES = ("CONNECT", "CREATE", "TEMPORARY")
# Settings whose value is a list of names, stored as the list's text.
LIST_SETTINGS = {
    "search_path",
    "temp_tablespaces",
    "local_preload_libraries",
    "session_preload_libraries",
}

@dataclass(frozen=True)
class Client:
    path: str
    version: str
    major: int


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
    match = CLIENT_VERSION_PATTERN.search(stdout)
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


# The UTC time in the names of the databases the modules make: it sorts as it reads.
NAME_STAMP_FORMAT = "%Y%m%d%H%M%S"
NAME_STAMP_LENGTH = 14


def name_stamp(moment: datetime.datetime) -> str:
    return moment.strftime(NAME_STAMP_FORMAT)


def timestamped_name(database: str, label: str, stamp: str) -> str:
    """Name a database made for `database`: '<database>_<label>_<stamp>', at most 63 bytes."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", database)
    suffix = f"_{label}_{stamp}"
    return safe[: MAX_IDENTIFIER - len(suffix)] + suffix


def timestamped_names(names: list[str], database: str, label: str) -> list[str]:
    """Pick the names timestamped_name made for `database` and `label`, newest first."""
    sample = timestamped_name(database, label, "0" * NAME_STAMP_LENGTH)
    prefix = re.escape(sample[:-NAME_STAMP_LENGTH])
    pattern = re.compile(prefix + "[0-9]{%d}" % NAME_STAMP_LENGTH)
    return sorted((name for name in names if pattern.fullmatch(name)), reverse=True)


# Reading a database ----------------------------------------------------------


def server_version(conn: Any) -> tuple[str, int]:
    row = conn.execute(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int"
    ).fetchone()
    return row[0], row[1]


def user_tables(conn: Any) -> list[tuple[str, str]]:
    """Every plain table outside the system schemas, as (schema, name) pairs."""
    # Plain tables only: a partitioned parent has no data of its own in a dump,
    # while each of its partitions is a plain table with data.
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'r'"
        " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'"
        " ORDER BY n.nspname, c.relname"
    ).fetchall()
    return [(row[0], row[1]) for row in rows]


def row_counts(conn: Any) -> dict[str, int]:
    """Exact row count of every table, keyed as the manifest names tables."""
    counts = {}
    for schema, name in user_tables(conn):
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
        counts[table_key(schema, name)] = conn.execute(query).fetchone()[0]
    return counts


def role_may_create_databases(conn: Any) -> bool:
    row = conn.execute(
        "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    return bool(row and row[0])


def database_exists(conn: Any, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
    return row is not None


# Connections as another role -------------------------------------------------


def login_params(params: dict[str, Any], user: str | None, password: str | None) -> dict[str, Any]:
    """The module's connection options with another role's name and password."""
    if not user:
        return dict(params)
    return {**params, "login_user": user, "login_password": password or ""}


def connect_with(
    module: AnsibleModule,
    params: dict[str, Any],
    dbname: str,
    application_name: str,
    purpose: str,
    autocommit: bool = True,
) -> Any:
    """Connect with the given options; a failure names the purpose, database and role."""
    kwargs = connection_kwargs(params, dbname, application_name)
    try:
        return psycopg.connect(autocommit=autocommit, **kwargs)
    except psycopg.Error as error:
        module.fail_json(
            msg=f"{purpose}: cannot connect to database '{dbname}' on "
            f"{describe_server(params)} as '{params['login_user']}': {error_text(error)}"
        )


# Databases a restore goes into -----------------------------------------------


def drop_database(conn: Any, name: str) -> None:
    """Drop a database this module made, whoever is still connected to it."""
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def restore_argv(
    pg_restore: str,
    archive: str,
    dbname: str,
    jobs: int = 1,
    keep_owners: bool = True,
) -> list[str]:
    """pg_restore's arguments: stop at the first error, all or nothing where it can.

    With one job the archive is restored in one transaction, so a failure leaves the
    database empty. Several jobs rule out one transaction; a database whose restore
    failed is dropped by the caller anyway.
    """
    argv = [pg_restore, f"--dbname={dbname}", "--exit-on-error", "--no-password"]
    if jobs > 1:
        argv.append(f"--jobs={jobs}")
    else:
        argv.append("--single-transaction")
    if not keep_owners:
        # The database is only checked, by a role that may not own what the source
        # owners owned: objects become its own and grants are left out.
        argv += ["--no-owner", "--no-privileges"]
    argv.append(archive)
    return argv


def first_error(stderr: str) -> str:
    """The line of pg_restore's output that says what went wrong, or all of it."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return "; ".join(errors[:3] or lines[-3:])


@dataclass(frozen=True)
class DatabaseProperties:
    """What a database is besides its content: what a replacement must also have."""

    oid: int
    owner: str
    encoding: str
    collate: str
    ctype: str
    locale_provider: str | None
    icu_locale: str | None
    connection_limit: int
    allow_connections: bool
    comment: str | None
    # (grantee or None for PUBLIC, privilege, grantable), from the database's ACL;
    # None when the database has PostgreSQL's default privileges.
    privileges: list[tuple[str | None, str, bool]] | None
    # (role or None for every role, "name=value") settings stored for the database.
    settings: list[tuple[str | None, str]]


def database_properties(conn: Any, name: str) -> DatabaseProperties | None:
    """Read a database's owner, locale, limits, privileges and settings; None if absent."""
    _, version_num = server_version(conn)
    locale_columns = (
        "d.datlocprovider::text, d.daticulocale" if version_num >= 150000 else "NULL, NULL"
    )
    row = conn.execute(
        "SELECT d.oid, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding),"
        " d.datcollate, d.datctype, " + locale_columns + ","
        " d.datconnlimit, d.datallowconn, shobj_description(d.oid, 'pg_database'),"
        " d.datacl IS NULL"
        " FROM pg_database d WHERE d.datname = %s",
        [name],
    ).fetchone()
    if row is None:
        return None

    privileges = None
    if not row[10]:
        # Grantee 0 is PUBLIC.
        privileges = [
            (grantee, privilege, grantable)
            for grantee, privilege, grantable in conn.execute(
                "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,"
                " a.privilege_type, a.is_grantable"
                " FROM pg_database d, aclexplode(d.datacl) a"
                " WHERE d.datname = %s ORDER BY 1 NULLS FIRST, 2",
                [name],
            ).fetchall()
        ]
    settings = [
        (role, setting)
        for role, config in conn.execute(
            "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END,"
            " s.setconfig FROM pg_db_role_setting s"
            " JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = %s",
            [name],
        ).fetchall()
        for setting in config or []
    ]
    return DatabaseProperties(
        oid=row[0],
        owner=row[1],
        encoding=row[2],
        collate=row[3],
        ctype=row[4],
        locale_provider=row[5],
        icu_locale=row[6],
        connection_limit=row[7],
        allow_connections=row[8],
        comment=row[9],
        privileges=privileges,
        settings=settings,
    )


def create_database(conn: Any, name: str, like: DatabaseProperties, owner: str | None) -> None:
    """Create an empty database with the encoding and locale of another, from template0.

    Nobody but its owner and superusers may connect to it until the caller grants more.
    """
    statement = sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {}").format(
        sql.Identifier(name), sql.Literal(like.encoding)
    )
    if like.locale_provider == "i":
        statement += sql.SQL(" LOCALE_PROVIDER icu ICU_LOCALE {}").format(
            sql.Literal(like.icu_locale)
        )
    statement += sql.SQL(" LC_COLLATE {} LC_CTYPE {}").format(
        sql.Literal(like.collate), sql.Literal(like.ctype)
    )
    if owner:
        statement += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
    conn.execute(statement)
    conn.execute(
        sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name))
    )


def copy_database_settings(conn: Any, name: str, source: DatabaseProperties) -> None:
    """Give a database the connection limit, comment and role settings of another."""
    target = sql.Identifier(name)
    conn.execute(
        sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(
            target, sql.Literal(source.connection_limit)
        )
    )
    if source.comment is not None:
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(target, sql.Literal(source.comment))
        )
    for role, setting in source.settings:
        parameter, _, value = setting.partition("=")
        if role:
            alter = sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), target)
        else:
            alter = sql.SQL("ALTER DATABASE {}").format(target)
        values = sql.SQL(", ").join(sql.Literal(item) for item in setting_values(parameter, value))
        conn.execute(alter + sql.SQL(" SET {} = {}").format(sql.Identifier(parameter), values))


def setting_values(parameter: str, value: str) -> list[str]:
    """Split a stored setting into the values to SET it to again.

    Settings that take a list are stored as the list's text ('"$user", public'); each
    element is given back on its own, unquoted, as pg_dump does. Others are one value.
    """
    if parameter.lower() not in LIST_SETTINGS:
        return [value]
    items = []
    for item in re.findall(r'\s*("(?:[^"]|"")*"|[^,]*)\s*(?:,|$)', value):
        item = item.strip()
        if item.startswith('"') and item.endswith('"') and len(item) >= 2:
            item = item[1:-1].replace('""', '"')
        if item:
            items.append(item)
    return items


def copy_database_privileges(conn: Any, name: str, source: DatabaseProperties) -> None:
    """Grant on a database what the other one grants, to the same roles.

    The new database starts with PUBLIC's privileges revoked; a source with the
    default privileges gives them back to PUBLIC.
    """
    target = sql.Identifier(name)
    privileges = source.privileges
    if privileges is None:
        privileges = [(None, "CONNECT", False), (None, "TEMPORARY", False)]
    for grantee, privilege, grantable in privileges:
        if grantee == source.owner or privilege not in DATABASE_PRIVILEGES:
            # The owner holds every privilege on what it owns already.
            continue
        statement = sql.SQL("GRANT {} ON DATABASE {} TO {}").format(
            sql.SQL(privilege),
            target,
            sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"),
        )
        if grantable:
            statement += sql.SQL(" WITH GRANT OPTION")
        conn.execute(statement)
