"""Tests for reading and changing a user's privacy choices."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fastapi.testclient import TestClient

DEFAULTS = {
    "tracking_enabled": True,
    "retention_days": None,
    "excluded_categories": [],
    "default_export_format": "json",
}


def preferences_url(user_id: int) -> str:
    return f"/api/v1/users/{user_id}/preferences"


def choices(body: dict) -> dict:
    """Drop what the user did not choose themselves."""
    return {key: value for key, value in body.items() if key in DEFAULTS}


def preference_rows(owner_conn: psycopg.Connection) -> int:
    return owner_conn.execute(
        "SELECT count(*) FROM user_reading_preferences"
    ).fetchone()[0]


def test_user_without_preferences_gets_defaults_and_no_row(
    client: TestClient, owner_conn: psycopg.Connection
) -> None:
    """Verify reading preferences never stored shows defaults and stores nothing."""
    response = client.get(preferences_url(3))

    assert response.status_code == 200
    assert response.json() == {"user_id": 3, **DEFAULTS, "updated_at": None}
    assert preference_rows(owner_conn) == 0


def test_put_sets_every_choice(client: TestClient) -> None:
    """Verify PUT stores all choices, and GET shows them back."""
    chosen = {
        "tracking_enabled": False,
        "retention_days": 90,
        "excluded_categories": ["Politics", "Health & Fitness"],
        "default_export_format": "csv",
    }

    response = client.put(preferences_url(3), json=chosen)

    assert response.status_code == 200
    assert choices(response.json()) == chosen
    assert response.json()["updated_at"] is not None
    assert choices(client.get(preferences_url(3)).json()) == chosen


def test_put_resets_what_it_leaves_out(client: TestClient) -> None:
    """Verify PUT replaces the whole set: omitted choices return to defaults."""
    client.put(
        preferences_url(3), json={"retention_days": 30, "default_export_format": "csv"}
    )

    response = client.put(preferences_url(3), json={"tracking_enabled": False})

    assert choices(response.json()) == DEFAULTS | {"tracking_enabled": False}


def test_patch_changes_only_what_it_names(client: TestClient) -> None:
    """Verify PATCH keeps every choice it does not mention."""
    client.put(
        preferences_url(3),
        json={"retention_days": 30, "excluded_categories": ["Sport"]},
    )

    response = client.patch(preferences_url(3), json={"default_export_format": "csv"})

    assert response.status_code == 200
    assert choices(response.json()) == {
        "tracking_enabled": True,
        "retention_days": 30,
        "excluded_categories": ["Sport"],
        "default_export_format": "csv",
    }


def test_patch_null_retention_keeps_everything_again(client: TestClient) -> None:
    """Verify null retention is accepted and means reads are kept forever."""
    client.put(preferences_url(3), json={"retention_days": 30})

    response = client.patch(preferences_url(3), json={"retention_days": None})

    assert response.status_code == 200
    assert response.json()["retention_days"] is None


def test_patch_on_a_new_user_starts_from_defaults(client: TestClient) -> None:
    """Verify the first PATCH of a user stores defaults plus the change."""
    response = client.patch(preferences_url(8), json={"tracking_enabled": False})

    assert choices(response.json()) == DEFAULTS | {"tracking_enabled": False}


def test_excluded_categories_are_stored_once_each(client: TestClient) -> None:
    """Verify categories repeated in other cases are stored once, as first written."""
    response = client.put(
        preferences_url(3), json={"excluded_categories": ["Sport", "SPORT", "News"]}
    )

    assert response.json()["excluded_categories"] == ["Sport", "News"]


def test_shorter_retention_forgets_older_reads_at_once(
    client: TestClient, owner_conn: psycopg.Connection
) -> None:
    """Ensure lowering retention deletes reads now outside it, not just hides them."""
    now = datetime.now(UTC)
    for days_ago in (1, 20, 40):
        client.post(
            "/api/v1/users/3/history",
            json={
                "article_id": days_ago,
                "feed_id": 1,
                "read_at": (now - timedelta(days=days_ago)).isoformat(),
            },
        )

    client.patch(preferences_url(3), json={"retention_days": 10})

    kept = owner_conn.execute(
        "SELECT article_id FROM reading_history WHERE user_id = 3"
    ).fetchall()
    assert kept == [(1,)]


@pytest.mark.parametrize(
    "body",
    [
        {"retention_days": 0},
        {"retention_days": -1},
        {"retention_days": 1.5},
        {"retention_days": "thirty"},
        {"default_export_format": "xml"},
        {"default_export_format": None},
        {"tracking_enabled": None},
        {"tracking_enabled": "false"},
        {"excluded_categories": None},
        {"excluded_categories": "Sport"},
        {"excluded_categories": [""]},
        {"excluded_categories": ["  "]},
        {"excluded_categories": ["x" * 65]},
        {"excluded_categories": ["ok", 5]},
        {"excluded_categories": ["a\u0000b"]},
        {"excluded_categories": [f"c{n}" for n in range(101)]},
        {"theme": "dark"},
    ],
)
@pytest.mark.parametrize("method", ["put", "patch"])
def test_invalid_preferences_are_refused_and_change_nothing(
    client: TestClient, method: str, body: dict
) -> None:
    """Ensure invalid choices get 422, never 500, and the stored ones stay."""
    client.put(preferences_url(3), json={"retention_days": 30})

    response = getattr(client, method)(preferences_url(3), json=body)

    assert response.status_code == 422, response.text
    assert client.get(preferences_url(3)).json()["retention_days"] == 30


def test_preferences_of_an_impossible_user_are_422(client: TestClient) -> None:
    """Ensure a user id outside bigint is refused, not sent to the database."""
    assert client.get(preferences_url(2**63)).status_code == 422
    assert client.put("/api/v1/users/0/preferences", json={}).status_code == 422


def stored_articles(owner_conn: psycopg.Connection, user_id: int = 3) -> list[int]:
    rows = owner_conn.execute(
        "SELECT article_id FROM reading_history WHERE user_id = %s ORDER BY id",
        (user_id,),
    ).fetchall()
    return [article_id for (article_id,) in rows]


def record_reads(client: TestClient, *article_ids: int, user_id: int = 3) -> None:
    for article_id in article_ids:
        response = client.post(
            f"/api/v1/users/{user_id}/history",
            json={"article_id": article_id, "feed_id": 1},
        )
        assert response.status_code == 201, response.text


@pytest.mark.parametrize("method", ["put", "patch"])
def test_turning_tracking_off_keeps_what_was_stored(
    client: TestClient, owner_conn: psycopg.Connection, method: str
) -> None:
    """Ensure tracking off stops new reads but deletes none already stored."""
    record_reads(client, 1, 2)

    response = getattr(client, method)(
        preferences_url(3), json={"tracking_enabled": False}
    )
    declined = client.post(
        "/api/v1/users/3/history", json={"article_id": 3, "feed_id": 1}
    )

    assert response.status_code == 200
    assert response.json()["tracking_enabled"] is False
    assert declined.status_code == 202
    assert stored_articles(owner_conn) == [1, 2]


@pytest.mark.parametrize("method", ["put", "patch"])
def test_delete_history_with_the_change_forgets_every_read(
    client: TestClient, owner_conn: psycopg.Connection, method: str
) -> None:
    """Verify a change that asks for it forgets the user's reads, and only theirs."""
    record_reads(client, 1, 2)
    record_reads(client, 9, user_id=4)

    response = getattr(client, method)(
        preferences_url(3), json={"tracking_enabled": False, "delete_history": True}
    )

    assert response.status_code == 200
    assert "delete_history" not in response.json()
    assert response.json()["tracking_enabled"] is False
    assert stored_articles(owner_conn) == []
    assert stored_articles(owner_conn, user_id=4) == [9]


@pytest.mark.parametrize("value", [None, "yes", 1])
def test_delete_history_must_be_a_boolean(client: TestClient, value: object) -> None:
    """Ensure only an explicit true or false can ask for the history to go."""
    response = client.patch(preferences_url(3), json={"delete_history": value})

    assert response.status_code == 422
