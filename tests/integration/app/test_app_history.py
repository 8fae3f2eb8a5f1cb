"""Tests for recording, listing and deleting reads through the API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient

BASE = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def history_url(user_id: int) -> str:
    return f"/api/v1/users/{user_id}/history"


def record(client: TestClient, user_id: int = 1, **fields: object):
    body = {"article_id": 100, "feed_id": 10} | fields
    return client.post(history_url(user_id), json=body)


def stored_reads(owner_conn: psycopg.Connection, user_id: int = 1) -> list[tuple]:
    return owner_conn.execute(
        "SELECT article_id, category FROM reading_history WHERE user_id = %s "
        "ORDER BY id",
        (user_id,),
    ).fetchall()


def set_preferences(owner_conn: psycopg.Connection, user_id: int, **values) -> None:
    owner_conn.execute(
        "INSERT INTO user_reading_preferences (user_id) VALUES (%s) "
        "ON CONFLICT DO NOTHING",
        (user_id,),
    )
    for column, value in values.items():
        owner_conn.execute(
            f"UPDATE user_reading_preferences SET {column} = %s WHERE user_id = %s",
            (value, user_id),
        )


def insert_reads(
    owner_conn: psycopg.Connection,
    user_id: int,
    reads: list[tuple[datetime, str | None]],
) -> list[int]:
    """Store reads behind the API, with chosen times; return their ids in order."""
    set_preferences(owner_conn, user_id)
    return [
        owner_conn.execute(
            "INSERT INTO reading_history (user_id, article_id, feed_id, category, "
            "read_at) VALUES (%s, %s, 1, %s, %s) RETURNING id",
            (user_id, article_id, category, read_at),
        ).fetchone()[0]
        for article_id, (read_at, category) in enumerate(reads, start=1)
    ]


def list_ids(client: TestClient, user_id: int = 1, **params: object) -> list[int]:
    response = client.get(history_url(user_id), params=params)
    assert response.status_code == 200, response.text
    return [entry["entry_id"] for entry in response.json()["data"]]


# Recording


def test_record_stores_the_read_and_returns_it(
    client: TestClient, owner_conn: psycopg.Connection
) -> None:
    """Verify a read is stored with every field and answered 201 with its id."""
    response = record(
        client,
        article_id=555,
        feed_id=77,
        category="Science",
        read_at="2024-05-01T14:00:00+02:00",
        duration_seconds=95,
        scroll_depth=80,
    )

    assert response.status_code == 201
    entry = response.json()
    assert entry == {
        "entry_id": entry["entry_id"],
        "article_id": 555,
        "feed_id": 77,
        "category": "Science",
        "read_at": "2024-05-01T12:00:00Z",
        "duration_seconds": 95,
        "scroll_depth": 80,
    }
    assert stored_reads(owner_conn) == [(555, "Science")]


def test_record_without_read_at_uses_now(client: TestClient) -> None:
    """Verify a read sent without a time is stamped with the current time."""
    before = datetime.now(UTC)
    response = record(client)
    after = datetime.now(UTC)

    read_at = datetime.fromisoformat(response.json()["read_at"])
    assert before - timedelta(seconds=5) <= read_at <= after + timedelta(seconds=5)


def test_first_read_creates_default_preferences(
    client: TestClient, owner_conn: psycopg.Connection
) -> None:
    """Verify a new user's first read gets them a preferences row with defaults."""
    record(client, user_id=42)

    row = owner_conn.execute(
        "SELECT tracking_enabled, retention_days, excluded_categories, "
        "default_export_format FROM user_reading_preferences WHERE user_id = 42"
    ).fetchone()
    assert row == (True, None, [], "json")


def test_tracking_off_records_nothing(
    client: TestClient, owner_conn: psycopg.Connection
) -> None:
    """Ensure a user who turned tracking off gets 202 and no stored read."""
    set_preferences(owner_conn, 1, tracking_enabled=False)

    response = record(client, category="Science")

    assert response.status_code == 202
    assert response.json() == {"recorded": False, "reason": "tracking_disabled"}
    assert stored_reads(owner_conn) == []


