"""Integration tests of pg_migrate's operations: concurrency, failures and their
resolution, drift, lock timeouts under traffic, downgrades and read-only databases.

Each test writes its own migration files, runs the module in a child Python as
Ansible would, and checks the database through separate sessions.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from module_harness import (
    finish_module_process,
    run_module_process,
    start_module_process,
)
from pgserver import PostgresServer

MARKER = "-- reading-history: no-transaction"


def write_files(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def migrate(db_args: dict, folder: Path, check_mode: bool = False, **options: Any):
    args = {**db_args, "path": str(folder), **options}
    return run_module_process("pg_migrate", args, check_mode=check_mode)


def history(db: psycopg.Connection) -> dict[int, dict[str, Any]]:
    rows = db.execute(
        "SELECT row_to_json(m) FROM schema_migrations m ORDER BY version"
    ).fetchall()
    return {row[0]["version"]: row[0] for row in rows}


def log(db: psycopg.Connection) -> list[dict[str, Any]]:
    rows = db.execute(
        "SELECT row_to_json(l) FROM schema_migrations_log l ORDER BY id"
    ).fetchall()
    return [row[0] for row in rows]


def actions(db: psycopg.Connection, version: int) -> list[str]:
    return [entry["action"] for entry in log(db) if entry["version"] == version]


def table_exists(db: psycopg.Connection, name: str) -> bool:
    return db.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()[0]


def column_exists(db: psycopg.Connection, table: str, column: str) -> bool:
    return bool(
        db.execute(
            "SELECT count(*) FROM information_schema.columns"
            " WHERE table_name = %s AND column_name = %s",
            [table, column],
        ).fetchone()[0]
    )


def index_state(db: psycopg.Connection, name: str) -> bool | None:
    """True for a valid index, False for an invalid one, None when there is none."""
    row = db.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [name]
    ).fetchone()
    return row[0] if row else None


def warnings_of(result: dict) -> str:
    # Ansible 2.19 modules report warnings as structured events, not plain strings.
    return json.dumps(result.get("warnings"))


FEEDS = {
    "0001_create_feeds.up.sql": "CREATE TABLE feeds (id serial PRIMARY KEY, url text);\n"
    "INSERT INTO feeds (url) VALUES ('a'), ('');\n",
}


class TestConcurrentRunners:
    def test_two_runners_with_a_concurrent_index_finish_without_deadlock(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Ensure a waiting runner never blocks CREATE INDEX CONCURRENTLY of the other."""
        folder = write_files(
            tmp_path / "m",
            {
                "0001_events.up.sql": "CREATE TABLE events (id int, kind int);\n"
                "INSERT INTO events SELECT g, g % 97 FROM generate_series(1, 300000) g;\n",
                "0002_index.up.sql": f"{MARKER}\n"
                "CREATE INDEX CONCURRENTLY events_kind_idx ON events (kind);\n"
                "CREATE INDEX CONCURRENTLY events_id_idx ON events (id);\n",
                "0003_after.up.sql": "CREATE TABLE after_index (id int);\n",
            },
        )
        args = {**db_args, "path": str(folder), "lock_wait_timeout": 60}

        started = time.monotonic()
        children = [start_module_process("pg_migrate", args) for _ in range(2)]
        outcomes = [finish_module_process(child) for child in children]
        took = time.monotonic() - started

        assert [rc for rc, _, _ in outcomes] == [0, 0], outcomes
        assert sorted(result["applied"] for _, result, _ in outcomes) == [[], [1, 2, 3]]
        assert [result["changed"] for _, result, _ in outcomes].count(True) == 1
        assert index_state(db, "events_kind_idx") is True
        assert index_state(db, "events_id_idx") is True
        assert sorted(history(db)) == [1, 2, 3]
        assert [e["action"] for e in log(db)] == ["applied"] * 3
        assert took < 60


FAILING_FILES = {
    **FEEDS,
    "0002_require_url.up.sql": "ALTER TABLE feeds ADD COLUMN title text;\n"
    "ALTER TABLE feeds ADD CONSTRAINT feeds_url_set CHECK (url <> '');\n",
    "0003_after.up.sql": "CREATE TABLE after_feeds (id int);\n",
}


