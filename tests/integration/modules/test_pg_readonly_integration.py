"""Integration tests of pg_readonly against a real PostgreSQL: the stored default,
waiting for and ending write transactions, reconnecting stale sessions, the
privileges it needs, and a read-only window put back after a failed migration.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from module_harness import run_module_process
from pgserver import PostgresServer
from psycopg import sql

PASSWORD = "readonly-test-password"


def readonly(db_args: dict, state: str, check_mode: bool = False, **options: Any):
    args = {**db_args, "state": state, **options}
    return run_module_process("pg_readonly", args, check_mode=check_mode)


def stored(db: psycopg.Connection, database: str) -> list[str]:
    row = db.execute(
        "SELECT s.setconfig FROM pg_db_role_setting s"
        " JOIN pg_database d ON d.oid = s.setdatabase"
        " WHERE d.datname = %s AND s.setrole = 0",
        [database],
    ).fetchone()
    return row[0] if row else []


def can_write(dsn: str) -> bool:
    """Tell whether a fresh session may write, as the app's next connection would."""
    with psycopg.connect(dsn) as conn:
        try:
            conn.execute("INSERT INTO notes VALUES ('probe')")
        except psycopg.errors.ReadOnlySqlTransaction:
            return False
        conn.rollback()
        return True


def alive(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


@pytest.fixture
def notes(db: psycopg.Connection) -> None:
    db.execute("CREATE TABLE notes (text text)")
    db.execute("GRANT ALL ON notes TO PUBLIC")


@pytest.fixture
def roles(
    pg_server: PostgresServer, pg_database: str, notes: None
) -> Iterator[dict[str, str]]:
    """Create an owner of the database and an app role, as the deployment has them."""
    suffix = uuid.uuid4().hex[:8]
    names = {
        "owner": f"owner_{suffix}",
        "app": f"app_{suffix}",
        "other": f"other_{suffix}",
    }
    with psycopg.connect(pg_server.superuser_dsn, autocommit=True) as admin:
        for name in names.values():
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(PASSWORD)
                )
            )
        admin.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(pg_database), sql.Identifier(names["owner"])
            )
        )
    yield names
    with psycopg.connect(pg_server.superuser_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO postgres").format(
                sql.Identifier(pg_database)
            )
        )
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(pg_database)
            )
        )
        for name in names.values():
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def as_role(pg_server: PostgresServer, database: str, role: str) -> str:
    return pg_server.dsn(database, role, PASSWORD)


class TestSetting:
    def test_on_and_off_report_what_was_there_and_reach_new_sessions(
        self,
        db_args: dict,
        db: psycopg.Connection,
        pg_server: PostgresServer,
        pg_database: str,
        notes: None,
    ) -> None:
        """Ensure on stores the default, off removes it, each saying what it found."""
        dsn = pg_server.dsn(pg_database)

        rc, on, _ = readonly(db_args, "on", grace_period=1)
        on_rc, on_again, _ = readonly(db_args, "on", grace_period=1)

        assert rc == 0, on
        assert (on["changed"], on["previous"], on["state"]) == (True, "off", "on")
        assert stored(db, pg_database) == ["default_transaction_read_only=on"]
        assert not can_write(dsn)
        assert on_rc == 0 and (on_again["changed"], on_again["previous"]) == (
            False,
            "on",
        )

        rc, off, _ = readonly(db_args, "off")
        off_rc, off_again, _ = readonly(db_args, "off")

        assert rc == 0, off
        assert (off["changed"], off["previous"], off["state"]) == (True, "on", "off")
        assert stored(db, pg_database) == []
        assert can_write(dsn)
        assert off_rc == 0 and (off_again["changed"], off_again["previous"]) == (
            False,
            "off",
        )

    def test_check_mode_changes_nothing_and_lists_open_writes(
        self,
        db_args: dict,
        db: psycopg.Connection,
        pg_server: PostgresServer,
        pg_database: str,
        notes: None,
    ) -> None:
        """Verify check mode reports previous and open write transactions only."""
        with psycopg.connect(pg_server.dsn(pg_database)) as writer:
            writer.execute("INSERT INTO notes VALUES ('open')")

            rc, result, _ = readonly(db_args, "on", check_mode=True)

            assert alive(writer)
            assert [s["pid"] for s in result["still_writing"]] == [
                writer.info.backend_pid
            ]

        assert rc == 0 and result["changed"] is True and result["previous"] == "off"
        assert result["terminated"] == []
        assert stored(db, pg_database) == []