def test_excluded_category_records_nothing_whatever_its_case(
    client: TestClient, owner_conn: psycopg.Connection
) -> None:
    """Ensure an excluded category is never stored, while others still are."""
    set_preferences(owner_conn, 1, excluded_categories=["Politics", "health"])

    excluded = record(client, article_id=1, category="POLITICS")
    other = record(client, article_id=2, category="Science")
    uncategorised = record(client, article_id=3)

    assert excluded.status_code == 202
    assert excluded.json() == {"recorded": False, "reason": "category_excluded"}
    assert (other.status_code, uncategorised.status_code) == (201, 201)
    assert stored_reads(owner_conn) == [(2, "Science"), (3, None)]


def test_read_older_than_retention_is_not_recorded(
    client: TestClient, owner_conn: psycopg.Connection
) -> None:
    """Ensure a read that retention would forget at once is not stored at all."""
    set_preferences(owner_conn, 1, retention_days=7)
    too_old = datetime.now(UTC) - timedelta(days=8)

    response = record(client, read_at=too_old.isoformat())

    assert response.status_code == 202
    assert response.json()["reason"] == "older_than_retention"
    assert stored_reads(owner_conn) == []


def test_recording_forgets_reads_past_retention(
    client: TestClient, owner_conn: psycopg.Connection
) -> None:
    """Verify each new read clears the user's reads older than their retention."""
    now = datetime.now(UTC)
    insert_reads(owner_conn, 1, [(now - timedelta(days=40), "old")])
    insert_reads(owner_conn, 2, [(now - timedelta(days=40), "other user")])
    set_preferences(owner_conn, 1, retention_days=30)

    record(client, article_id=9, category="new")

    assert stored_reads(owner_conn, 1) == [(9, "new")]
    assert stored_reads(owner_conn, 2) == [(1, "other user")]


