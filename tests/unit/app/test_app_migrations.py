"""Tests for finding the service's migration files and the version they lead to."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from reading_history.migrations import (
    NO_TRANSACTION_MARKER,
    MigrationLayoutError,
    expected_version,
    load_migrations,
)

PACKAGED = (
    Path(__file__).resolve().parents[3]
    / "app"
    / "src"
    / "reading_history"
    / "migrations"
)


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        (folder / name).write_text(content)
    return folder


def test_migrations_are_ordered_by_version(tmp_path: Path) -> None:
    """Verify migrations come back in version order, not in listing order."""
    write(
        tmp_path,
        {
            "0002_add_index.up.sql": "CREATE INDEX i ON t (a);",
            "0001_create_table.up.sql": "CREATE TABLE t (a int);",
            "0001_create_table.down.sql": "DROP TABLE t;",
            "0003_more.up.sql": "SELECT 1;",
            "README.txt": "not a migration",
        },
    )

    migrations = load_migrations(tmp_path)

    assert [(m.version, m.name) for m in migrations] == [
        (1, "create_table"),
        (2, "add_index"),
        (3, "more"),
    ]
    assert migrations[0].down_sql == "DROP TABLE t;"
    assert migrations[1].down_sql is None


def test_checksum_is_sha256_of_the_up_file_bytes(tmp_path: Path) -> None:
    """Ensure the checksum matches what the deployment records for the same file."""
    content = "CREATE TABLE t (a int);\n-- é\r\n"
    (tmp_path / "0001_create_table.up.sql").write_bytes(content.encode())

    [migration] = load_migrations(tmp_path)

    assert migration.checksum == hashlib.sha256(content.encode()).hexdigest()


def test_no_transaction_marker_on_first_line_only(tmp_path: Path) -> None:
    """Verify only an exact first-line marker takes a migration out of a transaction."""
    write(
        tmp_path,
        {
            "0001_concurrent.up.sql": f"{NO_TRANSACTION_MARKER}\nCREATE INDEX ...;",
            "0002_marker_later.up.sql": f"SELECT 1;\n{NO_TRANSACTION_MARKER}\n",
            "0003_marker_changed.up.sql": f"{NO_TRANSACTION_MARKER} please\n",
            "0004_windows_newline.up.sql": f"{NO_TRANSACTION_MARKER}\r\nSELECT 1;",
        },
    )

    transactional = [m.transactional for m in load_migrations(tmp_path)]

    assert transactional == [False, True, True, False]


@pytest.mark.parametrize(
    ("files", "complaint"),
    [
        ({"0001_Create_Table.up.sql": ""}, "0001_Create_Table.up.sql"),
        ({"1_create.up.sql": ""}, "1_create.up.sql"),
        ({"0001_create.sql": ""}, "0001_create.sql"),
        ({"0000_create.up.sql": ""}, "start at 0001"),
        ({"0002_second.up.sql": ""}, "0001 is missing"),
        (
            {"0001_first.up.sql": "", "0003_third.up.sql": ""},
            "0002 is missing",
        ),
        (
            {"0001_first.up.sql": "", "0001_other.up.sql": ""},
            "share the same version",
        ),
        (
            {"0001_first.up.sql": "", "0002_lonely.down.sql": ""},
            "0002_lonely.down.sql: has no 0002_lonely.up.sql",
        ),
        (
            {"0001_first.up.sql": "", "0001_renamed.down.sql": ""},
            "has no 0001_renamed.up.sql",
        ),
    ],
)
def test_bad_layouts_are_refused(
    tmp_path: Path, files: dict[str, str], complaint: str
) -> None:
    """Ensure misnamed, duplicated, orphaned or missing migrations are refused."""
    write(tmp_path, files)

    with pytest.raises(MigrationLayoutError, match=re.escape(complaint)):
        load_migrations(tmp_path)


def test_empty_folder_has_no_migrations(tmp_path: Path) -> None:
    """Verify a folder without migrations describes no schema at all."""
    assert load_migrations(tmp_path) == []


def test_expected_version_is_the_highest_packaged_migration() -> None:
    """Verify the build expects the schema its last migration file leads to."""
    highest = max(int(path.name[:4]) for path in PACKAGED.glob("*.up.sql"))

    assert expected_version() == highest == 4


def test_packaged_migrations_create_the_four_tables_with_undo_files() -> None:
    """Verify each packaged migration can be undone and they run in transactions."""
    migrations = load_migrations()

    assert [(m.version, m.name) for m in migrations] == [
        (1, "create_user_reading_preferences"),
        (2, "create_reading_history"),
        (3, "create_api_tokens"),
        (4, "create_audit_log"),
    ]
    assert all(m.down_sql for m in migrations)
    assert all(m.transactional for m in migrations)


def test_packaged_migrations_name_no_role() -> None:
    """Ensure migrations leave privileges to the database role set up outside."""
    forbidden = re.compile(
        r"\b(GRANT|REVOKE|OWNER\s+TO|SET\s+ROLE|CREATE\s+ROLE|AUTHORIZATION)\b",
        re.IGNORECASE,
    )

    for migration in load_migrations():
        for text in (migration.up_sql, migration.down_sql or ""):
            assert not forbidden.search(text), migration.name


def test_packaged_migrations_manage_no_transaction_themselves() -> None:
    """Ensure no file commits halfway, which would defeat the runner's transaction."""
    control = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK)\b", re.IGNORECASE | re.MULTILINE)

    for migration in load_migrations():
        assert not control.search(migration.up_sql), migration.name