class TestFailureAndResolution:
    def fail_once(self, tmp_path: Path, db_args: dict, db: psycopg.Connection):
        folder = write_files(tmp_path / "m", FAILING_FILES)
        rc, result, _ = migrate(db_args, folder, applied_by="ci")
        assert rc == 1
        assert result["version"] == 2 and result["applied"] == [1]
        assert "0002_require_url failed and was rolled back" in result["msg"]
        assert "violated by some row" in result["msg"]
        return folder

    def test_failure_is_recorded_and_blocks_until_resolved(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Ensure a failed migration is kept as failed and stops every later run."""
        folder = self.fail_once(tmp_path, db_args, db)

        row = history(db)[2]
        assert row["status"] == "failed" and "violated by some row" in row["error"]
        assert row["applied_by"] == "ci"
        assert not column_exists(db, "feeds", "title")
        assert actions(db, 2) == ["failed"]

        rc, result, _ = migrate(db_args, folder)
        check_rc, check, _ = migrate(db_args, folder, check_mode=True)

        for code, outcome in ((rc, result), (check_rc, check)):
            assert code == 1 and outcome["version"] == 2
            assert "0002_require_url failed" in outcome["msg"]
            assert "violated by some row" in outcome["msg"]
            assert "resolve={version: 2, action: retry}" in outcome["msg"]
        assert not table_exists(db, "after_feeds")
        assert actions(db, 2) == ["failed"]

    def test_retry_runs_it_again_and_records_who_resolved_it(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Verify resolve retry re-runs the migration once its cause is fixed."""
        folder = self.fail_once(tmp_path, db_args, db)
        db.execute("DELETE FROM feeds WHERE url = ''")
        resolve = {"version": 2, "action": "retry"}

        check_rc, check, _ = migrate(db_args, folder, check_mode=True, resolve=resolve)
        assert check_rc == 0 and check["pending"] == [2, 3] and check["changed"]
        assert history(db)[2]["status"] == "failed"

        rc, result, _ = migrate(db_args, folder, resolve=resolve, applied_by="alice")
        again_rc, again, _ = migrate(db_args, folder, resolve=resolve)

        assert rc == 0, result
        assert result["applied"] == [2, 3]
        assert result["resolved"] == {
            "version": 2,
            "name": "require_url",
            "action": "retry",
        }
        row = history(db)[2]
        assert row["status"] == "applied" and row["resolution"] == "retry"
        assert row["resolved_by"] == "alice" and row["resolved_at"]
        # The error it resolved stays with the row; the log has the whole story.
        assert "violated by some row" in row["error"]
        assert actions(db, 2) == ["failed", "resolved_retry", "applied"]
        assert column_exists(db, "feeds", "title") and table_exists(db, "after_feeds")
        assert again_rc == 0 and again["changed"] is False
        assert "already applied" in warnings_of(again)

    def test_mark_applied_records_a_manual_fix_without_running_it(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Ensure mark_applied records the version as applied and goes on after it."""
        folder = self.fail_once(tmp_path, db_args, db)
        # The operator does by hand what the file meant to do, keeping the odd row.
        db.execute("UPDATE feeds SET url = 'unknown' WHERE url = ''")
        db.execute("ALTER TABLE feeds ADD COLUMN title text")
        db.execute("ALTER TABLE feeds ADD CONSTRAINT feeds_url_set CHECK (url <> '')")

        rc, result, _ = migrate(
            db_args,
            folder,
            resolve={"version": 2, "action": "mark_applied"},
            applied_by="bob",
        )

        assert rc == 0, result
        assert result["applied"] == [3]
        assert result["resolved"]["action"] == "mark_applied"
        row = history(db)[2]
        assert (row["status"], row["resolution"], row["resolved_by"]) == (
            "applied",
            "mark_applied",
            "bob",
        )
        [entry] = [e for e in log(db) if e["action"] == "resolved_mark_applied"]
        assert entry["performed_by"] == "bob" and "violated" in entry["detail"]
        assert db.execute(
            "SELECT coalesce(max(version), 0) FROM schema_migrations"
            " WHERE status = 'applied'"
        ).fetchone() == (3,)

    def test_no_transaction_retry_resumes_at_the_failed_statement(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Verify statements committed before the failure are not run twice."""
        folder = write_files(
            tmp_path / "m",
            {
                "0001_create_feeds.up.sql": "CREATE TABLE feeds (id int, url text);\n"
                "INSERT INTO feeds VALUES (1, 'a'), (2, 'a');\n",
                "0002_indexes.up.sql": f"{MARKER}\n"
                "CREATE INDEX CONCURRENTLY feeds_url_idx ON feeds (url);\n"
                "CREATE UNIQUE INDEX CONCURRENTLY feeds_url_key ON feeds (url);\n"
                "CREATE INDEX CONCURRENTLY feeds_id_url_idx ON feeds (id, url);\n",
            },
        )
        rc, result, _ = migrate(db_args, folder)
        assert rc == 1
        assert "may be partly applied: statement 2 of 3 failed" in result["msg"]
        assert "could not create unique index" in result["msg"]
        assert history(db)[2]["failed_statement"] == 2
        assert index_state(db, "feeds_url_idx") is True
        assert index_state(db, "feeds_url_key") is False

        db.execute("UPDATE feeds SET url = 'b' WHERE id = 2")
        rc, result, _ = migrate(
            db_args, folder, resolve={"version": 2, "action": "retry"}
        )

        # Statement 1 would fail with "already exists" if it ran again.
        assert rc == 0, result
        assert "dropped the invalid index public.feeds_url_key" in warnings_of(result)
        for name in ("feeds_url_idx", "feeds_url_key", "feeds_id_url_idx"):
            assert index_state(db, name) is True, name
        assert history(db)[2]["failed_statement"] is None


class TestDrift:
    def test_edited_file_is_reported_before_anything_runs_then_accepted(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Ensure drift blocks the run, and accepting it is recorded with both sums."""
        folder = write_files(tmp_path / "m", FEEDS)
        migrate(db_args, folder)
        old = history(db)[1]["checksum"]
        write_files(
            folder,
            {
                "0001_create_feeds.up.sql": "-- Feeds users follow.\n"
                + FEEDS["0001_create_feeds.up.sql"],
                "0002_add_title.up.sql": "ALTER TABLE feeds ADD COLUMN title text;\n",
            },
        )

        rc, result, _ = migrate(db_args, folder)

        assert rc == 1
        assert "0001_create_feeds" in result["msg"]
        assert "accept_checksums: [1]" in result["msg"]
        [drift] = result["drifted"]
        assert drift["recorded"] == old and drift["file"] != old
        assert not column_exists(db, "feeds", "title")
        assert sorted(history(db)) == [1]

        check_rc, check, _ = migrate(
            db_args, folder, check_mode=True, accept_checksums=[1]
        )
        assert check_rc == 0 and check["changed"] is True
        assert [item["version"] for item in check["accepted"]] == [1]
        assert check["pending"] == [2]
        assert history(db)[1]["checksum"] == old

        rc, result, _ = migrate(
            db_args, folder, accept_checksums=[1], applied_by="carol"
        )

        assert rc == 0, result
        assert result["accepted"] == [
            {
                "version": 1,
                "name": "create_feeds",
                "previous": old,
                "checksum": drift["file"],
            }
        ]
        assert result["applied"] == [2]
        row = history(db)[1]
        assert (row["checksum"], row["previous_checksum"]) == (drift["file"], old)
        assert row["checksum_accepted_by"] == "carol" and row["checksum_accepted_at"]
        [entry] = [e for e in log(db) if e["action"] == "checksum_accepted"]
        assert (entry["checksum"], entry["previous_checksum"]) == (drift["file"], old)
        assert entry["performed_by"] == "carol"

        rc, result, _ = migrate(db_args, folder, accept_checksums=[1])
        assert rc == 0 and result["changed"] is False and result["accepted"] == []


class Reader(threading.Thread):
    """Queries a table in a loop and keeps how long each query took."""

    def __init__(self, dsn: str, query: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.query = query
        self.durations: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.done.is_set():
                started = time.monotonic()
                conn.execute(self.query).fetchall()
                self.durations.append(time.monotonic() - started)
                time.sleep(0.005)

    def stop(self) -> float:
        self.done.set()
        self.join(timeout=30)
        return max(self.durations)


ADD_NOTE = {"0001_add_column.up.sql": "ALTER TABLE busy ADD COLUMN note text;\n"}


class TestLockTimeout:
    @pytest.fixture
    def busy(self, db: psycopg.Connection, pg_server: PostgresServer, pg_database: str):
        """Create a table, a long transaction reading it and a reader polling it."""
        db.execute("CREATE TABLE busy (id int)")
        db.execute("INSERT INTO busy SELECT generate_series(1, 1000)")
        holder = psycopg.connect(pg_server.dsn(pg_database))
        holder.execute("SELECT count(*) FROM busy").fetchone()
        reader = Reader(pg_server.dsn(pg_database), "SELECT count(*) FROM busy")
        reader.start()
        time.sleep(0.2)
        yield holder, reader
        reader.done.set()
        holder.close()

    def test_migration_gives_up_and_readers_never_wait_longer(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection, busy
    ) -> None:
        """Ensure the migration fails on its lock timeout, holding readers up no longer."""
        holder, reader = busy
        folder = write_files(tmp_path / "m", ADD_NOTE)

        rc, result, _ = migrate(db_args, folder, lock_timeout="1s")
        longest = reader.stop()

        assert rc == 1
        assert "0001_add_column failed and was rolled back" in result["msg"]
        assert "lock timeout" in result["msg"]
        assert history(db)[1]["status"] == "failed"
        assert not column_exists(db, "busy", "note")
        # Queued behind the migration's request, the reader waited, but not past it.
        assert 0.5 < longest < 1.5, longest
        holder.rollback()

    def test_lock_retries_get_through_once_the_transaction_ends(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection, busy
    ) -> None:
        """Verify a lock timeout is retried, each wait still bounded for readers."""
        holder, reader = busy
        folder = write_files(tmp_path / "m", ADD_NOTE)
        threading.Timer(1.5, holder.rollback).start()

        rc, result, _ = migrate(
            db_args, folder, lock_timeout="400ms", lock_retries=10, lock_retry_delay=0.3
        )
        longest = reader.stop()

        assert rc == 0, result
        assert result["applied"] == [1]
        assert result["lock_retries_used"] >= 1
        assert column_exists(db, "busy", "note")
        assert actions(db, 1) == ["applied"]
        assert longest < 0.9, longest

    def test_interrupted_concurrent_index_is_rebuilt_on_retry(
        self,
        tmp_path: Path,
        db_args: dict,
        db: psycopg.Connection,
        pg_server: PostgresServer,
        pg_database: str,
    ) -> None:
        """Ensure a build cut short by the lock timeout leaves no invalid index after."""
        db.execute("CREATE TABLE events (id int)")
        folder = write_files(
            tmp_path / "m",
            {
                "0001_index.up.sql": f"{MARKER}\n"
                "CREATE INDEX CONCURRENTLY events_id_idx ON events (id);\n"
            },
        )
        # An open write transaction: the build waits for it after its first phase.
        writer = psycopg.connect(pg_server.dsn(pg_database))
        writer.execute("INSERT INTO events VALUES (1)")

        rc, result, _ = migrate(db_args, folder, lock_timeout="300ms")

        assert rc == 1 and "lock timeout" in result["msg"]
        assert index_state(db, "events_id_idx") is False
        assert history(db)[1]["failed_statement"] == 1

        writer.commit()
        writer.close()
        rc, result, _ = migrate(
            db_args, folder, resolve={"version": 1, "action": "retry"}
        )

        assert rc == 0, result
        assert "dropped the invalid index public.events_id_idx" in warnings_of(result)
        assert index_state(db, "events_id_idx") is True


DOWNGRADABLE = {
    "0001_create_feeds.up.sql": "CREATE TABLE feeds (id int PRIMARY KEY, url text);\n",
    "0001_create_feeds.down.sql": "DROP TABLE feeds;\nINSERT INTO undo_order VALUES (1);\n",
    "0002_add_title.up.sql": "ALTER TABLE feeds ADD COLUMN title text;\n",
    "0002_add_title.down.sql": "ALTER TABLE feeds DROP COLUMN title;\n"
    "INSERT INTO undo_order VALUES (2);\n",
    "0003_index_url.up.sql": "CREATE INDEX feeds_url_idx ON feeds (url);\n",
    "0003_index_url.down.sql": "DROP INDEX feeds_url_idx;\n"
    "INSERT INTO undo_order VALUES (3);\n",
}


class TestDowngrade:
    @pytest.fixture(autouse=True)
    def undo_order(self, db: psycopg.Connection) -> None:
        """Create a table outside the migrations where each down file notes its turn."""
        db.execute("CREATE TABLE undo_order (version int, at serial)")

    def undone(self, db: psycopg.Connection) -> list[int]:
        return [r[0] for r in db.execute("SELECT version FROM undo_order ORDER BY at")]

    def test_downgrade_then_upgrade_again(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Ensure down files run highest first, drop their rows, and can be re-applied."""
        folder = write_files(tmp_path / "m", DOWNGRADABLE)
        migrate(db_args, folder)

        check_rc, check, _ = migrate(db_args, folder, check_mode=True, target_version=1)
        assert check_rc == 0 and check["pending_revert"] == [3, 2] and check["changed"]
        assert sorted(history(db)) == [1, 2, 3] and self.undone(db) == []

        rc, result, _ = migrate(db_args, folder, target_version=1, applied_by="dave")

        assert rc == 0, result
        assert result["reverted"] == [3, 2] and result["applied"] == []
        assert (result["current_version"], result["target_version"]) == (1, 1)
        assert self.undone(db) == [3, 2]
        assert sorted(history(db)) == [1]
        assert not column_exists(db, "feeds", "title")
        assert index_state(db, "feeds_url_idx") is None
        reverted = [e for e in log(db) if e["action"] == "reverted"]
        assert [e["version"] for e in reverted] == [3, 2]
        assert all(e["performed_by"] == "dave" for e in reverted)

        again_rc, again, _ = migrate(db_args, folder, target_version=1)
        assert again_rc == 0 and again["changed"] is False

        rc, result, _ = migrate(db_args, folder)

        assert rc == 0, result
        assert result["applied"] == [2, 3]
        assert column_exists(db, "feeds", "title")
        assert index_state(db, "feeds_url_idx") is True
        assert actions(db, 3) == ["applied", "reverted", "applied"]

    def test_missing_down_file_stops_before_anything_runs(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Verify a version without a down file is named and nothing is undone."""
        folder = write_files(
            tmp_path / "m",
            {
                **DOWNGRADABLE,
                "0004_seed.up.sql": "INSERT INTO feeds VALUES (1, 'a');\n",
            },
        )
        migrate(db_args, folder)

        rc, result, _ = migrate(db_args, folder, target_version=1)

        assert rc == 1
        assert "cannot migrate down to version 1" in result["msg"]
        assert "0004_seed has no down file" in result["msg"]
        assert self.undone(db) == []
        assert sorted(history(db)) == [1, 2, 3, 4]

    def test_failed_down_file_is_rolled_back_and_logged(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Ensure a failing down file changes nothing and the version stays applied."""
        folder = write_files(
            tmp_path / "m",
            {
                **DOWNGRADABLE,
                "0003_index_url.down.sql": "INSERT INTO undo_order VALUES (3);\n"
                "DROP INDEX no_such_index;\n",
            },
        )
        migrate(db_args, folder)

        rc, result, _ = migrate(db_args, folder, target_version=1)

        assert rc == 1 and result["version"] == 3
        assert (
            "undoing migration 0003_index_url failed and was rolled back"
            in result["msg"]
        )
        assert "no_such_index" in result["msg"]
        assert result["reverted"] == [] and result["pending_revert"] == [3, 2]
        assert self.undone(db) == []
        assert history(db)[3]["status"] == "applied"
        assert actions(db, 3) == ["applied", "revert_failed"]

    def test_up_only_to_the_target(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection
    ) -> None:
        """Verify target_version above the database applies up to it and no further."""
        folder = write_files(tmp_path / "m", DOWNGRADABLE)

        rc, result, _ = migrate(db_args, folder, target_version=2)

        assert rc == 0, result
        assert result["applied"] == [1, 2]
        assert sorted(history(db)) == [1, 2]
        assert index_state(db, "feeds_url_idx") is None


class TestSessions:
    def test_migrates_a_database_that_defaults_to_read_only(
        self,
        tmp_path: Path,
        db_args: dict,
        db: psycopg.Connection,
        pg_server: PostgresServer,
        pg_database: str,
    ) -> None:
        """Ensure the module writes for itself while others still may not."""
        db.execute(
            f'ALTER DATABASE "{pg_database}" SET default_transaction_read_only = on'
        )
        folder = write_files(tmp_path / "m", FEEDS)

        rc, result, _ = migrate(db_args, folder)

        assert rc == 0, result
        assert result["applied"] == [1]
        with (
            psycopg.connect(pg_server.dsn(pg_database)) as other,
            pytest.raises(psycopg.errors.ReadOnlySqlTransaction),
        ):
            other.execute("INSERT INTO feeds (url) VALUES ('x')")

    def test_history_of_the_first_shape_is_upgraded_in_place(
        self, tmp_path: Path, db_args: dict, db: psycopg.Connection, seed_history
    ) -> None:
        """Verify an old history table gains the new columns and keeps its rows."""
        folder = write_files(tmp_path / "m", {"0001_step_1.up.sql": "SELECT 1;\n"})
        seed_history((1, "applied"))
        checksum = hashlib.sha256(b"SELECT 1;\n").hexdigest()
        db.execute("UPDATE schema_migrations SET checksum = %s", [checksum])

        check_rc, check, _ = migrate(db_args, folder, check_mode=True)
        assert check_rc == 0 and check["changed"] is False
        assert not table_exists(db, "schema_migrations_log")

        rc, result, _ = migrate(db_args, folder)
        again_rc, again, _ = migrate(db_args, folder)

        assert rc == 0 and result["changed"] is True and result["applied"] == []
        assert table_exists(db, "schema_migrations_log")
        assert column_exists(db, "schema_migrations", "resolved_by")
        assert history(db)[1]["status"] == "applied"
        assert again_rc == 0 and again["changed"] is False