class TestWriteTransactions:
    def test_waits_for_an_open_write_to_finish(
        self,
        db_args: dict,
        db: psycopg.Connection,
        pg_server: PostgresServer,
        pg_database: str,
        notes: None,
    ) -> None:
        """Ensure a write that ends within the grace period is waited for, not cut."""
        writer = psycopg.connect(pg_server.dsn(pg_database))
        writer.execute("INSERT INTO notes VALUES ('finished in time')")
        # Committed a while after the module starts: it must still be waiting then.
        threading.Timer(2.0, writer.commit).start()

        rc, result, _ = readonly(db_args, "on", grace_period=10, terminate=True)

        assert rc == 0, result
        assert result["terminated"] == [] and result["still_writing"] == []
        assert 0.3 < result["waited"] < 5
        assert db.execute("SELECT count(*) FROM notes").fetchone()[0] == 1
        assert writer.info.backend_pid in result["sessions_before_change"]
        writer.close()

    def test_terminates_a_write_still_open_after_the_grace_period(
        self,
        db_args: dict,
        db: psycopg.Connection,
        pg_server: PostgresServer,
        pg_database: str,
        notes: None,
    ) -> None:
        """Verify terminate ends the write transactions that outlast the grace period."""
        writer = psycopg.connect(pg_server.dsn(pg_database))
        writer.execute("INSERT INTO notes VALUES ('never committed')")
        pid = writer.info.backend_pid

        rc, result, _ = readonly(db_args, "on", grace_period=0.5, terminate=True)

        assert rc == 0, result
        assert result["changed"] is True
        [ended] = result["terminated"]
        assert (ended["pid"], ended["reason"], ended["writing"]) == (
            pid,
            "write_transaction",
            True,
        )
        assert result["waited"] >= 0.5
        assert not alive(writer)
        assert db.execute("SELECT count(*) FROM notes").fetchone()[0] == 0

    def test_without_terminate_reports_the_write_and_leaves_it(
        self,
        db_args: dict,
        db: psycopg.Connection,
        pg_server: PostgresServer,
        pg_database: str,
        notes: None,
    ) -> None:
        """Ensure a write left open is reported with a warning, not ended."""
        with psycopg.connect(pg_server.dsn(pg_database)) as writer:
            writer.execute("INSERT INTO notes VALUES ('still open')")
            pid = writer.info.backend_pid

            rc, result, _ = readonly(db_args, "on", grace_period=0.3)

            assert alive(writer)
        assert rc == 0, result
        assert [s["pid"] for s in result["still_writing"]] == [pid]
        assert "write transactions still open" in json.dumps(result["warnings"])
        assert result["terminated"] == []

    def test_migration_sessions_are_left_alone(
        self,
        db_args: dict,
        pg_server: PostgresServer,
        pg_database: str,
        notes: None,
    ) -> None:
        """Verify a write of pg_migrate's own session is neither waited for nor ended."""
        dsn = f"{pg_server.dsn(pg_database)} application_name=ansible-pg_migrate"
        with psycopg.connect(dsn) as migrator:
            migrator.execute("INSERT INTO notes VALUES ('migrating')")

            rc, result, _ = readonly(db_args, "on", grace_period=5, terminate=True)

            assert alive(migrator)
        assert rc == 0, result
        assert result["terminated"] == [] and result["waited"] < 1


class TestStaleSessions:
    def test_idle_sessions_of_the_named_role_reconnect_both_ways(
        self,
        db_args: dict,
        db: psycopg.Connection,
        pg_server: PostgresServer,
        pg_database: str,
        roles: dict[str, str],
    ) -> None:
        """Ensure idle app sessions opened before each change are ended, others kept."""
        app_dsn = as_role(pg_server, pg_database, roles["app"])
        before = psycopg.connect(app_dsn, autocommit=True)
        bystander = psycopg.connect(as_role(pg_server, pg_database, roles["other"]))

        rc, result, _ = readonly(
            db_args, "on", grace_period=5, terminate_idle_roles=[roles["app"]]
        )

        assert rc == 0, result
        assert [(s["pid"], s["reason"]) for s in result["terminated"]] == [
            (before.info.backend_pid, "idle_session")
        ]
        assert not alive(before)
        assert alive(bystander)
        assert bystander.info.backend_pid in result["sessions_before_change"]
        bystander.close()

        during = psycopg.connect(app_dsn, autocommit=True)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            during.execute("INSERT INTO notes VALUES ('in the window')")

        rc, result, _ = readonly(
            db_args, "off", grace_period=5, terminate_idle_roles=[roles["app"]]
        )

        assert rc == 0, result
        assert [s["pid"] for s in result["terminated"]] == [during.info.backend_pid]
        assert not alive(during)
        assert can_write(app_dsn)

    def test_busy_session_is_ended_once_idle(
        self,
        db_args: dict,
        pg_server: PostgresServer,
        pg_database: str,
        roles: dict[str, str],
    ) -> None:
        """Verify a session busy with a query is waited for, then ended when idle."""
        busy = psycopg.connect(
            as_role(pg_server, pg_database, roles["app"]), autocommit=True
        )
        worker = threading.Thread(target=lambda: busy.execute("SELECT pg_sleep(1)"))
        worker.start()
        time.sleep(0.2)

        rc, result, _ = readonly(
            db_args, "on", grace_period=10, terminate_idle_roles=[roles["app"]]
        )
        worker.join()

        assert rc == 0, result
        assert [s["reason"] for s in result["terminated"]] == ["idle_session"]
        assert result["waited"] >= 0.5


