"""Tests for the `reading-history` commands that act on the database.

Each runs as its own process with only the settings the deployment gives it,
as the restricted role, in production mode, the way an operator or a timer
runs it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.rows import dict_row

from reading_history import retention

from rh_support import APP_SOURCE, ServiceDatabase, bearer

Command = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def command(migrated_db: ServiceDatabase) -> Command:
    """Return a runner of `reading-history ARGS` against the test database."""

    def run(*arguments: str, database_url: str = migrated_db.app_url):
        environment = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(APP_SOURCE),
            "READING_HISTORY_DATABASE_URL": database_url,
            "READING_HISTORY_ENVIRONMENT": "production",
        }
        return subprocess.run(
            [sys.executable, "-m", "reading_history", *arguments],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run


def create(command: Command, user_id: int, name: str) -> str:
    result = command("tokens", "create", "--user-id", str(user_id), "--name", name)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def preferences_status(client: TestClient, user_id: int, token: str) -> int:
    response = client.get(f"/api/v1/users/{user_id}/preferences", headers=bearer(token))
    return response.status_code


# Tokens


def test_created_token_is_printed_alone_and_works_until_revoked(
    command: Command, anonymous_client: TestClient
) -> None:
    """Verify the token CLI's whole cycle: create, use, revoke, refused."""
    result = command("tokens", "create", "--user-id", "7", "--name", "phone")
    token = result.stdout.strip()

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{token}\n"
    assert token.startswith("rh_") and len(token) == 46
    assert "user 7" in result.stderr
    assert token not in result.stderr
    assert preferences_status(anonymous_client, 7, token) == 200
    assert preferences_status(anonymous_client, 8, token) == 404

    revoked = command("tokens", "revoke", "--user-id", "7", "--name", "phone")

    assert revoked.returncode == 0, revoked.stderr
    assert "revoked token" in revoked.stdout
    assert preferences_status(anonymous_client, 7, token) == 401


def test_each_created_token_is_new(command: Command) -> None:
    """Ensure two tokens are never the same, even for one user."""
    first = create(command, 7, "phone")
    second = create(command, 7, "laptop")

    assert first != second


def test_a_token_can_be_revoked_by_its_id(
    command: Command, anonymous_client: TestClient, owner_conn: psycopg.Connection
) -> None:
    """Verify revoking by id leaves the user's other tokens working."""
    doomed = create(command, 7, "old phone")
    kept = create(command, 7, "laptop")
    [(token_id,)] = owner_conn.execute(
        "SELECT id FROM api_tokens WHERE name = 'old phone'"
    ).fetchall()

    result = command("tokens", "revoke", "--id", str(token_id))

    assert result.returncode == 0, result.stderr
    assert preferences_status(anonymous_client, 7, doomed) == 401
    assert preferences_status(anonymous_client, 7, kept) == 200


