"""Integration tests of pg_migrate against a real PostgreSQL.

Each test writes a few small migration files in its own folder, runs the module in a
child Python as Ansible would, and checks the database through a separate session.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import psycopg
from module_harness import (
    finish_module_process,
    run_module_process,
    start_module_process,
)
from pg_migrate import LOCK_KEY
from pgserver import PostgresServer

BASE_FILES = {
    "0001_create_feeds.up.sql": "CREATE TABLE feeds (id serial, url text);\n",
    "0001_create_feeds.down.sql": "DROP TABLE feeds;\n",
    "0002_seed_feeds.up.sql": "INSERT INTO feeds (url) VALUES ('a'), ('b');\n",
    "0003_add_title.up.sql": "ALTER TABLE feeds ADD COLUMN title text;\n"
    "COMMENT ON COLUMN feeds.title IS 'shown; in 100% of lists';\n",
}


def write_files(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def migrate(db_args: dict, folder: Path, check_mode: bool = False, **options: Any):
    args = {**db_args, "path": str(folder), **options}
    return run_module_process("pg_migrate", args, check_mode=check_mode)


def history(db: psycopg.Connection) -> dict[int, tuple]:
    rows = db.execute(
        "SELECT version, name, checksum, status, applied_by, app_release,"
        " duration_ms, error"
        " FROM schema_migrations ORDER BY version"
    ).fetchall()
    return {row[0]: row[1:] for row in rows}


def table_exists(db: psycopg.Connection, name: str) -> bool:
    return db.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()[0]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class TestApplying:
    def test_applies_pending_files_in_order_and_records_them(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Ensure every file runs once, in order, with a full history row each."""
        folder = write_files(tmp_path / "m", BASE_FILES)

        rc, result, _ = migrate(
            db_args, folder, app_release="1.4.0", applied_by="ci@lab"
        )

        assert rc == 0, result
        assert result["changed"] is True
        assert result["applied"] == [1, 2, 3]
        assert result["pending"] == []
        assert (result["current_version"], result["target_version"]) == (3, 3)

        rows = history(db)
        assert sorted(rows) == [1, 2, 3]
        name, checksum, status, applied_by, release, duration, error = rows[3]
        assert (name, status, applied_by, release, error) == (
            "add_title",
            "applied",
            "ci@lab",
            "1.4.0",
            None,
        )
        assert checksum == sha256_file(folder / "0003_add_title.up.sql")
        assert duration >= 0
        assert (
            db.execute("SELECT count(title) + count(*) FROM feeds").fetchone()[0] == 2
        )

    def test_second_run_changes_nothing(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Verify a run with nothing pending reports no change and writes nothing."""
        folder = write_files(tmp_path / "m", BASE_FILES)
        migrate(db_args, folder)
        applied_at = db.execute(
            "SELECT max(applied_at) FROM schema_migrations"
        ).fetchone()

        rc, result, _ = migrate(db_args, folder)

        assert rc == 0, result
        assert result["changed"] is False
        assert result["applied"] == []
        assert result["current_version"] == 3
        assert db.execute(
            "SELECT max(applied_at) FROM schema_migrations"
        ).fetchone() == (applied_at)
        assert db.execute("SELECT count(*) FROM feeds").fetchone()[0] == 2

    def test_new_file_is_applied_alone(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Ensure a later release applies only its new migration."""
        folder = write_files(tmp_path / "m", BASE_FILES)
        migrate(db_args, folder)
        write_files(
            folder, {"0004_index_url.up.sql": "CREATE INDEX feeds_url ON feeds (url);"}
        )

        rc, result, _ = migrate(db_args, folder)

        assert rc == 0, result
        assert result["applied"] == [4]
        assert table_exists(db, "feeds_url")

    def test_default_applied_by_is_user_at_host(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Verify the history names the login user and the managed host by default."""
        folder = write_files(
            tmp_path / "m", {"0001_t.up.sql": "CREATE TABLE t (id int);"}
        )

        migrate(db_args, folder)

        assert history(db)[1][3] == f"postgres@{socket.gethostname()}"

    def test_no_transaction_file_runs_outside_a_transaction(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Ensure the marker lets CREATE INDEX CONCURRENTLY run, and is needed."""
        concurrent = "CREATE INDEX CONCURRENTLY feeds_url ON feeds (url);\n"
        folder = write_files(
            tmp_path / "m",
            {
                "0001_create_feeds.up.sql": BASE_FILES["0001_create_feeds.up.sql"],
                "0002_index.up.sql": f"-- reading-history: no-transaction\n{concurrent}"
                "CREATE INDEX CONCURRENTLY feeds_id_url ON feeds (id, url);\n",
            },
        )
        plain = write_files(tmp_path / "plain", {"0003_index.up.sql": concurrent})

        rc, result, _ = migrate(db_args, folder)
        plain_rc, plain_result, _ = migrate(db_args, plain)

        assert rc == 0, result
        assert result["applied"] == [1, 2]
        valid = db.execute(
            "SELECT count(*) FROM pg_index WHERE indisvalid"
            " AND indexrelid IN ('feeds_url'::regclass, 'feeds_id_url'::regclass)"
        ).fetchone()[0]
        assert valid == 2
        assert plain_rc == 1
        assert "cannot run inside a transaction block" in plain_result["msg"]


class TestCheckMode:
    def test_fresh_database_lists_every_file_and_creates_nothing(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Ensure check mode creates not even the history table."""
        folder = write_files(tmp_path / "m", BASE_FILES)

        rc, result, _ = migrate(db_args, folder, check_mode=True)

        assert rc == 0, result
        assert result["changed"] is True
        assert result["pending"] == [1, 2, 3]
        assert result["applied"] == []
        assert not table_exists(db, "schema_migrations")
        assert not table_exists(db, "feeds")

    def test_lists_only_what_is_left(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Verify check mode after a partial apply lists the remaining versions only."""
        folder = write_files(tmp_path / "m", dict(list(BASE_FILES.items())[:3]))
        migrate(db_args, folder)
        write_files(folder, BASE_FILES)

        rc, result, _ = migrate(db_args, folder, check_mode=True)

        assert rc == 0, result
        assert result["pending"] == [3]
        assert result["current_version"] == 2
        assert sorted(history(db)) == [1, 2]

    def test_up_to_date_database_reports_no_change(
        self, tmp_path: Path, db_args: dict
    ) -> None:
        """Ensure check mode with nothing pending says changed false."""
        folder = write_files(tmp_path / "m", BASE_FILES)
        migrate(db_args, folder)

        rc, result, _ = migrate(db_args, folder, check_mode=True)

        assert rc == 0 and result["changed"] is False and result["pending"] == []


class TestRefusals:
    def test_edited_files_are_all_reported_and_nothing_runs(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Ensure drift in applied files blocks the run and names every drifted file."""
        folder = write_files(tmp_path / "m", dict(list(BASE_FILES.items())[:3]))
        migrate(db_args, folder)
        write_files(
            folder,
            {
                "0001_create_feeds.up.sql": "CREATE TABLE feeds (id bigint);\n",
                "0002_seed_feeds.up.sql": "INSERT INTO feeds (url) VALUES ('c');\n",
                "0003_add_title.up.sql": BASE_FILES["0003_add_title.up.sql"],
            },
        )

        rc, result, _ = migrate(db_args, folder)

        assert rc == 1
        assert (
            "0001_create_feeds" in result["msg"] and "0002_seed_feeds" in result["msg"]
        )
        assert [item["version"] for item in result["drifted"]] == [1, 2]
        assert sorted(history(db)) == [1, 2]
        assert not db.execute(
            "SELECT count(*) FROM information_schema.columns"
            " WHERE column_name = 'title'"
        ).fetchone()[0]

    def test_drift_is_reported_in_check_mode_too(
        self, tmp_path: Path, db_args: dict
    ) -> None:
        """Verify check mode does not promise a run that would be refused."""
        folder = write_files(
            tmp_path / "m", {"0001_t.up.sql": "CREATE TABLE t (id int);"}
        )
        migrate(db_args, folder)
        write_files(folder, {"0001_t.up.sql": "CREATE TABLE t (id bigint);"})

        rc, result, _ = migrate(db_args, folder, check_mode=True)

        assert rc == 1
        assert "0001_t" in result["msg"]

    def test_failure_half_way_is_rolled_back_recorded_and_blocks(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Ensure a failing file is undone, recorded failed, and blocks the next run."""
        folder = write_files(
            tmp_path / "m",
            {
                "0001_create_feeds.up.sql": BASE_FILES["0001_create_feeds.up.sql"],
                "0002_broken.up.sql": "CREATE TABLE half_done (id int);\nSELECT 1/0;",
                "0003_after.up.sql": "CREATE TABLE after_broken (id int);\n",
            },
        )

        rc, result, _ = migrate(db_args, folder)

        assert rc == 1
        assert "0002_broken" in result["msg"] and "division by zero" in result["msg"]
        assert result["version"] == 2
        assert result["applied"] == [1]
        assert not table_exists(db, "half_done")
        assert not table_exists(db, "after_broken")
        status, error = history(db)[2][2], history(db)[2][6]
        assert status == "failed" and "division by zero" in error

        rc, result, _ = migrate(db_args, folder)

        assert rc == 1
        assert "0002_broken" in result["msg"] and "division by zero" in result["msg"]
        assert result["version"] == 2
        assert not table_exists(db, "after_broken")

    def test_statement_timeout_stops_a_slow_migration(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Verify statement_timeout applies to the migrations."""
        folder = write_files(
            tmp_path / "m", {"0001_slow.up.sql": "SELECT pg_sleep(5);"}
        )

        rc, result, _ = migrate(db_args, folder, statement_timeout="300ms")

        assert rc == 1
        assert "statement timeout" in result["msg"]
        assert history(db)[1][2] == "failed"

    def test_lock_timeout_gives_up_behind_a_busy_table(
        self,
        tmp_path: Path,
        db_args: dict,
        db: psycopg.Connection,
        pg_server: PostgresServer,
        pg_database: str,
    ) -> None:
        """Ensure lock_timeout stops a migration waiting for a table lock."""
        db.execute("CREATE TABLE busy (id int)")
        folder = write_files(
            tmp_path / "m", {"0001_alter.up.sql": "ALTER TABLE busy ADD c int;"}
        )

        with psycopg.connect(pg_server.dsn(pg_database)) as holder:
            holder.execute("LOCK TABLE busy IN ACCESS SHARE MODE")
            rc, result, _ = migrate(db_args, folder, lock_timeout="200ms")

        assert rc == 1
        assert "lock timeout" in result["msg"]


class TestLocking:
    def test_held_lock_names_its_holder(
        self,
        tmp_path: Path,
        db_args: dict,
        db: psycopg.Connection,
        pg_server: PostgresServer,
        pg_database: str,
    ) -> None:
        """Ensure a run that cannot get the lock names the holder: pid, app, since when."""
        folder = write_files(tmp_path / "m", BASE_FILES)
        dsn = f"{pg_server.dsn(pg_database)} application_name=release-blocker"

        with psycopg.connect(dsn, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
            pid = holder.info.backend_pid
            rc, result, _ = migrate(db_args, folder, lock_wait_timeout=1)

        assert rc == 1
        assert f"pid {pid}" in result["msg"]
        assert "release-blocker" in result["msg"]
        assert "from 127.0.0.1, connected since 20" in result["msg"]
        assert not table_exists(db, "schema_migrations")

    def test_two_runs_at_once_apply_each_migration_once(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Verify concurrent runs queue on the lock; the second has nothing to do."""
        folder = write_files(
            tmp_path / "m",
            {
                "0001_runs.up.sql": "CREATE TABLE runs (version int);\n",
                "0002_slow.up.sql": "SELECT pg_sleep(1); INSERT INTO runs VALUES (2);",
                "0003_more.up.sql": "INSERT INTO runs VALUES (3);\n",
            },
        )
        args = {**db_args, "path": str(folder)}

        children = [start_module_process("pg_migrate", args) for _ in range(2)]
        outcomes = [finish_module_process(child) for child in children]

        assert [rc for rc, _, _ in outcomes] == [0, 0], outcomes
        applied = sorted(result["applied"] for _, result, _ in outcomes)
        assert applied == [[], [1, 2, 3]]
        assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
        assert sorted(history(db)) == [1, 2, 3]


def test_folder_problems_fail_before_touching_the_database(
    tmp_path: Path, db_args: dict, db: psycopg.Connection
) -> None:
    """Ensure a malformed file name stops the run before the history table exists."""
    folder = write_files(
        tmp_path / "m", {**BASE_FILES, "4_no_padding.up.sql": "SELECT 1;"}
    )

    rc, result, _ = migrate(db_args, folder)

    assert rc == 1
    assert "4_no_padding.up.sql" in result["msg"]
    assert not table_exists(db, "schema_migrations")


def test_applies_the_services_own_migrations(
    repo_root: Path, db_args: dict, db: psycopg.Connection
) -> None:
    """Ensure the migrations shipped with the app apply cleanly, then rest."""
    folder = repo_root / "app" / "src" / "reading_history" / "migrations"
    up_files = sorted(folder.glob("*.up.sql"))
    versions = [int(path.name[:4]) for path in up_files]

    rc, result, _ = migrate(db_args, folder, app_release="test")
    again_rc, again, _ = migrate(db_args, folder)

    assert rc == 0, result
    assert versions and result["applied"] == versions
    assert result["current_version"] == result["target_version"] == versions[-1]
    recorded = {version: row[1] for version, row in history(db).items()}
    assert recorded == {int(path.name[:4]): sha256_file(path) for path in up_files}
    assert again_rc == 0 and again["changed"] is False


def test_versions_from_a_newer_release_are_left_alone(
    tmp_path: Path, db_args: dict, seed_history
) -> None:
    """Verify versions with no file (as after an app rollback) warn but do not block."""
    folder = write_files(tmp_path / "m", {"0001_step_1.up.sql": "SELECT 1;"})
    migrate(db_args, folder)
    seed_history((9, "applied"))

    rc, result, _ = migrate(db_args, folder)

    assert rc == 0, result
    assert result["changed"] is False
    assert result["current_version"] == 9 and result["target_version"] == 1
    # Ansible 2.19 modules report warnings as structured events, not plain strings.
    assert "newer than these migrations: 9" in json.dumps(result.get("warnings"))
