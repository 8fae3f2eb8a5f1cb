"""Tests for metrics, request ids and the JSON request log, in-process and served."""

from __future__ import annotations

import json
import logging
import subprocess

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from reading_history.core.logs import JsonFormatter
from reading_history.main import create_app
from reading_history.migrations import expected_version

from rh_support import Roles, ServiceDatabase, bearer, make_settings, make_token

HISTORY_ROUTE = "/api/v1/users/{user_id}/history"
PREFERENCES_ROUTE = "/api/v1/users/{user_id}/preferences"


def scrape(client: TestClient) -> dict[tuple[str, frozenset], float]:
    """Return every sample at /metrics, keyed by name and labels."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_requests_are_counted_by_route_template_and_status(client: TestClient) -> None:
    """Verify requests are labelled by template, so user ids never become series."""
    client.post("/api/v1/users/7/history", json={"article_id": 1, "feed_id": 1})
    client.post("/api/v1/users/8/history", json={"article_id": 1, "feed_id": 1})
    client.post("/api/v1/users/8/history", json={"article_id": 0, "feed_id": 1})
    client.get("/api/v1/users/12345/nowhere")

    samples = scrape(client)

    total = "reading_history_http_requests_total"
    assert sample(samples, total, method="POST", route=HISTORY_ROUTE, status="201") == 2
    assert sample(samples, total, method="POST", route=HISTORY_ROUTE, status="422") == 1
    assert sample(samples, total, method="GET", route="unmatched", status="404") == 1
    labels = {value for _, label_set in samples for _, value in label_set}
    assert not any("12345" in value for value in labels)


def test_latency_histogram_counts_each_request(client: TestClient) -> None:
    """Verify every answered request lands in the latency histogram of its route."""
    for _ in range(3):
        client.get("/api/v1/users/1/history")

    samples = scrape(client)

    count = sample(
        samples,
        "reading_history_http_request_duration_seconds_count",
        method="GET",
        route=HISTORY_ROUTE,
    )
    assert count == 3


def test_records_created_counts_only_stored_reads(client: TestClient) -> None:
    """Verify a read refused by privacy choices is counted as skipped, not created."""
    client.post("/api/v1/users/1/history", json={"article_id": 1, "feed_id": 1})
    client.put("/api/v1/users/1/preferences", json={"tracking_enabled": False})
    client.post("/api/v1/users/1/history", json={"article_id": 2, "feed_id": 1})

    samples = scrape(client)

    assert sample(samples, "reading_history_history_records_created_total") == 1
    skipped = "reading_history_history_records_skipped_total"
    assert sample(samples, skipped, reason="tracking_disabled") == 1


def test_export_duration_is_observed_per_format(client: TestClient) -> None:
    """Verify each finished export is timed under its format."""
    client.get("/api/v1/users/1/history/export", params={"format": "csv"})
    client.get("/api/v1/users/1/history/export", params={"format": "csv"})
    client.get("/api/v1/users/1/history/export", params={"format": "json"})

    samples = scrape(client)

    name = "reading_history_export_duration_seconds_count"
    assert sample(samples, name, format="csv") == 2
    assert sample(samples, name, format="json") == 1


def test_preference_update_failures_are_counted(client: TestClient) -> None:
    """Verify refused updates are counted, while good updates and reads are not."""
    client.put("/api/v1/users/1/preferences", json={"retention_days": 0})
    client.patch("/api/v1/users/1/preferences", json={"default_export_format": "x"})
    client.patch("/api/v1/users/1/preferences", json={"retention_days": 3})
    client.get("/api/v1/users/0/preferences")

    samples = scrape(client)

    failures = "reading_history_preference_update_failures_total"
    assert sample(samples, failures, reason="validation") == 2


def test_pool_usage_is_exposed(client: TestClient) -> None:
    """Verify the pool's size and use can be watched from Prometheus."""
    samples = scrape(client)

    assert sample(samples, "reading_history_db_pool_max_connections") == 4
    in_use = sample(samples, "reading_history_db_pool_connections", state="in_use")
    idle = sample(samples, "reading_history_db_pool_connections", state="idle")
    assert in_use + idle >= 1
    assert ("reading_history_db_pool_requests_waiting", frozenset()) in samples


