"""Tests for who may call the API: bearer tokens, users' own data, rate limits, CORS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import pytest
from fastapi.testclient import TestClient

from reading_history.core.logs import JsonFormatter
from reading_history.main import create_app
from reading_history.tokens import generate_token

from rh_support import ServiceDatabase, bearer, make_settings, make_token

OWNER = 41
INTRUDER = 42
BASE = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
# Headers that differ between any two answers, whatever they say.
PER_RESPONSE_HEADERS = {"x-request-id", "date", "content-length"}


DOCS_PATHS = ("/docs", "/redoc", "/openapi.json")


@dataclass(frozen=True)
class Call:
    """One request a route may be sent, with a body it accepts."""

    method: str
    template: str
    body: dict[str, object] | None = None
    params: dict[str, str] | None = None

    def path(self, user_id: int, entry_id: int) -> str:
        return self.template.format(user_id=user_id, entry_id=entry_id)


USERS = "/api/v1/users/{user_id}"
# A valid request for every route that acts on one user's data.
USER_CALLS = [
    Call("POST", f"{USERS}/history", {"article_id": 9, "feed_id": 9}),
    Call("GET", f"{USERS}/history", params={"limit": "5"}),
    Call("DELETE", f"{USERS}/history/{{entry_id}}"),
    Call("DELETE", f"{USERS}/history"),
    Call("GET", f"{USERS}/history/export", params={"format": "json"}),
    Call("GET", f"{USERS}/history/export", params={"format": "csv"}),
    Call("GET", f"{USERS}/preferences"),
    Call("PUT", f"{USERS}/preferences", {"tracking_enabled": False}),
    Call("PATCH", f"{USERS}/preferences", {"delete_history": True}),
]


def send(
    client: TestClient,
    call: Call,
    headers: dict[str, str],
    *,
    user_id: int = OWNER,
    entry_id: int = 1,
):
    return client.request(
        call.method,
        call.path(user_id, entry_id),
        json=call.body,
        params=call.params,
        headers=headers,
    )


def comparable(response) -> tuple[int, bytes, dict[str, str]]:
    """Return what an answer says, less what differs between any two answers."""
    headers = {
        name: value
        for name, value in response.headers.items()
        if name not in PER_RESPONSE_HEADERS
    }
    return response.status_code, response.content, headers


@pytest.fixture
def owner_token(migrated_db: ServiceDatabase) -> str:
    return make_token(migrated_db.app_dsn, OWNER, "owner's phone").token


@pytest.fixture
def intruder_token(migrated_db: ServiceDatabase) -> str:
    return make_token(migrated_db.app_dsn, INTRUDER, "intruder's laptop").token


@pytest.fixture
def owner_entry(anonymous_client: TestClient, owner_token: str) -> int:
    """Give the owner a stored read and chosen preferences; return the read's id."""
    anonymous_client.put(
        f"/api/v1/users/{OWNER}/preferences",
        json={"retention_days": 365, "excluded_categories": ["Health"]},
        headers=bearer(owner_token),
    )
    response = anonymous_client.post(
        f"/api/v1/users/{OWNER}/history",
        json={"article_id": 1, "feed_id": 2, "read_at": datetime.now(UTC).isoformat()},
        headers=bearer(owner_token),
    )
    assert response.status_code == 201, response.text
    return int(response.json()["entry_id"])


def owner_state(owner_conn: psycopg.Connection) -> tuple[object, ...]:
    """Return everything stored about the owner, to tell whether anything changed."""
    preferences = owner_conn.execute(
        "SELECT tracking_enabled, retention_days, excluded_categories, updated_at "
        "FROM user_reading_preferences WHERE user_id = %s",
        (OWNER,),
    ).fetchall()
    reads = owner_conn.execute(
        "SELECT id, article_id FROM reading_history WHERE user_id = %s ORDER BY id",
        (OWNER,),
    ).fetchall()
    audit = owner_conn.execute(
        "SELECT id FROM audit_log WHERE user_id = %s", (OWNER,)
    ).fetchall()
    return preferences, reads, audit


# Authentication


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-token",
        f"Bearer {generate_token()}",
        "Token rh_" + "a" * 43,
    ],
)
def test_every_protected_route_refuses_a_missing_or_unknown_token(
    anonymous_client: TestClient, authorization: str | None
) -> None:
    """Ensure no user route answers anything but 401 without a live token."""
    headers = {"Authorization": authorization} if authorization is not None else {}

    for call in USER_CALLS:
        response = send(anonymous_client, call, headers)

        assert response.status_code == 401, call
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["detail"] in {
            "Not authenticated",
            "Invalid or revoked token",
        }