@pytest.mark.parametrize(
    ("user_id", "body"),
    [
        ("0", {"article_id": 1, "feed_id": 1}),
        ("-4", {"article_id": 1, "feed_id": 1}),
        ("abc", {"article_id": 1, "feed_id": 1}),
        (str(2**63), {"article_id": 1, "feed_id": 1}),
        ("1", {"feed_id": 1}),
        ("1", {"article_id": 2**63, "feed_id": 1}),
        # Ids beyond 2**53 would change in clients that read JSON numbers as doubles.
        ("1", {"article_id": 2**53, "feed_id": 1}),
        (str(2**53), {"article_id": 1, "feed_id": 1}),
        ("1", {"article_id": "one", "feed_id": 1}),
        ("1", {"article_id": 1, "feed_id": 1, "read_at": "2024-05-01T12:00:00"}),
        ("1", {"article_id": 1, "feed_id": 1, "read_at": "soon"}),
        ("1", {"article_id": 1, "feed_id": 1, "read_at": "0001-01-01T00:00+01:00"}),
        ("1", {"article_id": 1, "feed_id": 1, "category": "bad\x00byte"}),
        ("1", {"article_id": 1, "feed_id": 1, "category": "x" * 65}),
        ("1", {"article_id": 1, "feed_id": 1, "duration_seconds": 2**31}),
        ("1", {"article_id": 1, "feed_id": 1, "scroll_depth": -1}),
        ("1", {"article_id": 1, "feed_id": 1, "notes": "private"}),
        ("1", [1, 2]),
        ("1", {"article_id": True, "feed_id": 1}),
        ("1", {"article_id": "5", "feed_id": 1}),
        ("1", {"article_id": 1, "feed_id": 1, "scroll_depth": False}),
        ("1", {"article_id": 1, "feed_id": 1, "read_at": 1714564800}),
        ("1", {"article_id": 1, "feed_id": 1, "read_at": "1714564800"}),
    ],
)
def test_bad_read_is_refused_with_422(
    client: TestClient, user_id: str, body: object
) -> None:
    """Ensure bad input is answered 422, never 500, and stores nothing."""
    response = client.post(f"/api/v1/users/{user_id}/history", json=body)

    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    "raw_body",
    [
        b'{"article_id": 1,',
        b'{"article_id": 1, "feed_id": 1, "category": "\\ud800"}',
        b'{"article_id": 1, "feed_id": 1, "category": "\\u0000"}',
        b"\xff\xfe",
        b"\xc3_\x1e",
    ],
)
def test_raw_body_postgresql_cannot_take_is_refused_with_422(
    client: TestClient, raw_body: bytes
) -> None:
    """Ensure broken JSON, or text no column can hold, is a client error."""
    response = client.post(
        history_url(1), content=raw_body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 422, response.text


# Listing


def test_list_is_newest_first_and_only_the_users_own(
    client: TestClient, owner_conn: psycopg.Connection
) -> None:
    """Verify listing orders by read time, newest first, and hides other users."""
    ids = insert_reads(
        owner_conn,
        1,
        [
            (BASE, "a"),
            (BASE + timedelta(hours=2), "b"),
            (BASE + timedelta(hours=1), "c"),
        ],
    )
    insert_reads(owner_conn, 2, [(BASE + timedelta(hours=5), "other")])

    response = client.get(history_url(1))

    assert response.status_code == 200
    assert [e["entry_id"] for e in response.json()["data"]] == [ids[1], ids[2], ids[0]]
    assert response.json()["next_cursor"] is None


def test_list_filters_by_time_and_category(
    client: TestClient, owner_conn: psycopg.Connection
) -> None:
    """Verify since is inclusive, until exclusive, and category exact."""
    ids = insert_reads(
        owner_conn,
        1,
        [
            (BASE, "Science"),
            (BASE + timedelta(hours=1), "science"),
            (BASE + timedelta(hours=2), "Science"),
            (BASE + timedelta(hours=3), None),
        ],
    )
    since = (BASE + timedelta(hours=1)).isoformat()
    until = (BASE + timedelta(hours=3)).isoformat()

    assert list_ids(client, since=since) == [ids[3], ids[2], ids[1]]
    assert list_ids(client, until=until) == [ids[2], ids[1], ids[0]]
    assert list_ids(client, since=since, until=until) == [ids[2], ids[1]]
    assert list_ids(client, category="Science") == [ids[2], ids[0]]
    assert list_ids(client, category="Science", since=since) == [ids[2]]


def test_pagination_walks_every_read_once_even_with_equal_times(
    client: TestClient, owner_conn: psycopg.Connection
) -> None:
    """Ensure pages neither repeat nor skip reads, even when read_at ties."""
    times = [BASE] * 4 + [BASE + timedelta(minutes=n) for n in range(1, 5)]
    insert_reads(owner_conn, 1, [(read_at, None) for read_at in times])
    everything = list_ids(client, limit=200)

    pages, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        body = client.get(history_url(1), params=params).json()
        pages.append([entry["entry_id"] for entry in body["data"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break

    assert [len(page) for page in pages] == [3, 3, 2]
    assert [entry_id for page in pages for entry_id in page] == everything
    assert len(everything) == 8


def test_pagination_keeps_its_filters(
    client: TestClient, owner_conn: psycopg.Connection
) -> None:
    """Verify a cursor continues within the same category."""
    reads = [(BASE + timedelta(minutes=n), "A" if n % 2 else "B") for n in range(6)]
    ids = insert_reads(owner_conn, 1, reads)

    first = client.get(history_url(1), params={"category": "A", "limit": 2}).json()
    cursor = first["next_cursor"]
    second = client.get(
        history_url(1), params={"category": "A", "limit": 2, "cursor": cursor}
    ).json()

    listed = [e["entry_id"] for e in first["data"] + second["data"]]
    assert listed == [ids[5], ids[3], ids[1]]
    assert second["next_cursor"] is None


def test_list_hides_reads_past_retention(
    client: TestClient, owner_conn: psycopg.Connection
) -> None:
    """Ensure reads older than the retention period are never shown."""
    now = datetime.now(UTC)
    ids = insert_reads(
        owner_conn,
        1,
        [(now - timedelta(days=10), None), (now - timedelta(days=1), None)],
    )
    set_preferences(owner_conn, 1, retention_days=5)

    assert list_ids(client) == [ids[1]]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 201},
        {"limit": "many"},
        {"since": "2024-05-01T00:00:00"},
        {"until": "yesterday"},
        {"until": "10.0"},
        {"since": "2024-05-01 12:00:00+00:00"},
        {"category": "   "},
        {"limit": ["5", "6"]},
        {"category": ""},
        {"category": "a\x00b"},
        {"cursor": "garbage"},
        {"cursor": "x" * 201},
        {"cursor": "WyIyMDI0LTA1LTAxIiwgMV0"},
    ],
)
def test_bad_listing_query_is_refused_with_422(
    client: TestClient, params: dict[str, object]
) -> None:
    """Ensure bad filters and forged cursors are answered 422, never 500."""
    response = client.get(history_url(1), params=params)

    assert response.status_code == 422, response.text


def test_listing_a_user_without_history_is_empty(client: TestClient) -> None:
    """Verify a user never seen has an empty first and last page."""
    response = client.get(history_url(999))

    assert response.json() == {"data": [], "next_cursor": None}


# Deleting


def test_delete_one_read(client: TestClient, owner_conn: psycopg.Connection) -> None:
    """Verify one read can be forgotten, and forgetting it twice is a 404."""
    ids = insert_reads(owner_conn, 1, [(BASE, "a"), (BASE, "b")])

    first = client.delete(f"{history_url(1)}/{ids[0]}")
    again = client.delete(f"{history_url(1)}/{ids[0]}")

    assert first.status_code == 204
    assert again.status_code == 404
    assert list_ids(client) == [ids[1]]


def test_deleting_another_users_read_is_a_404(
    client: TestClient, owner_conn: psycopg.Connection
) -> None:
    """Ensure a user cannot forget, or learn about, another user's read."""
    [theirs] = insert_reads(owner_conn, 2, [(BASE, "a")])

    response = client.delete(f"{history_url(1)}/{theirs}")

    assert response.status_code == 404
    assert list_ids(client, user_id=2) == [theirs]


@pytest.mark.parametrize("entry_id", ["0", str(2**63)])
def test_delete_with_bad_entry_id_is_422(client: TestClient, entry_id: str) -> None:
    """Ensure an impossible entry id is a client error, not a database error."""
    assert client.delete(f"{history_url(1)}/{entry_id}").status_code == 422


def test_only_digits_name_an_entry(client: TestClient) -> None:
    """Verify other text names no entry, so export is never taken for one."""
    not_an_entry = client.delete(f"{history_url(1)}/abc")
    export = client.delete(f"{history_url(1)}/export")

    assert not_an_entry.status_code == 404
    assert export.status_code == 405
    assert export.headers["allow"] == "GET"


def test_method_not_allowed_lists_every_method_of_the_path(client: TestClient) -> None:
    """Verify Allow names all methods a path takes, not those of one route."""
    history = client.put(history_url(1))
    preferences = client.post("/api/v1/users/1/preferences")

    assert history.status_code == preferences.status_code == 405
    assert history.headers["allow"] == "GET, POST, DELETE"
    assert preferences.headers["allow"] == "GET, PUT, PATCH"


def test_delete_whole_history_keeps_preferences_and_other_users(
    client: TestClient, owner_conn: psycopg.Connection
) -> None:
    """Verify forgetting all reads says how many, and touches nothing else."""
    insert_reads(owner_conn, 1, [(BASE, "a"), (BASE, "b"), (BASE, "c")])
    [kept] = insert_reads(owner_conn, 2, [(BASE, "a")])
    set_preferences(owner_conn, 1, retention_days=90)

    response = client.delete(history_url(1))

    assert response.status_code == 200
    assert response.json() == {"deleted": 3}
    assert list_ids(client) == []
    assert list_ids(client, user_id=2) == [kept]
    assert client.get("/api/v1/users/1/preferences").json()["retention_days"] == 90
    assert client.delete(history_url(1)).json() == {"deleted": 0}