def test_request_id_is_returned_and_kept_from_the_caller(client: TestClient) -> None:
    """Verify each response carries a request id, the caller's own when it sent one."""
    fresh = client.get("/health").headers["x-request-id"]
    kept = client.get("/health", headers={"X-Request-ID": "lb-1234"})

    assert len(fresh) == 32
    assert kept.headers["x-request-id"] == "lb-1234"


def test_each_request_is_logged_once_without_secrets(
    client: TestClient, migrated_db: ServiceDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    """Ensure one log line per request names its id and route, and no token."""
    token = make_token(migrated_db.app_dsn, 5).token
    caplog.set_level(logging.INFO, logger="reading_history.requests")

    response = client.get(
        "/api/v1/users/5/history",
        params={"limit": 5},
        headers=bearer(token) | {"X-Request-ID": "req-42"},
    )

    records = [r for r in caplog.records if r.name == "reading_history.requests"]
    assert len(records) == 1
    line = json.loads(JsonFormatter().format(records[0]))
    assert response.headers["x-request-id"] == "req-42"
    assert line["request_id"] == "req-42"
    assert line["route"] == HISTORY_ROUTE
    assert line["status"] == 200
    assert line["method"] == "GET"
    assert token not in json.dumps(line)


def test_startup_log_names_the_database_but_not_its_password(
    migrated_db: ServiceDatabase, db_roles: Roles, caplog: pytest.LogCaptureFixture
) -> None:
    """Ensure the start-up line says where the service connects, never the password."""
    caplog.set_level(logging.INFO, logger="reading_history")

    with TestClient(create_app(make_settings(migrated_db.app_url))):
        pass

    [starting] = [r for r in caplog.records if r.getMessage() == "starting"]
    line = JsonFormatter().format(starting)
    assert db_roles.password not in line
    assert migrated_db.app_role in line
    assert json.loads(line)["expected_schema_version"] == expected_version()


def test_serve_answers_over_http_and_logs_json_lines(
    served: tuple[str, subprocess.Popen], db_roles: Roles
) -> None:
    """Verify the real server answers and writes only JSON lines, password-free."""
    base_url, process = served

    health = httpx.get(f"{base_url}/health", timeout=5)
    database = httpx.get(f"{base_url}/api/v1/health/db", timeout=5)
    process.terminate()
    _, stderr = process.communicate(timeout=10)

    assert health.json()["release"] == "served-test"
    assert database.status_code == 200
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    requests = [line for line in lines if line["logger"] == "reading_history.requests"]
    assert health.headers["x-request-id"] in {line["request_id"] for line in requests}
    assert db_roles.password not in stderr


def test_served_logs_hold_no_token_password_or_personal_words(
    served: tuple[str, subprocess.Popen], migrated_db: ServiceDatabase, db_roles: Roles
) -> None:
    """Ensure what a user sends or reads, and how they sign in, stays out of logs."""
    base_url, process = served
    token = make_token(migrated_db.app_dsn, 3).token
    forged = "rh_" + "A" * 43
    private_words = ["Fertility Clinic Reviews", "a note to myself about Sam"]
    history = f"{base_url}/api/v1/users/3/history"

    with httpx.Client(headers=bearer(token), timeout=5) as user_client:
        user_client.post(
            history,
            json={"article_id": 1, "feed_id": 1, "category": private_words[0]},
        )
        user_client.post(
            history, json={"article_id": 2, "feed_id": 1, "notes": private_words[1]}
        )
        user_client.get(history, params={"category": private_words[0]})
        user_client.get(f"{history}/export", params={"format": "csv"})
        user_client.get(f"{base_url}/api/v1/users/4/preferences")
    httpx.get(history, headers=bearer(forged), timeout=5)
    process.terminate()
    _, stderr = process.communicate(timeout=10)

    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    user_requests = [
        line
        for line in lines
        if line["logger"] == "reading_history.requests"
        and line["path"].startswith("/api/v1/users/")
    ]
    assert [line["status"] for line in user_requests] == [201, 422, 200, 200, 404, 401]
    for secret in (token, forged, db_roles.password, *private_words):
        assert secret not in stderr