class TestPrivileges:
    def test_owner_opens_and_closes_the_window_without_extra_rights(
        self,
        db_args: dict,
        db: psycopg.Connection,
        pg_server: PostgresServer,
        pg_database: str,
        roles: dict[str, str],
    ) -> None:
        """Ensure the database owner, no superuser, can store and remove the default."""
        owner = {**db_args, "login_user": roles["owner"], "login_password": PASSWORD}

        rc, on, _ = readonly(owner, "on", grace_period=0)
        off_rc, off, _ = readonly(owner, "off")

        assert rc == 0 and on["changed"] and on["previous"] == "off", on
        assert off_rc == 0 and off["previous"] == "on"
        assert stored(db, pg_database) == []

    def test_missing_rights_fail_before_anything_changes(
        self,
        db_args: dict,
        db: psycopg.Connection,
        pg_server: PostgresServer,
        pg_database: str,
        roles: dict[str, str],
    ) -> None:
        """Verify missing rights are named up front, and the setting left alone."""
        owner = {**db_args, "login_user": roles["owner"], "login_password": PASSWORD}
        app = psycopg.connect(
            as_role(pg_server, pg_database, roles["app"]), autocommit=True
        )
        options = {"grace_period": 1, "terminate_idle_roles": [roles["app"]]}
        grant = "GRANT {} TO {}"

        rc, result, _ = readonly(owner, "on", **options)

        assert rc == 1
        assert (
            f"may not see and terminate the sessions of '{roles['app']}'"
            in (result["msg"])
        )
        assert "grant it pg_read_all_stats and pg_signal_backend" in result["msg"]
        assert result["previous"] == "off"
        assert stored(db, pg_database) == [] and alive(app)

        db.execute(
            sql.SQL(grant).format(
                sql.Identifier("pg_read_all_stats"), sql.Identifier(roles["owner"])
            )
        )
        rc, result, _ = readonly(owner, "on", **options)

        assert rc == 1 and "may not see and terminate" in result["msg"]
        assert stored(db, pg_database) == []

        db.execute(
            sql.SQL(grant).format(
                sql.Identifier("pg_signal_backend"), sql.Identifier(roles["owner"])
            )
        )
        rc, result, _ = readonly(owner, "on", **options)

        assert rc == 0, result
        assert [s["pid"] for s in result["terminated"]] == [app.info.backend_pid]
        assert stored(db, pg_database) == ["default_transaction_read_only=on"]


def test_window_is_restored_after_a_failed_migration(
    tmp_path: Path,
    db_args: dict,
    db: psycopg.Connection,
    pg_server: PostgresServer,
    pg_database: str,
    notes: None,
) -> None:
    """Ensure the role's sequence (on, migrate, always put back) leaves no window open."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "0001_notes_title.up.sql").write_text(
        "ALTER TABLE notes ADD title text;\n"
    )
    (folder / "0002_broken.up.sql").write_text("SELECT 1/0;\n")
    dsn = pg_server.dsn(pg_database)

    on_rc, window, _ = readonly(db_args, "on", grace_period=1, terminate=True)
    during = can_write(dsn)
    migrate_rc, migration, _ = run_module_process(
        "pg_migrate", {**db_args, "path": str(folder)}
    )
    # The "always" part of the block, run whatever the migration did.
    off_rc, restored, _ = readonly(db_args, window["previous"])

    assert on_rc == 0 and window["previous"] == "off"
    assert not during
    assert migrate_rc == 1 and "division by zero" in migration["msg"]
    # The migrator wrote through the window: 0001 applied, 0002 recorded as failed.
    assert db.execute(
        "SELECT version, status FROM schema_migrations ORDER BY version"
    ).fetchall() == [(1, "applied"), (2, "failed")]
    assert off_rc == 0 and restored["previous"] == "on" and restored["state"] == "off"
    assert stored(db, pg_database) == []
    assert can_write(dsn)
