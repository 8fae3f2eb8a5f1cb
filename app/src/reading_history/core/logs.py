"""Logs as one JSON object per line, with secrets kept out."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else was passed with `extra=`.
STANDARD_ATTRIBUTES = frozenset(
    logging.makeLogRecord({}).__dict__.keys() | {"message", "asctime", "taskName"}
)

# Fields that may carry a secret or a user's private words, whoever logs them.
REDACTED_FIELDS = frozenset(
    {"authorization", "password", "token", "access_token", "notes", "database_url"}
)
REDACTED = "[redacted]"


class JsonFormatter(logging.Formatter):
    """Format a record as a single JSON line, extra fields included."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update(extra_fields(record))
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """Return the fields a record was given with `extra=`, secrets replaced."""
    return {
        key: REDACTED if key.lower() in REDACTED_FIELDS else value
        for key, value in record.__dict__.items()
        if key not in STANDARD_ATTRIBUTES and not key.startswith("_")
    }


def configure_logging(level: str) -> None:
    """Send every log record to stderr as JSON, once, at the given level."""
    root = logging.getLogger()
    root.setLevel(level)
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
