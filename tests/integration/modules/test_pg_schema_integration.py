"""Integration tests of pg_schema and tools/schema-snapshot against a real PostgreSQL.

The expected schema is made once per session by tools/schema-snapshot from the app's
own migrations; each test migrates its database with pg_migrate, changes something
the way an incident would, and runs pg_schema in a child Python as Ansible would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from module_harness import REPO_ROOT, run_module_process
from pgserver import PostgresServer

MIGRATIONS = REPO_ROOT / "app" / "src" / "reading_history" / "migrations"
TOOL = REPO_ROOT / "tools" / "schema-snapshot"


@pytest.fixture(scope="session")
def expected_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The expected schema of the app's migrations, written by the release tool."""
    output = tmp_path_factory.mktemp("release") / "expected_schema.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(TOOL),
            "--migrations",
            str(MIGRATIONS),
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return output


@pytest.fixture
def expected(expected_file: Path) -> dict[str, Any]:
    return json.loads(expected_file.read_text())


def app_version() -> int:
    return max(int(path.name[:4]) for path in MIGRATIONS.glob("*.up.sql"))


def apply(db_args: dict, folder: Path = MIGRATIONS, **options: Any) -> None:
    rc, result, _ = run_module_process(
        "pg_migrate", {**db_args, "path": str(folder), **options}
    )
    assert rc == 0, result


def check(db_args: dict, expected_file: Path, check_mode: bool = False, **options: Any):
    args = {**db_args, "expected": str(expected_file), **options}
    return run_module_process("pg_schema", args, check_mode=check_mode)


def kinds(result: dict) -> list[tuple[str, str, str | None]]:
    return [(d["kind"], d["table"], d["name"]) for d in result["differences"]]


def test_snapshot_describes_the_migrated_database(
    expected_file: Path, expected: dict, db_args: dict, db: psycopg.Connection
) -> None:
    """Ensure the tool's description is the schema pg_migrate makes, version included."""
    from ansible.module_utils.schema_history import applied_version
    from ansible.module_utils.schema_snapshot import describe

    apply(db_args)

    assert expected == json.loads(json.dumps(describe(db, applied_version(db))))
    assert expected["version"] == app_version()
    assert "schema_migrations" not in expected["tables"]
    assert (
        expected_file.read_text()
        == json.dumps(expected, indent=2, sort_keys=True) + "\n"
    )


def test_migrated_database_matches_and_rows_are_counted(
    expected_file: Path, expected: dict, db_args: dict, db: psycopg.Connection
) -> None:
    """Verify a database the migrations made matches, with exact row counts."""
    apply(db_args)
    db.execute("INSERT INTO user_reading_preferences (user_id) VALUES (1), (2)")
    db.execute(
        "INSERT INTO reading_history (user_id, article_id, feed_id, read_at)"
        " SELECT 1, g, 3, now() FROM generate_series(1, 5) g"
    )

    rc, result, _ = check(db_args, expected_file)
    check_rc, checked, _ = check(db_args, expected_file, check_mode=True)

    assert rc == 0, result
    assert result["matches"] is True and result["compatible"] is True
    assert result["differences"] == [] and result["changed"] is False
    assert result["expected_version"] == result["database_version"] == app_version()
    assert (result["schema_ahead"], result["schema_behind"]) == (False, False)
    assert result["rows"]["reading_history"] == 5
    assert result["rows"]["user_reading_preferences"] == 2
    assert result["tables"] == sorted(expected["tables"])
    assert check_rc == 0 and checked["matches"] is True


def interrupted_build(
    db: psycopg.Connection, pg_server: PostgresServer, database: str
) -> None:
    """Leave reading_history_user_read_at_idx INVALID, as a cut-short build does."""
    definition = db.execute(
        "SELECT pg_get_indexdef('reading_history_user_read_at_idx'::regclass)"
    ).fetchone()[0]
    db.execute("DROP INDEX reading_history_user_read_at_idx")
    concurrently = definition.replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1)
    with psycopg.connect(pg_server.dsn(database)) as writer:
        # An open write on the table: the build waits for it after its first phase.
        writer.execute("INSERT INTO user_reading_preferences (user_id) VALUES (99)")
        writer.execute(
            "INSERT INTO reading_history (user_id, article_id, feed_id, read_at)"
            " VALUES (99, 1, 1, now())"
        )
        db.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            db.execute(concurrently)
        db.execute("RESET lock_timeout")


