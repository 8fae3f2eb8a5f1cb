"""Tests for downloading a user's history as JSON or CSV."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import errors
from psycopg.rows import dict_row

from reading_history.copyout import copy_out_blocks
from reading_history.crud import EXPORT_BLOCK_BYTES
from reading_history.schemas import EXPORT_COLUMNS

from rh_support import ServiceDatabase, bearer, make_token

BASE = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
# Every character CSV must quote: comma, quote, both newlines, and non-ASCII.
AWKWARD_CATEGORY = 'Politics, "hot" takes\nand more\r\n— ünïcode'


def export_url(user_id: int) -> str:
    return f"/api/v1/users/{user_id}/history/export"


def record(client: TestClient, user_id: int = 1, **fields: object) -> dict:
    body = {"article_id": 100, "feed_id": 10} | fields
    response = client.post(f"/api/v1/users/{user_id}/history", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def bulk_insert(owner_conn: psycopg.Connection, user_id: int, count: int) -> None:
    owner_conn.execute(
        "INSERT INTO user_reading_preferences (user_id) VALUES (%s) "
        "ON CONFLICT DO NOTHING",
        (user_id,),
    )
    owner_conn.execute(
        "INSERT INTO reading_history (user_id, article_id, feed_id, read_at) "
        "SELECT %s, n, 1, %s - n * interval '1 minute' FROM generate_series(1, %s) n",
        (user_id, BASE, count),
    )


def test_json_export_is_the_whole_history_newest_first(client: TestClient) -> None:
    """Verify the JSON export holds every read, with the listing's fields and order."""
    older = record(client, article_id=1, read_at=BASE.isoformat(), scroll_depth=10)
    newer = record(
        client,
        article_id=2,
        category=AWKWARD_CATEGORY,
        read_at=(BASE + timedelta(hours=1)).isoformat(),
        duration_seconds=61,
    )
    record(client, user_id=2, article_id=3)

    response = client.get(export_url(1), params={"format": "json"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == [newer, older]
    assert list(response.json()[0]) == list(EXPORT_COLUMNS)


@pytest.mark.parametrize("export_format", ["json", "csv"])
def test_export_streams_across_blocks(
    client: TestClient, owner_conn: psycopg.Connection, export_format: str
) -> None:
    """Ensure reads beyond one sent block are all exported, once, in order."""
    # Well over three blocks: each read takes more than 80 bytes either way.
    count = EXPORT_BLOCK_BYTES * 3 // 80 + 7
    bulk_insert(owner_conn, 1, count)

    with client.stream(
        "GET", export_url(1), params={"format": export_format}
    ) as response:
        body = b"".join(response.iter_bytes())

    if export_format == "json":
        article_ids = [entry["article_id"] for entry in json.loads(body)]
    else:
        rows = list(csv.DictReader(io.StringIO(body.decode(), newline="")))
        article_ids = [int(row["article_id"]) for row in rows]
    assert article_ids == list(range(1, count + 1))


@pytest.mark.parametrize(
    "category",
    [
        "C:\\path\\to",
        "ends with a backslash \\",
        "\\n is not a newline",
        "tab\there",
        "bell\x07 and escape\x1b",
        "the \x01 and \x02 JSON rows are copied with",
        "line\u2028separator",
        "emoji \U0001f4f0 ünï",
    ],
)
@pytest.mark.parametrize("export_format", ["json", "csv"])
def test_export_keeps_every_character_of_a_category(
    client: TestClient, category: str, export_format: str
) -> None:
    """Ensure escapes in what PostgreSQL sends are undone exactly, in both formats."""
    record(client, article_id=1, category=category)

    response = client.get(export_url(1), params={"format": export_format})

    if export_format == "json":
        [entry] = response.json()
    else:
        [entry] = csv.DictReader(io.StringIO(response.text, newline=""))
    assert entry["category"] == category


def test_csv_export_has_a_stable_header_and_quotes_awkward_text(
    client: TestClient,
) -> None:
    """Verify CSV has the documented columns and survives commas, quotes, newlines."""
    entry = record(
        client,
        article_id=7,
        feed_id=8,
        category=AWKWARD_CATEGORY,
        read_at="2024-05-01T14:30:15.250000+02:00",
        duration_seconds=42,
        scroll_depth=100,
    )
    record(client, article_id=6, read_at=BASE.isoformat())

    response = client.get(export_url(1), params={"format": "csv"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(response.content.decode("utf-8"), newline="")))
    assert rows[0] == list(EXPORT_COLUMNS)
    assert rows[1] == [
        str(entry["entry_id"]),
        "7",
        "8",
        AWKWARD_CATEGORY,
        "2024-05-01T12:30:15.250000Z",
        "42",
        "100",
    ]
    assert rows[2][1:] == ["6", "10", "", "2024-05-01T12:00:00.000000Z", "", ""]
    assert len(rows) == 3


def test_csv_export_of_an_empty_history_is_just_the_header(client: TestClient) -> None:
    """Verify a user with no reads still gets a well-formed CSV file."""
    response = client.get(export_url(5), params={"format": "csv"})

    assert response.status_code == 200
    assert response.text.splitlines() == [",".join(EXPORT_COLUMNS)]


def test_json_export_of_an_empty_history_is_an_empty_array(client: TestClient) -> None:
    """Verify a user with no reads gets valid JSON, not an empty body."""
    response = client.get(export_url(5), params={"format": "json"})

    assert response.status_code == 200
    assert response.json() == []


def test_export_format_defaults_to_the_users_choice(client: TestClient) -> None:
    """Verify leaving out format uses the user's default, JSON until they choose."""
    record(client, article_id=1)

    before = client.get(export_url(1))
    client.patch("/api/v1/users/1/preferences", json={"default_export_format": "csv"})
    after = client.get(export_url(1))
    explicit = client.get(export_url(1), params={"format": "json"})

    assert before.headers["content-type"].startswith("application/json")
    assert after.headers["content-type"].startswith("text/csv")
    assert after.text.splitlines()[0] == ",".join(EXPORT_COLUMNS)
    assert explicit.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("export_format", ["json", "csv"])
def test_export_is_an_attachment_with_a_matching_filename(
    client: TestClient, export_format: str
) -> None:
    """Verify browsers save the export under a name with the user and format."""
    response = client.get(export_url(12), params={"format": export_format})

    disposition = response.headers["content-disposition"]
    today = datetime.now(UTC).strftime("%Y%m%d")
    assert disposition == (
        f'attachment; filename="reading-history-12-{today}.{export_format}"'
    )


def test_export_leaves_out_reads_past_retention(
    client: TestClient, owner_conn: psycopg.Connection
) -> None:
    """Ensure an export never hands over what the user asked to be forgotten."""
    now = datetime.now(UTC)
    record(client, article_id=1, read_at=(now - timedelta(days=1)).isoformat())
    owner_conn.execute(
        "INSERT INTO reading_history (user_id, article_id, feed_id, read_at) "
        "VALUES (1, 2, 1, %s)",
        (now - timedelta(days=60),),
    )
    owner_conn.execute("UPDATE user_reading_preferences SET retention_days = 30")

    as_json = client.get(export_url(1), params={"format": "json"}).json()
    as_csv = client.get(export_url(1), params={"format": "csv"}).text

    assert [entry["article_id"] for entry in as_json] == [1]
    assert len(as_csv.splitlines()) == 2


@pytest.mark.parametrize("export_format", ["xml", "JSON", ""])
def test_unknown_export_format_is_422(client: TestClient, export_format: str) -> None:
    """Ensure a format the service cannot write is refused before any streaming."""
    response = client.get(export_url(1), params={"format": export_format})

    assert response.status_code == 422


async def collect_copy(dsn: str, statement: str) -> tuple[list[bytes], BaseException]:
    """Run a COPY that fails; return what it yielded and its error.

    The connection must still answer a query afterwards.
    """
    blocks: list[bytes] = []
    async with await psycopg.AsyncConnection.connect(
        dsn, autocommit=True, row_factory=dict_row
    ) as conn:
        try:
            async for block in copy_out_blocks(
                conn=conn, statement=statement.encode(), block_bytes=1
            ):
                blocks.append(block)
        except psycopg.Error as error:
            caught: BaseException = error
        else:
            raise AssertionError("the COPY did not fail")
        cursor = await conn.execute("SELECT 42 AS answer")
        assert await cursor.fetchone() == {"answer": 42}
    return blocks, caught


@pytest.mark.parametrize(
    ("statement", "rows_before_the_error"),
    [
        ("COPY (SELECT * FROM no_such_table) TO STDOUT", 0),
        ("COPY (SELECT 10 / (3 - n) FROM generate_series(1, 5) AS n) TO STDOUT", 2),
    ],
)
def test_a_failing_copy_raises_its_error_and_frees_the_connection(
    migrated_db: ServiceDatabase, statement: str, rows_before_the_error: int
) -> None:
    """Ensure a COPY failing early or midway raises, and leaves its connection idle."""
    blocks, error = asyncio.run(collect_copy(migrated_db.app_dsn, statement))

    assert len(blocks) == rows_before_the_error
    assert isinstance(error, (errors.UndefinedTable, errors.DivisionByZero))


def test_exports_cut_short_by_clients_do_not_wear_out_the_pool(
    served: tuple[str, subprocess.Popen],
    migrated_db: ServiceDatabase,
    owner_conn: psycopg.Connection,
) -> None:
    """Ensure downloads abandoned midway leave the service answering as before."""
    bulk_insert(owner_conn, 1, 20_000)
    token = make_token(migrated_db.app_dsn, 1).token
    url = f"{served[0]}{export_url(1)}"

    with httpx.Client(headers=bearer(token), timeout=10) as user_client:
        for _ in range(12):
            with user_client.stream("GET", url, params={"format": "csv"}) as response:
                next(response.iter_bytes())
        whole = user_client.get(url, params={"format": "json"})

    assert whole.status_code == 200
    assert len(whole.json()) == 20_000