def test_list_shows_tokens_but_never_a_token_or_its_digest(
    command: Command, anonymous_client: TestClient, owner_conn: psycopg.Connection
) -> None:
    """Ensure listing tells which tokens exist and were used, and nothing secret."""
    used = create(command, 7, "phone")
    other = create(command, 8, "tablet")
    preferences_status(anonymous_client, 7, used)
    command("tokens", "revoke", "--user-id", "8", "--name", "tablet")
    digests = [
        bytes(digest).hex()
        for (digest,) in owner_conn.execute("SELECT token_sha256 FROM api_tokens")
    ]

    everyone = command("tokens", "list")
    one_user = command("tokens", "list", "--user-id", "7")

    assert everyone.returncode == 0, everyone.stderr
    lines = [line.split("\t") for line in everyone.stdout.splitlines()]
    assert lines[0] == [
        "id",
        "user_id",
        "name",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    phone, tablet = lines[1:]
    assert phone[1:3] == ["7", "phone"] and phone[4] != "-" and phone[5] == "-"
    assert tablet[1:3] == ["8", "tablet"] and tablet[5] != "-"
    assert [line.split("\t")[2] for line in one_user.stdout.splitlines()[1:]] == [
        "phone"
    ]
    for secret in (used, other, *digests):
        assert secret not in everyone.stdout + everyone.stderr


def test_a_live_name_cannot_be_taken_twice(command: Command) -> None:
    """Ensure a name picks out one token, so that revoking by name is unambiguous."""
    create(command, 7, "phone")

    again = command("tokens", "create", "--user-id", "7", "--name", "phone")
    for_someone_else = command("tokens", "create", "--user-id", "8", "--name", "phone")

    assert again.returncode == 1
    assert again.stdout == ""
    assert "already has a token named 'phone'" in again.stderr
    assert for_someone_else.returncode == 0


def test_revoking_a_token_that_does_not_exist_fails(command: Command) -> None:
    """Verify an operator learns that nothing was revoked."""
    result = command("tokens", "revoke", "--user-id", "7", "--name", "nothing")

    assert result.returncode == 1
    assert "no such live token" in result.stderr


@pytest.mark.parametrize(
    "arguments",
    [
        ("tokens", "create", "--user-id", "7"),
        ("tokens", "create", "--user-id", "0", "--name", "x"),
        ("tokens", "create", "--user-id", "7", "--name", ""),
        ("tokens", "create", "--user-id", "7", "--name", "tab\there"),
        ("tokens", "revoke", "--name", "phone"),
        ("tokens", "revoke"),
        ("tokens", "list", "--user-id", "many"),
    ],
)
def test_bad_arguments_are_a_usage_error(
    command: Command, arguments: tuple[str, ...], owner_conn: psycopg.Connection
) -> None:
    """Ensure a mistyped command changes nothing and says so with exit code 2."""
    result = command(*arguments)

    assert result.returncode == 2
    assert result.stdout == ""
    assert owner_conn.execute("SELECT count(*) FROM api_tokens").fetchone() == (0,)


def test_commands_stop_on_a_placeholder_password(
    command: Command, migrated_db: ServiceDatabase
) -> None:
    """Ensure production settings are checked before anything connects."""
    url = urlsplit(migrated_db.app_url)
    netloc = f"{url.username}:changeme@{url.hostname}:{url.port}"

    result = command(
        "tokens", "list", database_url=url._replace(netloc=netloc).geturl()
    )

    assert result.returncode == 2
    assert "READING_HISTORY_DATABASE_URL has a placeholder password" in result.stderr


# Purging reads past retention


def insert_reads(
    owner_conn: psycopg.Connection,
    user_id: int,
    days_ago: list[int],
    retention_days: int | None,
) -> None:
    owner_conn.execute(
        "INSERT INTO user_reading_preferences (user_id, retention_days) "
        "VALUES (%s, %s)",
        (user_id, retention_days),
    )
    now = datetime.now(UTC)
    for article_id, days in enumerate(days_ago, start=1):
        owner_conn.execute(
            "INSERT INTO reading_history (user_id, article_id, feed_id, read_at) "
            "VALUES (%s, %s, 1, %s)",
            (user_id, article_id, now - timedelta(days=days, minutes=1)),
        )


def kept_articles(owner_conn: psycopg.Connection, user_id: int) -> list[int]:
    rows = owner_conn.execute(
        "SELECT article_id FROM reading_history WHERE user_id = %s ORDER BY article_id",
        (user_id,),
    ).fetchall()
    return [article_id for (article_id,) in rows]


def test_purge_removes_only_reads_past_each_users_retention(
    command: Command, owner_conn: psycopg.Connection
) -> None:
    """Verify purge-expired applies each user's own retention, and says how many."""
    insert_reads(owner_conn, 1, [1, 10, 40, 400], retention_days=30)
    insert_reads(owner_conn, 2, [1, 10, 40, 400], retention_days=5)
    insert_reads(owner_conn, 3, [1, 10, 40, 400], retention_days=None)

    result = command("purge-expired")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "purged 5 expired reads\n"
    assert kept_articles(owner_conn, 1) == [1, 2]
    assert kept_articles(owner_conn, 2) == [1]
    assert kept_articles(owner_conn, 3) == [1, 2, 3, 4]
    assert command("purge-expired").stdout == "purged 0 expired reads\n"


def test_purge_deletes_in_small_batches(
    migrated_db: ServiceDatabase, owner_conn: psycopg.Connection
) -> None:
    """Verify a purge larger than one batch runs as many short statements."""
    insert_reads(owner_conn, 1, [400] * 9, retention_days=30)
    insert_reads(owner_conn, 2, [400] * 3 + [1], retention_days=30)

    purged, batches = asyncio.run(purge_watching_batches(migrated_db.app_dsn, 4))

    assert purged == 12
    # Autocommit: each DELETE, of four rows at most, is a transaction of its own.
    assert batches == [4, 4, 4, 0]
    assert kept_articles(owner_conn, 1) == []
    assert kept_articles(owner_conn, 2) == [4]


async def purge_watching_batches(dsn: str, batch_size: int) -> tuple[int, list[int]]:
    """Purge as the command does; return the count and each DELETE's row count."""
    batches: list[int] = []
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, row_factory=dict_row
    ) as conn:
        execute = conn.execute

        async def watched_execute(query, params=None):
            cursor = await execute(query, params)
            if str(query).lstrip().startswith("DELETE"):
                batches.append(cursor.rowcount)
            return cursor

        conn.execute = watched_execute
        purged = await retention.purge_expired(conn=conn, batch_size=batch_size)
    return purged, batches


def test_purge_fails_loudly_when_the_database_is_unreachable(
    command: Command, migrated_db: ServiceDatabase
) -> None:
    """Ensure a timer sees a failed purge: non-zero exit and a reason, no password."""
    url = urlsplit(migrated_db.app_url)
    netloc = f"{url.username}:{url.password}@127.0.0.1:1"

    result = command("purge-expired", database_url=url._replace(netloc=netloc).geturl())

    assert result.returncode == 1
    assert result.stdout == ""
    assert "database error" in result.stderr
    assert str(url.password) not in result.stderr