INCIDENTS = {
    "missing column": (
        lambda db: db.execute("ALTER TABLE reading_history DROP COLUMN scroll_depth"),
        # Its CHECK constraint went with it.
        [
            ("missing_column", "reading_history", "scroll_depth"),
            (
                "missing_constraint",
                "reading_history",
                "reading_history_scroll_depth_percent",
            ),
        ],
        "column reading_history.scroll_depth is missing",
    ),
    "wrong type": (
        lambda db: db.execute("ALTER TABLE reading_history ALTER feed_id TYPE integer"),
        [("column_type", "reading_history", "feed_id")],
        "column reading_history.feed_id is integer, expected bigint",
    ),
    "missing index": (
        lambda db: db.execute("DROP INDEX reading_history_user_category_read_at_idx"),
        [
            (
                "missing_index",
                "reading_history",
                "reading_history_user_category_read_at_idx",
            )
        ],
        "index reading_history_user_category_read_at_idx on reading_history is missing",
    ),
}


@pytest.mark.parametrize("incident", INCIDENTS)
def test_each_difference_is_found_and_fails_the_task(
    incident: str, expected_file: Path, db_args: dict, db: psycopg.Connection
) -> None:
    """Ensure a dropped column, a changed type and a dropped index are each named."""
    change, found, message = INCIDENTS[incident]
    apply(db_args)
    change(db)

    rc, result, _ = check(db_args, expected_file)

    assert rc == 1
    assert kinds(result) == found
    assert message in result["msg"]
    assert f"{len(found)} differences" in result["msg"]
    assert result["matches"] is False and result["compatible"] is False


def test_invalid_index_left_by_an_interrupted_build_is_found(
    expected_file: Path,
    db_args: dict,
    db: psycopg.Connection,
    pg_server: PostgresServer,
    pg_database: str,
) -> None:
    """Verify an index that is there but INVALID counts as a difference."""
    apply(db_args)
    interrupted_build(db, pg_server, pg_database)

    rc, result, _ = check(db_args, expected_file)

    assert rc == 1
    assert kinds(result) == [
        ("invalid_index", "reading_history", "reading_history_user_read_at_idx")
    ]
    assert (
        "reading_history_user_read_at_idx on reading_history is INVALID"
        in result["msg"]
    )


def test_every_incident_at_once_is_listed(
    expected_file: Path,
    db_args: dict,
    db: psycopg.Connection,
    pg_server: PostgresServer,
    pg_database: str,
) -> None:
    """Ensure several differences are all returned, not just the first."""
    apply(db_args)
    for change, _, _ in INCIDENTS.values():
        change(db)
    interrupted_build(db, pg_server, pg_database)

    rc, result, _ = check(db_args, expected_file, fail_on_differences=False)

    assert rc == 0
    assert sorted(kind for kind, _, _ in kinds(result)) == [
        "column_type",
        "invalid_index",
        "missing_column",
        "missing_constraint",
        "missing_index",
    ]


def test_schema_ahead_of_the_code_is_told_apart(
    tmp_path: Path, expected_file: Path, db_args: dict
) -> None:
    """Verify a newer migration shows as ahead, and harmless additions as compatible."""
    folder = tmp_path / "newer"
    shutil.copytree(
        MIGRATIONS, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__")
    )
    version = app_version() + 1
    (folder / f"{version:04d}_add_source.up.sql").write_text(
        "ALTER TABLE reading_history ADD COLUMN source text;\n"
        "CREATE TABLE feed_sources (id bigint PRIMARY KEY);\n"
    )
    apply(db_args, folder)

    rc, result, _ = check(db_args, expected_file, fail_on_differences=False)

    assert rc == 0, result
    assert (result["schema_ahead"], result["schema_behind"]) == (True, False)
    assert result["database_version"] == version
    assert result["matches"] is False and result["compatible"] is True
    assert ("extra_column", "reading_history", "source") in kinds(result)
    assert ("extra_table", "feed_sources", None) in kinds(result)

    (folder / f"{version + 1:04d}_require_source.up.sql").write_text(
        "ALTER TABLE feed_sources ADD COLUMN url text;\n"
        "ALTER TABLE reading_history ADD COLUMN origin text NOT NULL;\n"
    )
    apply(db_args, folder)

    rc, result, _ = check(db_args, expected_file, fail_on_differences=False)

    assert rc == 0 and result["compatible"] is False


def test_schema_behind_the_code_is_told_apart(
    expected_file: Path, db_args: dict
) -> None:
    """Ensure a database short of the release's migrations shows as behind."""
    apply(db_args, target_version=2)

    rc, result, _ = check(db_args, expected_file)

    assert rc == 1
    assert (result["schema_ahead"], result["schema_behind"]) == (False, True)
    assert result["database_version"] == 2
    assert all(kind == "missing_table" for kind, _, _ in kinds(result))


def test_database_without_history_is_behind(expected_file: Path, db_args: dict) -> None:
    """Verify an empty database reports no version and is behind, all tables missing."""
    rc, result, _ = check(
        db_args, expected_file, fail_on_differences=False, count_rows=False
    )

    assert rc == 0
    assert result["database_version"] is None and result["schema_behind"] is True
    assert result["rows"] == {}
    assert {kind for kind, _, _ in kinds(result)} == {"missing_table"}
