"""Tests for /health and /api/v1/health/db."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from fastapi.testclient import TestClient

from reading_history.main import create_app
from reading_history.migrations import expected_version

from rh_support import (
    ServiceDatabase,
    apply_migrations,
    bearer,
    make_settings,
    make_token,
    record_migration_row,
)

DB_HEALTH = "/api/v1/health/db"


@contextmanager
def running_service(database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(database_url))) as test_client:
        yield test_client


@pytest.fixture
def unmigrated_client(service_db: ServiceDatabase) -> Iterator[TestClient]:
    """Run the service against a database the deployment has not migrated yet."""
    with running_service(service_db.app_url) as test_client:
        yield test_client


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_health_reports_version_and_release(client: TestClient) -> None:
    """Verify liveness names the package version and the installed release."""
    response = client.get("/health")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "version": "1.0.0",
        "release": "reading-history-1.0.0-test",
    }


def test_health_does_not_need_the_database() -> None:
    """Ensure liveness answers while the database is down, so restarts do not loop."""
    url = f"postgresql://nobody:pw@127.0.0.1:{unused_port()}/nothing"

    with running_service(url) as test_client:
        started = time.monotonic()
        response = test_client.get("/health")

        assert response.status_code == 200
        assert time.monotonic() - started < 1


def test_db_health_is_ok_when_schema_matches(client: TestClient) -> None:
    """Verify a reachable database at the expected version is healthy."""
    response = client.get(DB_HEALTH)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["schema_version"] == {
        "found": expected_version(),
        "expected": expected_version(),
    }
    assert body["pool"]["max"] == 4
    assert body["pool"]["size"] >= 1


def test_db_health_is_unhealthy_when_schema_is_behind(
    service_db: ServiceDatabase,
) -> None:
    """Ensure a database missing the newest migration answers 503, not 200."""
    apply_migrations(service_db.owner_dsn, up_to=expected_version() - 1)

    with running_service(service_db.app_url) as test_client:
        response = test_client.get(DB_HEALTH)

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["reason"] == "schema_behind"
    assert body["schema_version"] == {
        "found": expected_version() - 1,
        "expected": expected_version(),
    }


def test_db_health_is_unhealthy_when_schema_is_ahead(
    migrated_db: ServiceDatabase, client: TestClient
) -> None:
    """Ensure an older release on a newer schema says so instead of serving."""
    record_migration_row(
        migrated_db.owner_dsn, version=expected_version() + 1, status="applied"
    )

    response = client.get(DB_HEALTH)

    assert response.status_code == 503
    assert response.json()["reason"] == "schema_ahead"
    assert response.json()["schema_version"]["found"] == expected_version() + 1


def test_failed_migrations_do_not_count(
    migrated_db: ServiceDatabase, client: TestClient
) -> None:
    """Verify a newer migration recorded as failed does not raise the version found."""
    record_migration_row(
        migrated_db.owner_dsn, version=expected_version() + 1, status="failed"
    )

    response = client.get(DB_HEALTH)

    assert response.status_code == 200
    assert response.json()["schema_version"]["found"] == expected_version()


def test_db_health_without_migration_table_finds_version_zero(
    unmigrated_client: TestClient,
) -> None:
    """Verify a database never migrated reports version 0 and is unhealthy."""
    response = unmigrated_client.get(DB_HEALTH)

    assert response.status_code == 503
    assert response.json()["reason"] == "schema_behind"
    assert response.json()["schema_version"]["found"] == 0


def test_db_health_is_unhealthy_when_database_is_unreachable() -> None:
    """Ensure an unreachable database gives a quick 503 with the reason."""
    url = f"postgresql://nobody:pw@127.0.0.1:{unused_port()}/nothing"

    with running_service(url) as test_client:
        started = time.monotonic()
        response = test_client.get(DB_HEALTH)
        elapsed = time.monotonic() - started

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["reason"] == "database_unreachable"
    assert body["schema_version"] == {"found": None, "expected": expected_version()}
    assert elapsed < 5


def terminate_service_connections(pg_server, role: str) -> None:
    with psycopg.connect(pg_server.superuser_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            (role,),
        )


def test_pooled_connections_killed_by_a_restart_are_replaced(
    pg_server, migrated_db: ServiceDatabase, client: TestClient
) -> None:
    """Verify the first request after the database drops connections still works."""
    assert client.get("/api/v1/users/1/preferences").status_code == 200

    terminate_service_connections(pg_server, migrated_db.app_role)

    assert client.get("/api/v1/users/1/preferences").status_code == 200


def test_routes_answer_503_not_500_when_database_is_gone(
    pg_server, migrated_db: ServiceDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ensure a database that refuses new connections is reported as unavailable."""
    monkeypatch.setattr("reading_history.core.db.POOL_TIMEOUT", 1.0)
    token = make_token(migrated_db.app_dsn, 1).token

    with running_service(migrated_db.app_url) as test_client:
        with psycopg.connect(pg_server.superuser_dsn, autocommit=True) as conn:
            conn.execute(f'ALTER ROLE "{migrated_db.app_role}" NOLOGIN')
        terminate_service_connections(pg_server, migrated_db.app_role)

        response = test_client.get("/api/v1/users/1/preferences", headers=bearer(token))

    assert response.status_code == 503
    assert response.json() == {"detail": "Database unavailable"}
