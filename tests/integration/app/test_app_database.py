"""Tests for the migrations on a real PostgreSQL, and for the service's rights there."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from reading_history.migrations import expected_version, load_migrations

from rh_support import ServiceDatabase, apply_migrations, revert_migrations


def tables(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return dict(rows)


def test_migrations_create_every_table_owned_by_the_owner(
    migrated_db: ServiceDatabase,
) -> None:
    """Verify the owner role, not the service's, owns every table."""
    owners = tables(migrated_db.owner_dsn)

    assert owners == {
        "schema_migrations": migrated_db.owner,
        "user_reading_preferences": migrated_db.owner,
        "reading_history": migrated_db.owner,
        "api_tokens": migrated_db.owner,
        "audit_log": migrated_db.owner,
    }


def test_recorded_history_matches_the_packaged_files(
    migrated_db: ServiceDatabase,
) -> None:
    """Verify each applied migration is recorded with its version, name and checksum."""
    with psycopg.connect(migrated_db.owner_dsn) as conn:
        rows = conn.execute(
            "SELECT version, name, checksum, status FROM schema_migrations "
            "ORDER BY version"
        ).fetchall()

    assert rows == [
        (m.version, m.name, m.checksum, "applied") for m in load_migrations()
    ]
    assert rows[-1][0] == expected_version()


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE sneaky (a int)",
        "ALTER TABLE reading_history ADD COLUMN notes text",
        "DROP TABLE reading_history",
        "TRUNCATE reading_history",
        "CREATE INDEX sneaky_idx ON reading_history (feed_id)",
        "DROP TABLE api_tokens",
        "ALTER TABLE audit_log DROP CONSTRAINT audit_log_action_known",
        "TRUNCATE audit_log",
    ],
)
def test_service_role_cannot_change_the_schema(
    migrated_db: ServiceDatabase, statement: str
) -> None:
    """Ensure the role the service runs as really lacks DDL, so route tests prove it."""
    with psycopg.connect(migrated_db.app_dsn) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(statement)


def test_service_role_may_read_and_write_rows(migrated_db: ServiceDatabase) -> None:
    """Verify default privileges gave the service every row right it needs."""
    with psycopg.connect(migrated_db.app_dsn) as conn:
        conn.execute("INSERT INTO user_reading_preferences (user_id) VALUES (1)")
        conn.execute(
            "INSERT INTO reading_history (user_id, article_id, feed_id, read_at) "
            "VALUES (1, 10, 20, now())"
        )
        conn.execute("UPDATE user_reading_preferences SET retention_days = 5")
        conn.execute("DELETE FROM reading_history")
        conn.execute(
            "INSERT INTO api_tokens (user_id, name, token_sha256) "
            "VALUES (1, 'app', sha256('x'))"
        )
        conn.execute("UPDATE api_tokens SET last_used_at = now()")
        conn.execute(
            "INSERT INTO audit_log (user_id, action) VALUES (1, 'history_deleted')"
        )
        conn.execute("SELECT count(*) FROM audit_log")
        version = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()

    assert version == (expected_version(),)


def test_down_migrations_undo_everything_and_up_again_works(
    migrated_db: ServiceDatabase,
) -> None:
    """Verify every down file undoes its up file, so a release can be rolled back."""
    reverted = revert_migrations(migrated_db.owner_dsn, down_to=0)

    assert reverted == [4, 3, 2, 1]
    assert set(tables(migrated_db.owner_dsn)) == {"schema_migrations"}

    with psycopg.connect(migrated_db.owner_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM schema_migrations")
    assert apply_migrations(migrated_db.owner_dsn) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO user_reading_preferences (user_id, retention_days) VALUES (2, 0)",
        "INSERT INTO user_reading_preferences (user_id, default_export_format) "
        "VALUES (2, 'xml')",
        "INSERT INTO user_reading_preferences (user_id, excluded_categories) "
        "VALUES (2, ARRAY['a', NULL])",
        "INSERT INTO reading_history (user_id, article_id, feed_id, read_at) "
        "VALUES (999, 1, 1, now())",
        "INSERT INTO reading_history (user_id, article_id, feed_id, read_at, "
        "scroll_depth) VALUES (1, 1, 1, now(), 101)",
        "INSERT INTO reading_history (user_id, article_id, feed_id, read_at, "
        "duration_seconds) VALUES (1, 1, 1, now(), -1)",
        "INSERT INTO reading_history (user_id, article_id, feed_id, read_at, "
        "category) VALUES (1, 1, 1, now(), '')",
        "INSERT INTO api_tokens (user_id, name, token_sha256) "
        "VALUES (1, 'short', '\\x00')",
        "INSERT INTO api_tokens (user_id, name, token_sha256) "
        "VALUES (1, '', sha256('x'))",
        "INSERT INTO api_tokens (user_id, name, token_sha256) "
        "VALUES (0, 'app', sha256('x'))",
        "INSERT INTO api_tokens (user_id, name, token_sha256) "
        "VALUES (1, 'a', sha256('x')), (2, 'b', sha256('x'))",
        "INSERT INTO audit_log (user_id, action) VALUES (1, 'looked_around')",
        "INSERT INTO audit_log (user_id, action, details) "
        "VALUES (1, 'history_deleted', '[1]')",
    ],
)
def test_constraints_refuse_bad_rows(
    owner_conn: psycopg.Connection, statement: str
) -> None:
    """Ensure the tables themselves refuse rows the API would never write."""
    owner_conn.execute("INSERT INTO user_reading_preferences (user_id) VALUES (1)")

    with pytest.raises(errors.IntegrityError):
        owner_conn.execute(statement)


def test_deleting_preferences_deletes_the_history(
    owner_conn: psycopg.Connection,
) -> None:
    """Verify forgetting a user forgets what they read, through the foreign key."""
    owner_conn.execute("INSERT INTO user_reading_preferences (user_id) VALUES (1), (2)")
    owner_conn.execute(
        "INSERT INTO reading_history (user_id, article_id, feed_id, read_at) "
        "VALUES (1, 1, 1, now()), (2, 1, 1, now())"
    )

    owner_conn.execute("DELETE FROM user_reading_preferences WHERE user_id = 1")

    remaining = owner_conn.execute("SELECT user_id FROM reading_history").fetchall()
    assert remaining == [(2,)]


def test_listing_index_matches_the_listing_order(
    owner_conn: psycopg.Connection,
) -> None:
    """Verify the index behind listing and export follows (user, newest, id)."""
    definition = owner_conn.execute(
        "SELECT indexdef FROM pg_indexes "
        "WHERE indexname = 'reading_history_user_read_at_idx'"
    ).fetchone()

    assert definition is not None
    assert "(user_id, read_at DESC, id DESC)" in definition[0]


def test_a_user_has_one_live_token_per_name(owner_conn: psycopg.Connection) -> None:
    """Verify a name is unique among live tokens, and free again once revoked."""
    insert = (
        "INSERT INTO api_tokens (user_id, name, token_sha256) "
        "VALUES (%s, 'phone', sha256(%s))"
    )
    owner_conn.execute(insert, (1, b"first"))
    owner_conn.execute(insert, (2, b"other user"))

    with pytest.raises(errors.UniqueViolation):
        owner_conn.execute(insert, (1, b"second"))

    owner_conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE user_id = 1")
    owner_conn.execute(insert, (1, b"third"))
