"""Tests for the JSON log lines and the request ids they carry."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from reading_history.core.logs import JsonFormatter, configure_logging
from reading_history.core.middleware import request_id_for


def format_record(message: str, **extra: object) -> dict[str, object]:
    record = logging.makeLogRecord(
        {"name": "reading_history.test", "levelname": "INFO", "msg": message, **extra}
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    return json.loads(line)


def test_record_becomes_one_json_object_with_its_extra_fields() -> None:
    """Verify a log line is JSON holding the message and what was passed as extra."""
    payload = format_record("request", request_id="abc123", status=201)

    assert payload["message"] == "request"
    assert payload["level"] == "INFO"
    assert payload["logger"] == "reading_history.test"
    assert payload["request_id"] == "abc123"
    assert payload["status"] == 201
    assert str(payload["ts"]).endswith("+00:00")


@pytest.mark.parametrize(
    "field", ["password", "token", "Authorization", "notes", "database_url"]
)
def test_secret_fields_are_redacted(field: str) -> None:
    """Ensure a secret passed to the logger by mistake never reaches the output."""
    payload = format_record("oops", **{field: "hunter2"})

    assert payload[field] == "[redacted]"
    assert "hunter2" not in json.dumps(payload)


def test_exception_is_kept_in_the_same_line() -> None:
    """Verify a traceback stays inside the JSON object, not on lines of its own."""
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.makeLogRecord(
            {"name": "x", "levelname": "ERROR", "msg": "failed"}
        )
        record.exc_info = sys.exc_info()

    line = JsonFormatter().format(record)

    assert "\n" not in line
    assert "RuntimeError: boom" in json.loads(line)["exception"]


def test_configure_logging_installs_one_handler_however_often_called() -> None:
    """Ensure configuring twice does not print every line twice."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        configure_logging("INFO")
        configure_logging("DEBUG")
        added = [h for h in root.handlers if h not in before]

        assert len(added) == 1
        assert isinstance(added[0].formatter, JsonFormatter)
        assert root.level == logging.DEBUG
    finally:
        root.handlers[:] = before
        root.setLevel(level)


def scope_with(headers: list[tuple[bytes, bytes]]) -> dict[str, object]:
    return {"type": "http", "headers": headers}


def test_request_id_from_a_proxy_is_kept() -> None:
    """Verify a plain request id from upstream is reused, for tracing across hops."""
    scope = scope_with([(b"x-request-id", b"edge-7f3a.1")])

    assert request_id_for(scope) == "edge-7f3a.1"


@pytest.mark.parametrize(
    "offered", [b"", b"has space", b'quote"inside', b"x" * 65, b"line\\nbreak"]
)
def test_unsafe_request_id_is_replaced(offered: bytes) -> None:
    """Ensure a request id that could forge or bloat log lines is not logged as is."""
    request_id = request_id_for(scope_with([(b"x-request-id", offered)]))

    assert request_id != offered.decode()
    assert len(request_id) == 32 and request_id.isalnum()


def test_request_ids_are_unique_when_none_is_offered() -> None:
    """Verify each request without an id gets a fresh one."""
    ids = {request_id_for(scope_with([])) for _ in range(50)}

    assert len(ids) == 50
