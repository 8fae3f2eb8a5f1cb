"""Fixtures for the service's integration tests: a migrated database and a client.

The service always runs as a role that holds only row privileges, as in
production, so every route test also proves the service needs no DDL.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

APP_SOURCE = Path(__file__).resolve().parents[3] / "app" / "src"
if str(APP_SOURCE) not in sys.path:
    sys.path.insert(0, str(APP_SOURCE))

with warnings.catch_warnings():
    # Starlette now prefers httpx2 for its test client; httpx, which this
    # repository already uses, still works and is what it falls back to.
    warnings.filterwarnings("ignore", message="Using `httpx`", category=Warning)
    from fastapi.testclient import TestClient  # noqa: E402

from reading_history.main import create_app  # noqa: E402

from rh_support import (  # noqa: E402
    ActAsAddressedUser,
    Roles,
    ServiceDatabase,
    apply_migrations,
    create_roles,
    drop_roles,
    make_settings,
    new_roles,
    service_database,
    start_service,
    unused_port,
    wait_until_up,
)


@pytest.fixture
def db_roles(pg_server, pg_database: str) -> Iterator[Roles]:
    """Create the owner and service roles for this test's database."""
    roles = new_roles(pg_database)
    create_roles(pg_server.dsn(pg_database), roles)
    yield roles
    # The database goes first: its tables and default privileges hold the roles.
    pg_server.drop_database(pg_database)
    drop_roles(pg_server.superuser_dsn, roles)


@pytest.fixture
def service_db(pg_server, pg_database: str, db_roles: Roles) -> ServiceDatabase:
    """Give a database with both roles, not yet migrated."""
    return service_database(pg_server, pg_database, db_roles)


@pytest.fixture
def migrated_db(service_db: ServiceDatabase) -> ServiceDatabase:
    """Give a database with every packaged migration applied by the owner."""
    apply_migrations(service_db.owner_dsn)
    return service_db


@pytest.fixture
def client(migrated_db: ServiceDatabase) -> Iterator[TestClient]:
    """Run the service, as the restricted role, against the migrated database.

    Each request carries a token of the user its path names, made as the
    restricted role too; tests of access control bring their own tokens.
    """
    app = create_app(make_settings(migrated_db.app_url))
    with TestClient(app) as test_client:
        test_client.auth = ActAsAddressedUser(migrated_db.app_dsn)
        yield test_client


@pytest.fixture
def anonymous_client(migrated_db: ServiceDatabase) -> Iterator[TestClient]:
    """Run the service like `client`, without adding any token to requests."""
    app = create_app(make_settings(migrated_db.app_url))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def owner_conn(migrated_db: ServiceDatabase) -> Iterator[psycopg.Connection]:
    """Connect as the schema owner, to arrange or inspect rows behind the API."""
    with psycopg.connect(migrated_db.owner_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def served(migrated_db: ServiceDatabase) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run `reading-history serve` as a process, the way the deployment starts it."""
    port = unused_port()
    process = start_service(
        migrated_db.app_url,
        port=port,
        output=subprocess.PIPE,
        release="served-test",
        environment="lab",
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base_url, process)
        yield base_url, process
    finally:
        process.terminate()
        process.wait(timeout=10)
