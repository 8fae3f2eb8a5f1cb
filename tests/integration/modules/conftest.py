"""Fixtures for the module integration tests: module paths and database handles."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from module_harness import install_module_paths
from pgserver import PostgresServer

install_module_paths()


@pytest.fixture
def db_args(pg_server: PostgresServer, pg_database: str) -> dict[str, Any]:
    """Connection options for a module acting on the test's database."""
    return {**pg_server.conninfo(pg_database), "database": pg_database}


@pytest.fixture
def db(pg_server: PostgresServer, pg_database: str) -> Iterator[psycopg.Connection]:
    """A separate session on the test's database, to check what a module did."""
    with psycopg.connect(pg_server.dsn(pg_database), autocommit=True) as conn:
        yield conn


@pytest.fixture
def seed_history(db: psycopg.Connection) -> Callable[..., None]:
    """Return a function that creates schema_migrations with (version, status) rows."""
    from ansible.module_utils.schema_history import HISTORY_TABLE_DDL

    def seed(*rows: tuple[int, str]) -> None:
        db.execute(HISTORY_TABLE_DDL)
        for version, status in rows:
            db.execute(
                "INSERT INTO schema_migrations"
                " (version, name, checksum, status, applied_by, duration_ms)"
                " VALUES (%s, %s, 'x', %s, 'test', 1)",
                [version, f"step_{version}", status],
            )

    return seed
