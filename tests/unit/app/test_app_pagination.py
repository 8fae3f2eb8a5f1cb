"""Tests for the opaque cursors of history listings."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from reading_history.pagination import (
    Cursor,
    InvalidCursorError,
    decode_cursor,
    encode_cursor,
)


def raw_cursor(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def test_cursor_survives_a_round_trip() -> None:
    """Verify a cursor decodes to the same instant, to the microsecond, and id."""
    cursor = Cursor(read_at=datetime(2024, 5, 1, 8, 30, 1, 123456, UTC), entry_id=42)

    assert decode_cursor(encode_cursor(cursor)) == cursor


def test_cursor_is_url_safe() -> None:
    """Ensure a cursor can sit in a query string without escaping."""
    cursor = Cursor(read_at=datetime(2024, 5, 1, tzinfo=UTC), entry_id=2**63 - 1)

    text = encode_cursor(cursor)

    assert text.replace("-", "").replace("_", "").isalnum()


def test_cursor_instant_comes_back_in_utc() -> None:
    """Verify an instant with an offset is compared as the same instant in UTC."""
    paris = timezone(timedelta(hours=2))
    read_at = datetime(2024, 5, 1, 10, 0, tzinfo=paris)

    decoded = decode_cursor(raw_cursor([read_at.isoformat(), 7]))

    assert decoded.read_at == read_at
    assert decoded.read_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not-base64!!",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        raw_cursor("2024-05-01T00:00:00+00:00"),
        raw_cursor(["2024-05-01T00:00:00+00:00"]),
        raw_cursor(["2024-05-01T00:00:00", 1]),
        raw_cursor(["yesterday", 1]),
        raw_cursor(["2024-05-01T00:00:00+00:00", "1"]),
        raw_cursor(["2024-05-01T00:00:00+00:00", True]),
        raw_cursor(["2024-05-01T00:00:00+00:00", 0]),
        raw_cursor(["2024-05-01T00:00:00+00:00", 2**63]),
        raw_cursor(["0001-01-01T00:00:00+14:00", 1]),
        raw_cursor({"read_at": "2024-05-01T00:00:00+00:00", "id": 1}),
    ],
)
def test_forged_or_damaged_cursor_is_refused(text: str) -> None:
    """Ensure a cursor the service did not make raises InvalidCursorError only."""
    with pytest.raises(InvalidCursorError):
        decode_cursor(text)
