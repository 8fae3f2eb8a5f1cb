"""Unit tests of pg_migrate: files, markers, checksums, SQL splitting, plans, locking.

Nothing here touches a database; the connection is faked where one is needed.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path

import pg_migrate
import pytest
from ansible.module_utils import schema_history
from ansible.module_utils.schema_history import HistoryRow
from module_harness import ModuleFail, run_module
from pg_migrate import (
    LOCK_KEY,
    Migration,
    MigrationFileError,
    Migrator,
    StepFailed,
    acquire_lock,
    concurrent_index_name,
    describe_holder,
    discover_migrations,
    make_plan,
    split_statements,
    wants_no_transaction,
)
from psycopg import errors as psycopg_errors

MARKER = "-- reading-history: no-transaction"


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


class TestPlan:
    def test_unrecorded_versions_are_pending_in_order(self) -> None:
        """Ensure only versions missing from the history are pending."""
        plan = make_plan([migration(1), migration(2), migration(3)], {1: row(1)})

        assert [m.version for m in plan.up] == [2, 3]
        assert plan.down == [] and plan.problems == []
        assert plan.target == 3

    def test_every_drifted_version_is_reported(self) -> None:
        """Verify all edited files are listed, not just the first, with the way out."""
        migrations = [migration(1, "new1"), migration(2, "same"), migration(3, "new3")]
        history = {1: row(1, "old1"), 2: row(2, "same"), 3: row(3, "old3")}

        plan = make_plan(migrations, history)
        [message] = plan.problems

        assert [item["version"] for item in plan.drifted] == [1, 3]
        assert "0001_step_1" in message and "0003_step_3" in message
        assert "0002" not in message
        assert "accept_checksums: [1, 3]" in message

    def test_accepted_drift_no_longer_blocks(self) -> None:
        """Ensure a listed version is accepted with both checksums, others still block."""
        migrations = [migration(1, "new1"), migration(2, "new2"), migration(3)]
        history = {1: row(1, "old1"), 2: row(2, "old2")}

        plan = make_plan(migrations, history, accept=[1])

        assert plan.accept == [
            {"version": 1, "name": "step_1", "previous": "old1", "checksum": "new1"}
        ]
        assert [item["version"] for item in plan.drifted] == [2]
        assert len(plan.problems) == 1 and "0002_step_2" in plan.problems[0]

    def test_accepting_a_matching_checksum_changes_nothing(self) -> None:
        """Verify accept_checksums left set after the acceptance is a no-op."""
        plan = make_plan([migration(1)], {1: row(1)}, accept=[1])

        assert plan.accept == [] and plan.problems == [] and not plan.changes

    def test_accepting_a_version_that_is_not_applied_warns(self) -> None:
        """Ensure a pending or unknown version in accept_checksums is named, not run."""
        plan = make_plan([migration(1), migration(2)], {1: row(1)}, accept=[2, 9])

        assert plan.accept == []
        assert [w for w in plan.warnings if "version 2" in w]
        assert [w for w in plan.warnings if "version 9" in w]

    def test_failed_migration_blocks_with_version_error_and_way_out(self) -> None:
        """Ensure a failed history row blocks, naming version, error and resolve."""
        history = {
            1: row(1),
            2: row(2, status="failed", error='relation "x" does not exist'),
        }

        plan = make_plan([migration(1), migration(2)], history)
        [message] = plan.problems

        assert [r.version for r in plan.failed] == [2]
        assert "0002_step_2" in message
        assert 'relation "x" does not exist' in message
        assert "resolve={version: 2, action: retry}" in message
        assert plan.up == []

    def test_retry_makes_the_failed_version_pending_again(self) -> None:
        """Verify resolve retry lifts the block and runs the version with the rest."""
        history = {1: row(1), 2: row(2, status="failed", error="boom")}
        resolve = {"version": 2, "action": "retry"}

        plan = make_plan(
            [migration(1), migration(2), migration(3)], history, resolve=resolve
        )

        assert plan.problems == []
        assert plan.resolve == {"version": 2, "name": "step_2", "action": "retry"}
        assert [m.version for m in plan.up] == [2, 3]

    def test_mark_applied_lifts_the_block_without_running_it(self) -> None:
        """Ensure mark_applied counts the version as applied and runs only later ones."""
        history = {1: row(1), 2: row(2, status="failed", error="boom")}
        resolve = {"version": 2, "action": "mark_applied"}

        plan = make_plan(
            [migration(1), migration(2), migration(3)], history, resolve=resolve
        )

        assert plan.problems == []
        assert plan.resolve["action"] == "mark_applied"
        assert [m.version for m in plan.up] == [3]

    def test_resolving_another_version_leaves_the_block(self) -> None:
        """Verify resolving the wrong version neither runs anything nor unblocks."""
        history = {1: row(1), 2: row(2, status="failed", error="boom")}

        plan = make_plan(
            [migration(1), migration(2)],
            history,
            resolve={"version": 1, "action": "retry"},
        )

        assert plan.resolve is None
        assert any("already applied" in warning for warning in plan.warnings)
        assert len(plan.problems) == 1 and "0002_step_2" in plan.problems[0]

    def test_resolve_without_history_row_only_warns(self) -> None:
        """Ensure a resolve option left over from an earlier run does not fail."""
        plan = make_plan([migration(1)], {}, resolve={"version": 1, "action": "retry"})

        assert plan.problems == [] and plan.resolve is None
        assert [m.version for m in plan.up] == [1]
        assert any("no history row" in warning for warning in plan.warnings)

    def test_versions_without_files_are_left_alone_without_a_target(self) -> None:
        """Verify versions applied by a newer release warn and are not undone."""
        plan = make_plan([migration(1)], {1: row(1), 5: row(5)})

        assert plan.down == [] and plan.up == [] and plan.problems == []
        assert any("newer than these migrations: 5" in w for w in plan.warnings)

    def test_versions_without_files_block_an_explicit_target(self) -> None:
        """Ensure a target below a version with no file fails before anything runs."""
        plan = make_plan([migration(1)], {1: row(1), 5: row(5)}, target_version=1)

        assert plan.down == []
        assert "cannot migrate down to version 1" in plan.problems[0]
        assert "version 5 has no file here" in plan.problems[0]


def with_down(version: int, folder: Path, text: str = "SELECT 1;\n") -> Migration:
    down = write(folder, f"{version:04d}_step_{version}.down.sql", text)
    return Migration(
        version, f"step_{version}", f"/m/{version}.up.sql", "c", False, str(down)
    )


class TestTargetVersion:
    def test_down_files_run_highest_first_down_to_the_target(
        self, tmp_path: Path
    ) -> None:
        """Ensure the versions above the target are undone from the top."""
        migrations = [with_down(v, tmp_path) for v in (1, 2, 3, 4)]
        history = {v: row(v) for v in (1, 2, 3, 4)}

        plan = make_plan(migrations, history, target_version=1)

        assert [m.version for m in plan.down] == [4, 3, 2]
        assert plan.up == [] and plan.problems == []

    def test_target_zero_undoes_everything(self, tmp_path: Path) -> None:
        """Verify target_version 0 undoes every applied version."""
        migrations = [with_down(v, tmp_path) for v in (1, 2)]

        plan = make_plan(migrations, {1: row(1), 2: row(2)}, target_version=0)

        assert [m.version for m in plan.down] == [2, 1]

    def test_missing_down_files_stop_the_plan_naming_each(self, tmp_path: Path) -> None:
        """Ensure every version without a down file is named and nothing is undone."""
        migrations = [
            with_down(1, tmp_path),
            migration(2),
            with_down(3, tmp_path),
            migration(4),
        ]
        history = {v: row(v) for v in (1, 2, 3, 4)}

        plan = make_plan(migrations, history, target_version=1)

        assert plan.down == []
        [message] = plan.problems
        assert "0004_step_4 has no down file" in message
        assert "0002_step_2 has no down file" in message
        assert "0003" not in message

    def test_down_file_marked_no_transaction_is_refused(self, tmp_path: Path) -> None:
        """Verify a down file must run in a transaction."""
        marked = with_down(2, tmp_path, f"{MARKER}\nDROP INDEX CONCURRENTLY i;\n")

        plan = make_plan([with_down(1, tmp_path), marked], {1: row(1), 2: row(2)}, 1)

        assert plan.down == []
        assert "0002_step_2.down.sql is marked no-transaction" in plan.problems[0]

    def test_up_only_to_the_target(self) -> None:
        """Ensure a target above the applied version applies only up to it."""
        migrations = [migration(v) for v in (1, 2, 3, 4)]

        plan = make_plan(migrations, {1: row(1)}, target_version=3)

        assert [m.version for m in plan.up] == [2, 3]
        assert plan.down == [] and plan.target == 3

    def test_target_without_a_file_is_refused(self) -> None:
        """Verify a target that names no migration fails, naming the highest."""
        plan = make_plan([migration(1), migration(2)], {}, target_version=7)

        assert plan.problems == [
            "target_version 7 has no migration file here (the highest is 2)"
        ]
        assert plan.up == []

    def test_resolving_above_the_target_is_refused(self) -> None:
        """Ensure a failed version above the target cannot be retried by a downgrade."""
        history = {1: row(1), 2: row(2, status="failed", error="boom")}

        plan = make_plan(
            [migration(1), migration(2)],
            history,
            target_version=1,
            resolve={"version": 2, "action": "retry"},
        )

        assert any("above the target version 1" in p for p in plan.problems)


class TestConcurrentIndexName:
    @pytest.mark.parametrize(
        ("statement", "name"),
        [
            ("CREATE INDEX CONCURRENTLY feeds_url ON feeds (url)", "feeds_url"),
            ("create unique index concurrently u_key on t (a)", "u_key"),
            (
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS i\n  ON t (a)",
                "i",
            ),
            ('CREATE INDEX CONCURRENTLY "Odd ""Name""" ON t (a)', '"Odd ""Name"""'),
            ("CREATE INDEX CONCURRENTLY public . i ON t (a)", "public.i"),
            (
                f"{MARKER}\n-- why\n/* note; */ CREATE INDEX CONCURRENTLY i ON t (a)",
                "i",
            ),
        ],
    )
    def test_names_the_index_a_statement_builds(
        self, statement: str, name: str
    ) -> None:
        """Ensure the index name is found whatever the spelling and comments."""
        assert concurrent_index_name(statement) == name

    @pytest.mark.parametrize(
        "statement",
        [
            "CREATE INDEX i ON t (a)",
            "CREATE INDEX CONCURRENTLY ON t (a)",
            "DROP INDEX CONCURRENTLY i",
            "SELECT 'CREATE INDEX CONCURRENTLY i ON t (a)'",
        ],
    )
    def test_other_statements_name_no_index(self, statement: str) -> None:
        """Verify statements that build no named index concurrently are left alone."""
        assert concurrent_index_name(statement) is None


