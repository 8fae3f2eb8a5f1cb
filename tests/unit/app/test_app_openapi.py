"""Tests for the routes the application declares, as its OpenAPI document shows."""

from __future__ import annotations

from typing import Any

import pytest

from reading_history.core.config import Settings
from reading_history.main import create_app


@pytest.fixture(scope="module")
def operations() -> dict[tuple[str, str], dict[str, Any]]:
    """Build the application without a database and list its operations."""
    app = create_app(Settings(database_url="postgresql://u:pw@db.invalid/rh"))
    spec = app.openapi()
    return {
        (method.upper(), path): operation
        for path, methods in spec["paths"].items()
        for method, operation in methods.items()
    }


def test_every_documented_route_exists(
    operations: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """Verify the service offers exactly the routes other parts of the system call."""
    users = "/api/v1/users/{user_id}"

    assert set(operations) == {
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("GET", "/api/v1/health/db"),
        ("POST", f"{users}/history"),
        ("GET", f"{users}/history"),
        ("DELETE", f"{users}/history"),
        ("DELETE", f"{users}/history/{{entry_id}}"),
        ("GET", f"{users}/history/export"),
        ("GET", f"{users}/preferences"),
        ("PUT", f"{users}/preferences"),
        ("PATCH", f"{users}/preferences"),
    }


def test_every_route_is_described(
    operations: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """Ensure each route's docstring reached the OpenAPI document."""
    undescribed = [key for key, op in operations.items() if not op.get("description")]

    assert undescribed == []


def test_no_parameter_is_named_id(
    operations: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """Ensure every id parameter says whose id it is."""
    names = {
        parameter["name"]
        for operation in operations.values()
        for parameter in operation.get("parameters", [])
    }

    assert "id" not in names
    assert {"user_id", "entry_id", "format", "cursor", "limit"} <= names


def test_record_documents_both_outcomes(
    operations: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """Verify clients can see a read may be stored (201) or declined (202)."""
    responses = operations[("POST", "/api/v1/users/{user_id}/history")]["responses"]

    assert {"201", "202", "422"} <= set(responses)


PUBLIC_ROUTES = {("GET", "/health"), ("GET", "/metrics"), ("GET", "/api/v1/health/db")}


def test_bearer_tokens_are_the_declared_security_scheme() -> None:
    """Verify clients and fuzzers learn from the document how to authenticate."""
    app = create_app(Settings(database_url="postgresql://u:pw@db.invalid/rh"))

    schemes = app.openapi()["components"]["securitySchemes"]

    assert schemes == {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "opaque",
            "description": schemes["bearerAuth"]["description"],
        }
    }


def test_every_user_route_requires_the_token_and_documents_its_refusals(
    operations: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """Ensure each protected operation lists every answer it can give."""
    for key, operation in operations.items():
        if key in PUBLIC_ROUTES:
            continue

        assert operation["security"] == [{"bearerAuth": []}], key
        assert {"401", "404", "422", "429", "503"} <= set(operation["responses"]), key
        unauthorized = operation["responses"]["401"]
        assert "WWW-Authenticate" in unauthorized["headers"], key
        assert "Retry-After" in operation["responses"]["429"]["headers"], key


def test_health_and_metrics_need_no_token(
    operations: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """Verify the load balancer's and Prometheus' routes declare no security."""
    for key in PUBLIC_ROUTES:
        assert "security" not in operations[key], key
    assert "503" in operations[("GET", "/api/v1/health/db")]["responses"]


def test_export_documents_both_formats(
    operations: dict[tuple[str, str], dict[str, Any]],
) -> None:
    """Verify the export's JSON items and CSV text are both described."""
    ok = operations[("GET", "/api/v1/users/{user_id}/history/export")]["responses"]

    content = ok["200"]["content"]
    assert content["application/json"]["schema"]["items"] == {
        "$ref": "#/components/schemas/HistoryEntryPublic"
    }
    assert content["text/csv"]["schema"]["type"] == "string"
