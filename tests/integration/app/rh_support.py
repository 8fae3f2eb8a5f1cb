"""Stand-ins for what the deployment does to a database, and what the tests share.

The deployment applies migrations as an owner role and records them in
`schema_migrations`; the service connects as a second role that was given only
row privileges, through default privileges. These helpers do the same to a
test database so that the service is tested under the rights it gets in
production.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from reading_history import access
from reading_history.access import NewToken
from reading_history.core.config import Settings
from reading_history.migrations import Migration, load_migrations

APP_SOURCE = Path(__file__).resolve().parents[3] / "app" / "src"

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


ADDRESSED_USER = re.compile(r"^/api/v1/users/([^/]+)")
# Whose token goes with a path naming no valid user, so that validation answers.
FALLBACK_USER_ID = 1


def make_token(dsn: str, user_id: int, name: str = "tests") -> NewToken:
    """Make a token with the service's own code, over the given connection string."""

    async def make() -> NewToken:
        async with await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, row_factory=dict_row
        ) as conn:
            return await access.create_token(conn=conn, user_id=user_id, name=name)

    return asyncio.run(make())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class ActAsAddressedUser(httpx.Auth):
    """Send each request with a token of the user its path names.

    This is what each user's own app does. Requests that bring their own
    Authorization header, and paths outside /api/v1/users, are left alone.
    """

    app_dsn: str
    tokens: dict[int, str] = field(default_factory=dict)

    def auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        match = ADDRESSED_USER.match(request.url.path)
        if match and "authorization" not in request.headers:
            request.headers["Authorization"] = f"Bearer {self.token_for(match[1])}"
        yield request

    def token_for(self, addressed: str) -> str:
        user_id = int(addressed) if addressed.isdigit() else FALLBACK_USER_ID
        if not 1 <= user_id < 2**63:
            user_id = FALLBACK_USER_ID
        if user_id not in self.tokens:
            self.tokens[user_id] = make_token(self.app_dsn, user_id).token
        return self.tokens[user_id]


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


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_service(
    database_url: str, *, port: int, output: int | IO[str], **settings: str
) -> subprocess.Popen[str]:
    """Start `reading-history serve` as the deployment does, with only its settings.

    Each keyword is a READING_HISTORY_* setting without the prefix.
    """
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(APP_SOURCE),
        "READING_HISTORY_DATABASE_URL": database_url,
        "READING_HISTORY_PORT": str(port),
    }
    environment |= {
        f"READING_HISTORY_{name.upper()}": v for name, v in settings.items()
    }
    return subprocess.Popen(
        [sys.executable, "-m", "reading_history", "serve"],
        env=environment,
        stdout=output,
        stderr=output,
        text=True,
    )


def wait_until_up(base_url: str, process: subprocess.Popen[str]) -> None:
    """Wait until the service answers /health, or raise if it exits or stalls."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited early with {process.returncode}")
        try:
            httpx.get(f"{base_url}/health", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("serve did not answer within 20 seconds")


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


def service_database(server, name: str, roles: Roles) -> ServiceDatabase:
    """Describe a database of the test cluster with the deployment's two roles."""
    return ServiceDatabase(
        name=name,
        owner=roles.owner,
        app_role=roles.app,
        owner_dsn=server.dsn(name, roles.owner, roles.password),
        app_dsn=server.dsn(name, roles.app, roles.password),
        app_url=(
            f"postgresql://{roles.app}:{roles.password}"
            f"@{server.host}:{server.port}/{name}"
        ),
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