def test_unauthenticated_request_is_401_before_its_body_is_read(
    anonymous_client: TestClient,
) -> None:
    """Ensure broken JSON without a token is still a 401, not a 422."""
    response = anonymous_client.post(
        f"/api/v1/users/{OWNER}/history",
        content=b'{"article_id": 1,',
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 401


def test_revoked_token_stops_working(
    anonymous_client: TestClient, owner_token: str, owner_conn: psycopg.Connection
) -> None:
    """Verify a token works until revoked, then gets the same 401 as an unknown one."""
    url = f"/api/v1/users/{OWNER}/preferences"
    before = anonymous_client.get(url, headers=bearer(owner_token))

    owner_conn.execute("UPDATE api_tokens SET revoked_at = now()")
    after = anonymous_client.get(url, headers=bearer(owner_token))
    unknown = anonymous_client.get(url, headers=bearer(generate_token()))

    assert before.status_code == 200
    assert after.status_code == 401
    assert after.headers["www-authenticate"] == (
        'Bearer realm="reading-history", error="invalid_token"'
    )
    assert comparable(after) == comparable(unknown)


def test_token_use_is_noted_without_storing_the_token(
    anonymous_client: TestClient, owner_token: str, owner_conn: psycopg.Connection
) -> None:
    """Verify last_used_at is set on use, and only a digest of the token is kept."""
    anonymous_client.get(
        f"/api/v1/users/{OWNER}/preferences", headers=bearer(owner_token)
    )

    rows = owner_conn.execute(
        "SELECT last_used_at, token_sha256 FROM api_tokens"
    ).fetchall()
    [(last_used_at, digest)] = rows
    assert last_used_at is not None
    assert owner_token.encode() not in bytes(digest)
    dump = owner_conn.execute("SELECT api_tokens::text FROM api_tokens").fetchone()
    assert owner_token not in dump[0]


@pytest.mark.parametrize("path", ["/health", "/metrics", "/api/v1/health/db"])
def test_health_and_metrics_need_no_token(
    anonymous_client: TestClient, path: str
) -> None:
    """Verify load balancers and Prometheus reach their routes without a token."""
    assert anonymous_client.get(path).status_code == 200


# Each token reaches its own user only


def test_every_user_route_is_covered_by_the_cross_user_test() -> None:
    """Ensure a route added later cannot escape the cross-user test below."""
    spec = create_app(make_settings("postgresql://u:pw@db.invalid/rh")).openapi()
    user_operations = {
        (method.upper(), path): operation
        for path, operations in spec["paths"].items()
        if "{user_id}" in path
        for method, operation in operations.items()
    }

    assert set(user_operations) == {(call.method, call.template) for call in USER_CALLS}
    assert all(
        operation["security"] == [{"bearerAuth": []}]
        for operation in user_operations.values()
    )


def test_a_user_reaches_no_route_of_another_users_data(
    anonymous_client: TestClient,
    intruder_token: str,
    owner_entry: int,
    owner_conn: psycopg.Connection,
) -> None:
    """Ensure every route with another user's id is a 404 that changes nothing.

    The answer is the same as for an entry that does not exist, so that it
    tells nothing about whether that user has any data.
    """
    before = owner_state(owner_conn)
    missing_entry = anonymous_client.delete(
        f"/api/v1/users/{INTRUDER}/history/{owner_entry}",
        headers=bearer(intruder_token),
    )

    for call in USER_CALLS:
        response = send(
            anonymous_client, call, bearer(intruder_token), entry_id=owner_entry
        )

        assert comparable(response) == comparable(missing_entry), call
    assert missing_entry.status_code == 404
    assert missing_entry.json() == {"detail": "Not Found"}
    assert owner_state(owner_conn) == before


def test_another_users_id_is_404_even_with_a_bad_body(
    anonymous_client: TestClient, intruder_token: str
) -> None:
    """Ensure a request for another user says nothing about what it would accept."""
    responses = [
        anonymous_client.post(
            f"/api/v1/users/{OWNER}/history",
            content=body,
            headers=bearer(intruder_token) | {"Content-Type": "application/json"},
        )
        for body in (b'{"article_id": 1,', b'{"article_id": 0}', b"[]")
    ]

    assert [response.status_code for response in responses] == [404, 404, 404]


def test_the_owner_still_reaches_their_data(
    anonymous_client: TestClient, owner_token: str, owner_entry: int
) -> None:
    """Verify the same calls succeed with the owner's own token."""
    statuses = [
        send(anonymous_client, call, bearer(owner_token), entry_id=owner_entry)
        for call in USER_CALLS
    ]

    assert [response.status_code for response in statuses] == [
        201, 200, 204, 200, 200, 200, 200, 200, 200
    ]  # fmt: skip


def test_refusals_of_other_users_are_counted(
    anonymous_client: TestClient, intruder_token: str
) -> None:
    """Verify attempts on other users' data show up in the metrics."""
    anonymous_client.get(
        f"/api/v1/users/{OWNER}/preferences", headers=bearer(intruder_token)
    )
    anonymous_client.get(f"/api/v1/users/{OWNER}/preferences")

    metrics = anonymous_client.get("/metrics").text

    assert "reading_history_foreign_user_refusals_total 1.0" in metrics
    assert (
        'reading_history_authentication_failures_total{reason="missing"} 1.0' in metrics
    )


# Rate limits


@pytest.fixture
def limited_client(migrated_db: ServiceDatabase) -> Iterator[TestClient]:
    """Run the service with room for three quick requests per token."""
    settings = make_settings(
        migrated_db.app_url, rate_limit_per_minute=6, rate_limit_burst=3
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_a_token_over_its_rate_limit_gets_429_with_retry_after(
    limited_client: TestClient, owner_token: str, intruder_token: str
) -> None:
    """Verify the limit is per token, and says when to come back."""
    url = f"/api/v1/users/{OWNER}/preferences"
    allowed = [
        limited_client.get(url, headers=bearer(owner_token)).status_code
        for _ in range(3)
    ]

    refused = limited_client.get(url, headers=bearer(owner_token))
    other_token = limited_client.get(
        f"/api/v1/users/{INTRUDER}/preferences", headers=bearer(intruder_token)
    )

    assert allowed == [200, 200, 200]
    assert refused.status_code == 429
    assert refused.json() == {"detail": "Too many requests"}
    # Six a minute: the next request is allowed about ten seconds later.
    assert 1 <= int(refused.headers["retry-after"]) <= 10
    assert other_token.status_code == 200
    assert "reading_history_rate_limited_requests_total 1.0" in (
        limited_client.get("/metrics").text
    )


# CORS


def cors_client(migrated_db: ServiceDatabase, origins: str) -> TestClient:
    return TestClient(
        create_app(make_settings(migrated_db.app_url, cors_origins=origins))
    )


def preflight(client: TestClient, origin: str):
    return client.options(
        f"/api/v1/users/{OWNER}/history",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def test_cors_allows_only_the_configured_origins(
    migrated_db: ServiceDatabase, owner_token: str
) -> None:
    """Verify a configured origin may call the API from a browser, others may not."""
    allowed = "https://reader.example"
    with cors_client(migrated_db, f"{allowed}, https://admin.example") as client:
        good = preflight(client, allowed)
        bad = preflight(client, "https://evil.example")
        simple = client.get(
            f"/api/v1/users/{OWNER}/preferences",
            headers=bearer(owner_token) | {"Origin": "https://evil.example"},
        )

    assert good.status_code == 200
    assert good.headers["access-control-allow-origin"] == allowed
    assert "authorization" in good.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in good.headers
    assert bad.status_code == 400
    assert "access-control-allow-origin" not in bad.headers
    assert "access-control-allow-origin" not in simple.headers


def test_cors_is_off_when_no_origin_is_configured(
    migrated_db: ServiceDatabase, owner_token: str
) -> None:
    """Ensure that by default no browser origin gets CORS headers at all."""
    with cors_client(migrated_db, "") as client:
        response = preflight(client, "https://reader.example")
        simple = client.get(
            f"/api/v1/users/{OWNER}/preferences",
            headers=bearer(owner_token) | {"Origin": "https://reader.example"},
        )

    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-origin" not in simple.headers


# Production mode


@pytest.mark.parametrize(
    ("environment", "expose", "expected"),
    [
        ("production", None, 404),
        ("staging", None, 404),
        ("production", True, 200),
        ("development", None, 200),
        ("lab", False, 404),
    ],
)
def test_api_docs_are_hidden_in_production_unless_allowed(
    migrated_db: ServiceDatabase, environment: str, expose: bool | None, expected: int
) -> None:
    """Ensure /docs, /redoc and /openapi.json are off in production by default."""
    settings = make_settings(
        migrated_db.app_url, environment=environment, expose_api_docs=expose
    )
    with TestClient(create_app(settings)) as client:
        statuses = {client.get(path).status_code for path in DOCS_PATHS}

    assert statuses == {expected}


def test_unexpected_errors_answer_500_without_a_traceback(
    migrated_db: ServiceDatabase,
    owner_token: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ensure a bug shows the client a request id only, and logs no data from it."""

    private_words = "Divorce Lawyers"

    async def broken(**_: object) -> None:
        # As PostgreSQL's messages do, this one quotes what the user read.
        raise RuntimeError(f"Failing row contains (41, {private_words})")

    monkeypatch.setattr("reading_history.crud.list_history", broken)
    settings = make_settings(migrated_db.app_url, environment="production")
    with TestClient(create_app(settings)) as client:
        response = client.get(
            f"/api/v1/users/{OWNER}/history",
            headers=bearer(owner_token) | {"X-Request-ID": "req-500"},
        )

    assert response.status_code == 500
    assert response.json() == {
        "detail": "Internal Server Error",
        "request_id": "req-500",
    }
    assert response.headers["x-request-id"] == "req-500"
    [logged] = [r for r in caplog.records if r.getMessage() == "unexpected error"]
    line = JsonFormatter().format(logged)
    assert json.loads(line)["error"] == "RuntimeError"
    assert "in broken" in json.loads(line)["stack"]
    assert private_words not in line