class FakeTransaction:
    def __init__(self, conn: FakeRunConnection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.events.append("begin")

    def __exit__(self, kind, value, traceback) -> bool:
        self.conn.events.append("rollback" if kind else "commit")
        return False


class FakeCursor:
    rowcount = 1

    def fetchone(self):
        return None


class FakeRunConnection:
    """Fails the migration's own SQL with scripted errors, accepts everything else."""

    def __init__(self, errors: list[Exception | None], marker: str) -> None:
        self.errors = errors
        self.marker = marker
        self.events: list[str] = []
        self.attempts = 0

    def transaction(self) -> FakeTransaction:
        return FakeTransaction(self)

    def execute(self, query, params=None) -> FakeCursor:
        if isinstance(query, str) and self.marker in query:
            self.attempts += 1
            error = self.errors.pop(0) if self.errors else None
            if error is not None:
                raise error
        if isinstance(query, str) and query.startswith(
            "INSERT INTO schema_migrations "
        ):
            self.events.append("failed" if "'failed', %(by)s" in query else "applied")
        return FakeCursor()


WHO = {"applied_by": "ci", "app_release": "1.0"}


class TestLockRetries:
    def run(self, tmp_path: Path, errors, retries: int, no_transaction=False):
        text = "ALTER TABLE marked_table ADD c int;\n"
        if no_transaction:
            text = f"{MARKER}\nSELECT 1;\n{text}"
        path = write(tmp_path, "0001_alter.up.sql", text)
        [found] = discover_migrations(str(tmp_path))
        assert found.up_path == str(path)
        conn = FakeRunConnection(list(errors), "marked_table")
        sleeps: list[float] = []
        runner = Migrator(conn, WHO, retries, 2.5, sleep=sleeps.append)
        try:
            runner.apply(found)
        except StepFailed as failed:
            return conn, runner, sleeps, str(failed)
        return conn, runner, sleeps, None

    def test_lock_timeout_is_retried_after_the_delay(self, tmp_path: Path) -> None:
        """Ensure a lock timeout runs the migration again after lock_retry_delay."""
        timeout = psycopg_errors.LockNotAvailable(
            "canceling statement due to lock timeout"
        )

        conn, runner, sleeps, failure = self.run(tmp_path, [timeout, timeout], 3)

        assert failure is None
        assert conn.attempts == 3 and sleeps == [2.5, 2.5]
        assert runner.retries_used == 2
        assert conn.events[-2:] == ["applied", "commit"]

    def test_gives_up_once_the_retries_are_spent(self, tmp_path: Path) -> None:
        """Verify the migration fails after lock_retries more attempts, saying so."""
        timeout = psycopg_errors.LockNotAvailable(
            "canceling statement due to lock timeout"
        )

        conn, _, sleeps, failure = self.run(tmp_path, [timeout] * 5, 1)

        assert conn.attempts == 2 and sleeps == [2.5]
        assert "lock timeout (gave up after 2 attempts)" in failure
        assert "failed" in conn.events

    def test_other_errors_are_not_retried(self, tmp_path: Path) -> None:
        """Ensure only lock_not_available is retried, not any other failure."""
        error = psycopg_errors.DivisionByZero("division by zero")

        conn, runner, sleeps, failure = self.run(tmp_path, [error], 5)

        assert conn.attempts == 1 and sleeps == [] and runner.retries_used == 0
        assert "0001_alter failed and was rolled back: division by zero" in failure

    def test_no_transaction_file_retries_only_the_statement(
        self, tmp_path: Path
    ) -> None:
        """Verify a no-transaction file goes on from the statement that gave up."""
        timeout = psycopg_errors.LockNotAvailable(
            "canceling statement due to lock timeout"
        )

        conn, _, sleeps, failure = self.run(tmp_path, [timeout], 1, no_transaction=True)

        assert failure is None
        assert conn.attempts == 2 and sleeps == [2.5]

    def test_statement_number_is_named_when_a_no_transaction_file_fails(
        self, tmp_path: Path
    ) -> None:
        """Ensure a failed no-transaction file says which statement failed."""
        error = psycopg_errors.DivisionByZero("division by zero")

        _, _, _, failure = self.run(tmp_path, [error], 0, no_transaction=True)

        assert "may be partly applied: statement 2 of 2 failed" in failure


class TestLockHolder:
    def test_names_pid_application_address_and_since_when(self) -> None:
        """Ensure the holder's pid, application, client and start time are named."""
        since = datetime(2024, 5, 1, 12, 30, 5, tzinfo=UTC)
        text = describe_holder(
            (4242, "ansible-pg_migrate", "mig", "10.0.0.5", since, "active")
        )

        assert text == (
            "pid 4242 (application 'ansible-pg_migrate', user 'mig', from 10.0.0.5, "
            "connected since 2024-05-01 12:30:05 UTC, active)"
        )

    def test_says_what_this_role_cannot_see(self) -> None:
        """Verify details hidden by pg_stat_activity are said to be hidden."""
        text = describe_holder((7, "", "other", None, None, None))

        assert "from a local socket" in text
        assert "connection time not visible to this role" in text
        assert describe_holder(None) == "a session that has since gone"


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
            ("lock_retries", -1, "lock_retries must not be negative"),
            ("lock_retry_delay", -0.5, "lock_retry_delay must not be negative"),
            ("target_version", -1, "target_version must not be negative"),
            ("accept_checksums", [2, 0], "accept_checksums takes versions from 1"),
            ("resolve", {"version": 0, "action": "retry"}, "resolve.version"),
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

    @pytest.mark.parametrize(
        "resolve",
        [{"version": 3, "action": "drop"}, {"action": "retry"}, {"version": 3}],
    )
    def test_resolve_needs_a_version_and_a_known_action(
        self, tmp_path: Path, no_connection: None, resolve: dict
    ) -> None:
        """Ensure resolve is refused unless it names a version and retry or mark_applied."""
        with pytest.raises(ModuleFail) as failed:
            run_module(pg_migrate, {**self.base_args(tmp_path), "resolve": resolve})

        assert "resolve" in failed.value.result["msg"]


class TestHistoryShape:
    def test_upgrade_statement_adds_every_new_column(self) -> None:
        """Verify the written-out ALTER TABLE adds exactly the columns listed."""
        added = re.findall(
            r"ADD COLUMN IF NOT EXISTS (\w+) (\w+)", schema_history.HISTORY_UPGRADE_DDL
        )

        assert dict(added) == schema_history.HISTORY_COLUMNS

    def test_new_columns_are_nullable(self) -> None:
        """Ensure no added column can break rows written before it, or the app."""
        upgrade = schema_history.HISTORY_UPGRADE_DDL.upper()

        assert "NOT NULL" not in upgrade and "DEFAULT" not in upgrade

    def test_log_refuses_an_unknown_action(self) -> None:
        """Verify only the documented actions reach the log table."""
        with pytest.raises(ValueError, match="dropped"):
            schema_history.log_event(None, 1, "x", "dropped", "ci")
