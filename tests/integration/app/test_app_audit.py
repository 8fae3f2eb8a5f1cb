"""Tests for the audit trail of preference changes, exports and deletions."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
from fastapi.testclient import TestClient

from rh_support import ServiceDatabase, bearer, make_token

USER = 5
USER_URL = f"/api/v1/users/{USER}"
# Words only the user chose: they must never reach the audit trail.
PRIVATE_CATEGORY = "Divorce Lawyers"


@pytest.fixture
def token_id_and_headers(
    migrated_db: ServiceDatabase,
) -> tuple[int, dict[str, str]]:
    created = make_token(migrated_db.app_dsn, USER, "reader app")
    return created.token_id, bearer(created.token)


def audit_entries(owner_conn: psycopg.Connection) -> list[tuple]:
    return owner_conn.execute(
        "SELECT user_id, action, token_id, token_name, request_id, details "
        "FROM audit_log WHERE action NOT LIKE 'token_%%' ORDER BY id"
    ).fetchall()


def record(client: TestClient, headers: dict[str, str], article_id: int) -> int:
    response = client.post(
        f"{USER_URL}/history",
        json={
            "article_id": article_id,
            "feed_id": 1,
            "category": PRIVATE_CATEGORY,
            "read_at": datetime.now(UTC).isoformat(),
        },
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return int(response.json()["entry_id"])


def test_every_change_export_and_deletion_is_recorded_with_who_and_which_request(
    anonymous_client: TestClient,
    owner_conn: psycopg.Connection,
    token_id_and_headers: tuple[int, dict[str, str]],
) -> None:
    """Verify each action leaves one entry naming the token, user and request id."""
    token_id, headers = token_id_and_headers
    first = record(anonymous_client, headers, 1)
    record(anonymous_client, headers, 2)

    def call(method: str, path: str, request_id: str, **kwargs: object) -> None:
        response = anonymous_client.request(
            method,
            f"{USER_URL}{path}",
            headers=headers | {"X-Request-ID": request_id},
            **kwargs,
        )
        assert response.status_code < 300, response.text

    call("PUT", "/preferences", "req-put", json={"retention_days": 30})
    call(
        "PATCH",
        "/preferences",
        "req-patch",
        json={"excluded_categories": [PRIVATE_CATEGORY], "tracking_enabled": False},
    )
    call("GET", "/history/export", "req-csv", params={"format": "csv"})
    call("GET", "/history/export", "req-default")
    call("DELETE", f"/history/{first}", "req-one")
    call("DELETE", "/history", "req-all")

    who = (USER, token_id, "reader app")
    assert audit_entries(owner_conn) == [
        (
            USER,
            "preferences_replaced",
            *who[1:],
            "req-put",
            {
                "fields": [
                    "default_export_format",
                    "excluded_categories",
                    "retention_days",
                    "tracking_enabled",
                ],
                "history_deleted": 0,
                "expired_deleted": 0,
            },
        ),
        (
            USER,
            "preferences_updated",
            *who[1:],
            "req-patch",
            {
                "fields": ["excluded_categories", "tracking_enabled"],
                "history_deleted": 0,
                "expired_deleted": 0,
            },
        ),
        (USER, "history_exported", *who[1:], "req-csv", {"format": "csv"}),
        (USER, "history_exported", *who[1:], "req-default", {"format": "json"}),
        (USER, "history_entry_deleted", *who[1:], "req-one", {"entry_id": first}),
        (USER, "history_deleted", *who[1:], "req-all", {"deleted": 1}),
    ]


def test_audit_entries_hold_no_personal_words(
    anonymous_client: TestClient,
    owner_conn: psycopg.Connection,
    token_id_and_headers: tuple[int, dict[str, str]],
) -> None:
    """Ensure what the user read or excluded never lands in the audit trail."""
    _, headers = token_id_and_headers
    record(anonymous_client, headers, 1)
    anonymous_client.patch(
        f"{USER_URL}/preferences",
        json={"excluded_categories": [PRIVATE_CATEGORY], "delete_history": True},
        headers=headers,
    )

    trail = owner_conn.execute("SELECT audit_log::text FROM audit_log").fetchall()

    assert trail
    assert not any(PRIVATE_CATEGORY in row for (row,) in trail)
    [(details,)] = owner_conn.execute(
        "SELECT details FROM audit_log WHERE action = 'preferences_updated'"
    ).fetchall()
    assert details["history_deleted"] == 1


def test_reading_and_recording_leave_no_audit_entry(
    anonymous_client: TestClient,
    owner_conn: psycopg.Connection,
    token_id_and_headers: tuple[int, dict[str, str]],
) -> None:
    """Verify only changes, exports and deletions are audited, not everyday use."""
    _, headers = token_id_and_headers
    record(anonymous_client, headers, 1)
    anonymous_client.get(f"{USER_URL}/history", headers=headers)
    anonymous_client.get(f"{USER_URL}/preferences", headers=headers)

    assert audit_entries(owner_conn) == []


def test_a_refused_change_leaves_no_audit_entry(
    anonymous_client: TestClient,
    owner_conn: psycopg.Connection,
    token_id_and_headers: tuple[int, dict[str, str]],
) -> None:
    """Ensure the trail records what happened, not what was only asked for."""
    _, headers = token_id_and_headers
    anonymous_client.patch(
        f"{USER_URL}/preferences", json={"retention_days": 0}, headers=headers
    )
    anonymous_client.delete(f"{USER_URL}/history/999", headers=headers)

    assert audit_entries(owner_conn) == []
