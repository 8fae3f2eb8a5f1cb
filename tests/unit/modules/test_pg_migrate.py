"""Unit tests of pg_migrate: file discovery, markers, checksums, SQL splitting, locking.

Nothing here touches a database; the connection is faked where one is needed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pg_migrate
import pytest
from ansible.module_utils.schema_history import HistoryRow
from module_harness import ModuleFail, run_module
from pg_migrate import (
    LOCK_KEY,
    Migration,
    MigrationFileError,
    acquire_lock,
    blocking_message,
    compare_with_history,
    discover_migrations,
    split_statements,
    wants_no_transaction,
)


def write(folder: Path, name: str, text: str = "SELECT 1;\n") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def migration(version: int, checksum: str = "c") -> Migration:
    return Migration(
        version, f"step_{version}", f"/m/{version}.up.sql", checksum, False
    )


def row(version: int, checksum: str = "c", status: str = "applied", error=None):
    return HistoryRow(version, f"step_{version}", checksum, status, error)


class TestDiscovery:
    def test_orders_by_version_not_by_name(self, tmp_path: Path) -> None:
        """Ensure migrations come out by version whatever their names and order."""
        write(tmp_path, "0010_aardvark.up.sql")
        write(tmp_path, "0002_zebra.up.sql")
        write(tmp_path, "0001_middle.up.sql")

        found = discover_migrations(str(tmp_path))

        assert [m.version for m in found] == [1, 2, 10]
        assert [m.name for m in found] == ["middle", "zebra", "aardvark"]

    def test_pairs_down_files_with_their_up_file(self, tmp_path: Path) -> None:
        """Verify a down file is discovered beside its up file and not run as one."""
        write(tmp_path, "0001_create_events.up.sql")
        write(tmp_path, "0001_create_events.down.sql", "DROP TABLE events;")

        [found] = discover_migrations(str(tmp_path))

        assert found.down_path == str(tmp_path / "0001_create_events.down.sql")
        assert found.up_path == str(tmp_path / "0001_create_events.up.sql")

    def test_ignores_files_that_are_not_sql(self, tmp_path: Path) -> None:
        """Ensure a README or a Python package marker next to migrations is ignored."""
        write(tmp_path, "0001_first.up.sql")
        write(tmp_path, "README.md", "notes")
        write(tmp_path, "__init__.py", "")
        (tmp_path / "0002_folder.up.sql").mkdir()

        assert [m.version for m in discover_migrations(str(tmp_path))] == [1]

    @pytest.mark.parametrize(
        "bad_name",
        [
            "001_short_number.up.sql",
            "00001_long_number.up.sql",
            "0001-dash.up.sql",
            "0001_CamelCase.up.sql",
            "0001_name.sql",
            "0001_name.up.SQL.sql",
            "0001__double.up.sql",
            "0001_name.sideways.sql",
        ],
    )
    def test_names_a_malformed_file(self, tmp_path: Path, bad_name: str) -> None:
        """Verify a .sql file outside the naming pattern fails, naming the file."""
        write(tmp_path, "0002_fine.up.sql")
        write(tmp_path, bad_name)

        with pytest.raises(MigrationFileError, match=bad_name.replace(".", r"\.")):
            discover_migrations(str(tmp_path))

    def test_names_both_files_of_a_duplicate_version(self, tmp_path: Path) -> None:
        """Ensure two up files of one version fail, naming both files."""
        write(tmp_path, "0003_one_way.up.sql")
        write(tmp_path, "0003_other_way.up.sql")

        with pytest.raises(MigrationFileError) as raised:
            discover_migrations(str(tmp_path))

        assert "0003_one_way.up.sql" in str(raised.value)
        assert "0003_other_way.up.sql" in str(raised.value)

    def test_version_zero_is_refused(self, tmp_path: Path) -> None:
        """Verify 0000 is refused, since the app reads version 0 as an empty schema."""
        write(tmp_path, "0000_nothing.up.sql")

        with pytest.raises(MigrationFileError, match="0000_nothing.up.sql"):
            discover_migrations(str(tmp_path))

    def test_rejects_a_down_file_without_up_file(self, tmp_path: Path) -> None:
        """Ensure a down file whose up file is missing or named otherwise fails."""
        write(tmp_path, "0001_first.up.sql")
        write(tmp_path, "0001_renamed.down.sql")

        with pytest.raises(MigrationFileError, match="0001_renamed.down.sql"):
            discover_migrations(str(tmp_path))

    def test_checksum_is_sha256_of_the_file_bytes(self, tmp_path: Path) -> None:
        """Verify the checksum covers the exact bytes, line endings included."""
        content = b"CREATE TABLE t (id int);\r\n"
        (tmp_path / "0001_t.up.sql").write_bytes(content)

        [found] = discover_migrations(str(tmp_path))

        assert found.checksum == hashlib.sha256(content).hexdigest()


class TestNoTransactionMarker:
    MARKER = "-- reading-history: no-transaction"

    @pytest.mark.parametrize(
        "content",
        [
            f"{MARKER}\nCREATE INDEX CONCURRENTLY i ON t (c);",
            f"{MARKER}\r\nSELECT 1;",
            MARKER,
        ],
    )
    def test_marker_on_the_first_line_is_recognised(self, content: str) -> None:
        """Ensure the exact marker line switches the file out of a transaction."""
        assert wants_no_transaction(content.encode())

    @pytest.mark.parametrize(
        "content",
        [
            f"SELECT 1;\n{MARKER}\n",
            f" {MARKER}\nSELECT 1;",
            f"{MARKER} please\nSELECT 1;",
            "-- reading-history:no-transaction\nSELECT 1;",
            f"{MARKER.upper()}\nSELECT 1;",
        ],
    )
    def test_anything_but_the_exact_first_line_is_not_the_marker(
        self, content: str
    ) -> None:
        """Verify near misses keep the file in a transaction."""
        assert not wants_no_transaction(content.encode())

    def test_discovery_records_the_marker(self, tmp_path: Path) -> None:
        """Ensure discovered migrations carry the marker flag of their file."""
        write(tmp_path, "0001_plain.up.sql")
        write(tmp_path, "0002_index.up.sql", f"{self.MARKER}\nCREATE INDEX i ON t (c);")

        flags = [m.no_transaction for m in discover_migrations(str(tmp_path))]

        assert flags == [False, True]


class TestSplitStatements:
    def test_splits_on_statement_ends(self) -> None:
        """Ensure each statement comes out alone, without its semicolon."""
        assert split_statements("SELECT 1; SELECT 2;\nSELECT 3") == [
            "SELECT 1",
            "SELECT 2",
            "SELECT 3",
        ]

    def test_keeps_semicolons_inside_strings_and_identifiers(self) -> None:
        """Verify quoted semicolons, doubled quotes and E-strings do not split."""
        text = "SELECT 'a;''b'; SELECT \"odd;name\" FROM t; SELECT E'it\\'s; fine'"
        assert split_statements(text) == [
            "SELECT 'a;''b'",
            'SELECT "odd;name" FROM t',
            "SELECT E'it\\'s; fine'",
        ]

    def test_keeps_dollar_quoted_bodies_whole(self) -> None:
        """Ensure a function body with semicolons stays one statement."""
        text = (
            "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;"
            "SELECT $$;$$;"
        )
        assert split_statements(text) == [
            "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql",
            "SELECT $$;$$",
        ]

    def test_comments_do_not_split_nor_count_as_statements(self) -> None:
        """Verify semicolons in comments are ignored and comment-only parts dropped."""
        text = (
            "-- reading-history: no-transaction\n-- a; b\n"
            "/* c; /* d; */ e; */\nSELECT 1;\n-- end;"
        )
        statements = split_statements(text)

        assert len(statements) == 1
        assert statements[0].endswith("SELECT 1")

    def test_identifier_with_dollar_is_not_a_quote(self) -> None:
        """Ensure a $ inside an identifier does not open a dollar-quoted string."""
        assert split_statements("SELECT a$b$ FROM t; SELECT 2") == [
            "SELECT a$b$ FROM t",
            "SELECT 2",
        ]


class TestHistoryComparison:
    def test_unrecorded_versions_are_pending_in_order(self) -> None:
        """Ensure only versions missing from the history are pending."""
        status = compare_with_history(
            [migration(1), migration(2), migration(3)], {1: row(1)}
        )

        assert [m.version for m in status.pending] == [2, 3]
        assert blocking_message(status) is None

    def test_every_drifted_version_is_reported(self) -> None:
        """Verify all edited files are listed, not just the first."""
        migrations = [migration(1, "new1"), migration(2, "same"), migration(3, "new3")]
        history = {1: row(1, "old1"), 2: row(2, "same"), 3: row(3, "old3")}

        status = compare_with_history(migrations, history)
        message = blocking_message(status)

        assert [item["version"] for item in status.drifted] == [1, 3]
        assert "0001_step_1" in message and "0003_step_3" in message
        assert "0002" not in message

    def test_failed_migration_blocks_with_version_and_error(self) -> None:
        """Ensure a failed history row blocks and names its version and error."""
        history = {
            1: row(1),
            2: row(2, status="failed", error='relation "x" does not exist'),
        }

        message = blocking_message(
            compare_with_history([migration(1), migration(2)], history)
        )

        assert "0002_step_2" in message
        assert 'relation "x" does not exist' in message

    def test_versions_without_files_are_reported_as_unknown(self) -> None:
        """Verify versions applied by a newer release are told apart, not pending."""
        status = compare_with_history([migration(1)], {1: row(1), 5: row(5)})

        assert status.unknown == [5]
        assert status.pending == []


class FakeLockConnection:
    """Answers pg_try_advisory_lock with a scripted sequence of results."""

    def __init__(self, answers: list[bool]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, list]] = []

    def execute(self, query: str, params: list):
        self.calls.append((query, params))
        answer = self.answers.pop(0)
        return type("Cursor", (), {"fetchone": lambda self: (answer,)})()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class TestLock:
    def test_waits_until_the_lock_is_free(self) -> None:
        """Ensure the lock is retried until granted within the wait."""
        clock = FakeClock()
        conn = FakeLockConnection([False, False, True])

        assert acquire_lock(conn, 5, clock=clock, sleep=clock.sleep)
        assert len(conn.calls) == 3
        assert all(params == [LOCK_KEY] for _, params in conn.calls)

    def test_gives_up_after_the_wait(self) -> None:
        """Verify the wait is bounded: a held lock yields False near the deadline."""
        clock = FakeClock()
        conn = FakeLockConnection([False] * 100)

        assert not acquire_lock(conn, 2, clock=clock, sleep=clock.sleep)
        assert 2 <= clock.now < 2.5

    def test_lock_key_is_the_one_documented(self) -> None:
        """Ensure the key matches the number the documentation gives the app."""
        assert LOCK_KEY == int.from_bytes(b"readhist", "big") == 8243101776847926132
        assert str(LOCK_KEY) in pg_migrate.DOCUMENTATION


@pytest.fixture
def no_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to connect fail the test: validation must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the module connected before validating its arguments")

    monkeypatch.setattr(pg_migrate, "connect", refuse)


class TestArguments:
    def base_args(self, folder: Path) -> dict:
        return {"path": str(folder), "database": "reading_history"}

    @pytest.mark.parametrize(
        ("option", "value", "message"),
        [
            ("lock_timeout", "5 parsecs", "lock_timeout '5 parsecs'"),
            ("statement_timeout", "-1s", "statement_timeout '-1s'"),
            ("lock_wait_timeout", -1, "lock_wait_timeout must not be negative"),
            ("database", "", "database must not be empty"),
        ],
    )
    def test_rejects_bad_values_before_connecting(
        self, tmp_path: Path, no_connection: None, option: str, value, message: str
    ) -> None:
        """Ensure each bad option fails with a message naming it, before any SQL."""
        with pytest.raises(ModuleFail) as failed:
            run_module(pg_migrate, {**self.base_args(tmp_path), option: value})

        assert message in failed.value.result["msg"]

    def test_missing_folder_fails(self, tmp_path: Path, no_connection: None) -> None:
        """Verify a folder that does not exist is named in the failure."""
        args = self.base_args(tmp_path / "absent")

        with pytest.raises(ModuleFail, match="absent"):
            run_module(pg_migrate, args)

    def test_malformed_folder_fails_before_connecting(
        self, tmp_path: Path, no_connection: None
    ) -> None:
        """Ensure a bad file name stops the module before it reaches the database."""
        write(tmp_path, "1_bad.up.sql")

        with pytest.raises(ModuleFail, match="1_bad.up.sql"):
            run_module(pg_migrate, self.base_args(tmp_path))

    def test_path_and_database_are_required(self) -> None:
        """Verify the required options are enforced by the argument spec."""
        with pytest.raises(ModuleFail) as failed:
            run_module(pg_migrate, {})

        assert "path" in failed.value.result["msg"]
        assert "database" in failed.value.result["msg"]

    def test_unknown_ssl_mode_is_refused(self, tmp_path: Path) -> None:
        """Ensure ssl_mode only takes libpq's modes."""
        with pytest.raises(ModuleFail, match="ssl_mode"):
            run_module(
                pg_migrate, {**self.base_args(tmp_path), "ssl_mode": "sometimes"}
            )
