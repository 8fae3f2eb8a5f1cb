"""Fixtures shared by every test tier: a throwaway PostgreSQL and fresh databases."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))

from pgserver import PostgresServer, running_server  # noqa: E402


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """Start one PostgreSQL cluster for the whole test session."""
    with running_server() as server:
        yield server


@pytest.fixture
def pg_database(pg_server: PostgresServer) -> Iterator[str]:
    """Give each test an empty database of its own, dropped afterwards."""
    name = pg_server.create_database()
    yield name
    pg_server.drop_database(name)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
