"""Verify the PostgreSQL server, database and roles the postgresql_server role makes."""

import pytest

MIGRATOR = ("reading_history_migrator", "molecule-migrator-9f3a7c1d")
APP = ("reading_history_app", "molecule-app-4b8e2d6f0a")


def psql(host, user, password, sql, database="reading_history"):
    """Run one statement over TCP with a password, as a client would."""
    return host.run(
        "PGPASSWORD=%s psql -h 127.0.0.1 -U %s -d %s -Atc %s",
        password,
        user,
        database,
        sql,
    )


def test_server_runs_and_starts_at_boot(host):
    """Ensure the cluster runs and is enabled."""
    service = host.service("postgresql@15-main")
    assert service.is_running
    assert service.is_enabled


def test_server_listens_on_every_address(host):
    """Ensure the app hosts can reach the server over the network."""
    assert host.socket("tcp://0.0.0.0:5432").is_listening


def test_database_is_owned_by_the_migrator(host):
    """Verify the migrator owns the database, so it owns what migrations create."""
    result = psql(
        host, *MIGRATOR,
        "SELECT pg_get_userbyid(datdba) FROM pg_database "
        "WHERE datname = current_database()",
    )  # fmt: skip
    assert result.stdout.strip() == MIGRATOR[0]


def test_app_role_cannot_create_tables(host):
    """Ensure the app role can read and write rows but never change the schema."""
    result = psql(host, *APP, "CREATE TABLE intruder (x int)")
    assert result.rc != 0
    assert "permission denied" in result.stderr


def test_app_role_gets_row_access_to_migrator_tables(host):
    """Verify default privileges give the app role DML on tables the migrator makes."""
    created = psql(
        host, *MIGRATOR,
        "DROP TABLE IF EXISTS probe; CREATE TABLE probe (n int)",
    )  # fmt: skip
    assert created.rc == 0, created.stderr

    written = psql(host, *APP, "INSERT INTO probe VALUES (1); SELECT count(*) FROM probe")
    assert written.rc == 0, written.stderr
    assert written.stdout.strip().endswith("1")

    dropped = psql(host, *APP, "DROP TABLE probe")
    assert dropped.rc != 0


@pytest.mark.parametrize("user", ["postgres", "nobody_here"])
def test_other_roles_cannot_log_in_over_tcp(host, user):
    """Ensure only the service's roles get in over the network with a password."""
    result = psql(host, user, "wrong-password-123", "SELECT 1")
    assert result.rc != 0


def test_wrong_password_is_refused(host):
    """Ensure password authentication really checks the password."""
    result = psql(host, APP[0], "not-the-password", "SELECT 1")
    assert result.rc != 0
    assert "password authentication failed" in result.stderr
