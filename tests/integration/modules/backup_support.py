"""A database shaped like the service's, and the tools the backup and restore tests share.

The database is owned by a migrator role that owns its tables, an app role may only
read and write rows (through default privileges, as the postgresql_server role sets
them up), and one table belongs to a third role the app does not use. Roles are
named per test, since a cluster's roles are shared by all its databases.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from pgserver import PostgresServer
from psycopg import sql

ROLE_PASSWORD = "role-password-4c1d9e"

# What the service database holds when the fixture hands it over.
SEEDED_ROWS = {
    "user_reading_preferences": 3,
    "reading_history": 5,
    "archive_notes": 2,
    "schema_migrations": 2,
}


@dataclass
class ServiceDatabase:
    server: PostgresServer
    name: str
    owner: str
    app: str
    archivist: str

    def dsn(self, user: str | None = None, dbname: str | None = None) -> str:
        if user is None:
            return self.server.dsn(dbname or self.name)
        return self.server.dsn(dbname or self.name, user=user, password=ROLE_PASSWORD)

    def connect(
        self, user: str | None = None, dbname: str | None = None
    ) -> psycopg.Connection:
        return psycopg.connect(self.dsn(user, dbname), autocommit=True)

    def owner_args(self) -> dict[str, Any]:
        """Module options to log in as the migrator, as the backup role does."""
        return {
            "login_host": self.server.host,
            "login_port": self.server.port,
            "login_user": self.owner,
            "login_password": ROLE_PASSWORD,
            "login_db": self.name,
            "database": self.name,
        }

    def admin_args(self) -> dict[str, Any]:
        """Module options to log in as the superuser on the postgres database."""
        return {**self.server.conninfo("postgres"), "database": self.name}

    def counts(self, dbname: str | None = None) -> dict[str, int]:
        with self.connect(dbname=dbname) as conn:
            tables = conn.execute(
                "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relkind = 'r'"
            ).fetchall()
            return {
                name: conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
                ).fetchone()[0]
                for (name,) in tables
            }

    def databases(self) -> set[str]:
        """Every database of the cluster whose name starts with this one's."""
        with self.server_connection() as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
                [self.name],
            ).fetchall()
            return {row[0] for row in rows}

    def server_connection(self) -> psycopg.Connection:
        return psycopg.connect(self.server.superuser_dsn, autocommit=True)


def create_service_database(server: PostgresServer) -> ServiceDatabase:
    suffix = uuid.uuid4().hex[:8]
    service = ServiceDatabase(
        server=server,
        name=f"svc_{suffix}",
        owner=f"migrator_{suffix}",
        app=f"app_{suffix}",
        archivist=f"archivist_{suffix}",
    )
    ident = sql.Identifier
    with service.server_connection() as conn:
        for role in (service.owner, service.app):
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN NOCREATEDB PASSWORD {}").format(
                    ident(role), sql.Literal(ROLE_PASSWORD)
                )
            )
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(ident(service.archivist)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
                ident(service.name), ident(service.owner)
            )
        )
        conn.execute(
            sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident(service.name))
        )
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}, {}").format(
                ident(service.name), ident(service.owner), ident(service.app)
            )
        )
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET statement_timeout = '5min'").format(
                ident(service.name)
            )
        )
        conn.execute(
            sql.SQL(
                'ALTER ROLE {} IN DATABASE {} SET search_path = "$user", public'
            ).format(ident(service.app), ident(service.name))
        )

    with service.connect(user=service.owner) as conn:
        conn.execute(
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA public"
                " GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}"
            ).format(ident(service.app))
        )
        conn.execute(
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {}"
            ).format(ident(service.app))
        )
        conn.execute(
            "CREATE TABLE user_reading_preferences (user_id bigint PRIMARY KEY,"
            " tracking_enabled boolean NOT NULL DEFAULT true)"
        )
        conn.execute(
            "CREATE TABLE reading_history (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " user_id bigint NOT NULL REFERENCES user_reading_preferences (user_id),"
            " article_id bigint NOT NULL, read_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO user_reading_preferences (user_id) VALUES (101), (102), (103)"
        )
        conn.execute(
            "INSERT INTO reading_history (user_id, article_id)"
            " SELECT 101 + n % 3, n FROM generate_series(1, 5) n"
        )
        conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " checksum text NOT NULL, status text NOT NULL, applied_by text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now(), duration_ms integer NOT NULL,"
            " app_release text, error text)"
        )
        conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum, status, applied_by,"
            " duration_ms) VALUES (1, 'one', 'x', 'applied', 't', 1),"
            " (2, 'two', 'x', 'applied', 't', 1)"
        )

    # A table of a role the app does not use, which grants the app reading only, and
    # the migrator too, since the backup reads every table as the migrator.
    with service.connect() as conn:
        conn.execute("CREATE TABLE archive_notes (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO archive_notes VALUES (1, 'first'), (2, 'second')")
        conn.execute(
            sql.SQL("ALTER TABLE archive_notes OWNER TO {}").format(
                ident(service.archivist)
            )
        )
        conn.execute(
            sql.SQL("GRANT SELECT ON archive_notes TO {}, {}").format(
                ident(service.app), ident(service.owner)
            )
        )
    return service


def drop_service_database(service: ServiceDatabase) -> None:
    """Drop the database, every database renamed from it, and its roles."""
    with service.server_connection() as conn:
        for name in service.databases():
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )
        for role in (service.app, service.archivist, service.owner):
            if conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", [role]
            ).fetchone():
                # Grants on other databases' objects would block DROP ROLE.
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@contextmanager
def service_database(server: PostgresServer) -> Iterator[ServiceDatabase]:
    service = create_service_database(server)
    try:
        yield service
    finally:
        drop_service_database(service)


def scratch_databases(server: PostgresServer) -> list[str]:
    """Databases left behind by a test restore of pg_backup."""
    with psycopg.connect(server.superuser_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE '%\\_verify\\_%'"
        ).fetchall()
        return [row[0] for row in rows]


def fake_client(folder: Path, name: str, script: str) -> Path:
    """Write a shell script standing in for a PostgreSQL client program."""
    program = folder / name
    program.write_text(f"#!/bin/sh\n{script}\n")
    program.chmod(0o755)
    return program


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as stream:
        stream.seek(offset)
        byte = stream.read(1)
        stream.seek(offset)
        stream.write(bytes([byte[0] ^ 0xFF]))


def documented_directory_checksum(folder: Path) -> str:
    """Hash a directory dump with the shell recipe pg_backup's documentation gives."""
    done = subprocess.run(
        "find . -maxdepth 1 -type f -printf '%P\\0' | LC_ALL=C sort -z"
        " | xargs -0 sha256sum | sha256sum",
        shell=True,
        cwd=folder,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.split()[0]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextmanager
def tmpfs(folder: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """Mount a small tmpfs on folder (needs root) and unmount it afterwards."""
    if os.geteuid() != 0:
        raise RuntimeError(
            "mounting a tmpfs needs root: run the integration tests as root"
        )
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0700" + (",ro" if read_only else "")
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True
    )
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
