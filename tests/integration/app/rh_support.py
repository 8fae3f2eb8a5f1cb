"""Stand-ins for what the deployment does to a database, and what the tests share.

The deployment applies migrations as an owner role and records them in
`schema_migrations`; the service connects as a second role that was given only
row privileges, through default privileges. These helpers do the same to a
test database so that the service is tested under the rights it gets in
production.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import psycopg
from psycopg import sql

from reading_history.core.config import Settings
from reading_history.migrations import Migration, load_migrations

SCHEMA_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
  version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
  status text NOT NULL CHECK (status IN ('applied','failed')), applied_by text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now(), duration_ms integer NOT NULL,
  app_release text, error text)
"""

APP_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"


@dataclass(frozen=True)
class ServiceDatabase:
    """A test database with the owner and service roles of a deployment."""

    name: str
    owner: str
    app_role: str
    owner_dsn: str
    app_dsn: str
    app_url: str


def make_settings(database_url: str, **overrides: object) -> Settings:
    """Return the service's settings for a test, as the deployment would set them."""
    values: dict[str, object] = {
        "database_url": database_url,
        "environment": "development",
        "release": "reading-history-1.0.0-test",
        "pool_min_size": 1,
        "pool_max_size": 4,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass(frozen=True)
class Roles:
    """The schema owner and the service's restricted role, with one password."""

    owner: str
    app: str
    password: str


def new_roles(database: str) -> Roles:
    # Roles belong to the whole cluster, so they are named after the database.
    return Roles(
        owner=f"{database}_owner",
        app=f"{database}_app",
        password=secrets.token_urlsafe(16),
    )


def create_roles(superuser_dsn: str, roles: Roles) -> None:
    """Create both roles and give the service role row rights on future tables."""
    owner, app = sql.Identifier(roles.owner), sql.Identifier(roles.app)
    password = sql.Literal(roles.password)
    statements = [
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(owner, password),
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(app, password),
        sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(owner),
        sql.SQL(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public "
            "GRANT {} ON TABLES TO {}"
        ).format(owner, sql.SQL(APP_PRIVILEGES), app),
        sql.SQL(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public "
            "GRANT USAGE ON SEQUENCES TO {}"
        ).format(owner, app),
    ]
    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def drop_roles(superuser_dsn: str, roles: Roles) -> None:
    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        for role in (roles.app, roles.owner):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def apply_migrations(
    owner_dsn: str,
    *,
    up_to: int | None = None,
    migrations: list[Migration] | None = None,
) -> list[int]:
    """Apply the packaged migrations in order, as the owner; return their versions."""
    migrations = load_migrations() if migrations is None else migrations
    applied = []
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_MIGRATIONS_DDL)
        for migration in migrations:
            if up_to is not None and migration.version > up_to:
                break
            _apply(conn, migration)
            applied.append(migration.version)
    return applied


def _apply(conn: psycopg.Connection, migration: Migration) -> None:
    started = time.monotonic()
    if migration.transactional:
        with conn.transaction():
            conn.execute(migration.up_sql)
            _record(conn, migration, started)
    else:
        conn.execute(migration.up_sql)
        _record(conn, migration, started)


def _record(conn: psycopg.Connection, migration: Migration, started: float) -> None:
    conn.execute(
        "INSERT INTO schema_migrations "
        "(version, name, checksum, status, applied_by, duration_ms, app_release) "
        "VALUES (%s, %s, %s, 'applied', current_user, %s, 'tests')",
        (
            migration.version,
            migration.name,
            migration.checksum,
            int((time.monotonic() - started) * 1000),
        ),
    )


def revert_migrations(owner_dsn: str, *, down_to: int) -> list[int]:
    """Undo applied migrations newest first until `down_to` remains."""
    reverted = []
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        for migration in reversed(load_migrations()):
            if migration.version <= down_to:
                break
            assert migration.down_sql is not None, f"{migration.name} has no down"
            with conn.transaction():
                conn.execute(migration.down_sql)
                conn.execute(
                    "DELETE FROM schema_migrations WHERE version = %s",
                    (migration.version,),
                )
            reverted.append(migration.version)
    return reverted


def record_migration_row(owner_dsn: str, *, version: int, status: str) -> None:
    """Add a schema_migrations row without running anything, to fake history."""
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO schema_migrations "
            "(version, name, checksum, status, applied_by, duration_ms) "
            "VALUES (%s, %s, %s, %s, current_user, 0)",
            (version, f"fake_{version}", "0" * 64, status),
        )
