"""Opaque cursors for keyset pagination over (read_at, entry_id), newest first."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from reading_history.schemas import BIGINT_MAX


class InvalidCursorError(ValueError):
    """The cursor was not made by this service, or was altered."""


@dataclass(frozen=True)
class Cursor:
    """The last entry of a page; the next page starts just after it."""

    read_at: datetime
    entry_id: int


def encode_cursor(cursor: Cursor) -> str:
    """Return the cursor as URL-safe text, without padding."""
    payload = json.dumps([cursor.read_at.isoformat(), cursor.entry_id])
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """Read a cursor made by encode_cursor, or raise InvalidCursorError."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        read_at_text, entry_id = json.loads(raw)
        read_at = datetime.fromisoformat(read_at_text)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidCursorError("is not a cursor returned by this service") from None

    if read_at.tzinfo is None or type(entry_id) is not int:
        raise InvalidCursorError("is not a cursor returned by this service")
    if not 1 <= entry_id <= BIGINT_MAX:
        raise InvalidCursorError("is not a cursor returned by this service")

    try:
        return Cursor(read_at=read_at.astimezone(UTC), entry_id=entry_id)
    except OverflowError:
        raise InvalidCursorError("is not a cursor returned by this service") from None
