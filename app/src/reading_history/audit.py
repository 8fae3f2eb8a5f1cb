"""The audit trail: who changed, exported or deleted a user's data, and when.

Entries are written in the same transaction as the change they describe, so
that a change is never made without its entry, nor recorded without being
made. Details hold names and counts, never what the user read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from psycopg.types.json import Jsonb

from reading_history.core.db import Connection


class AuditAction(StrEnum):
    PREFERENCES_REPLACED = "preferences_replaced"
    PREFERENCES_UPDATED = "preferences_updated"
    HISTORY_EXPORTED = "history_exported"
    HISTORY_ENTRY_DELETED = "history_entry_deleted"
    HISTORY_DELETED = "history_deleted"
    TOKEN_CREATED = "token_created"
    TOKEN_REVOKED = "token_revoked"


@dataclass(frozen=True)
class Actor:
    """Who acted: the token a request came with, or none for the command line."""

    token_id: int | None = None
    token_name: str | None = None
    request_id: str | None = None


COMMAND_LINE = Actor()


async def record(
    *,
    conn: Connection,
    user_id: int,
    action: AuditAction,
    actor: Actor,
    details: Mapping[str, object] | None = None,
) -> None:
    """Add one entry to the audit trail."""
    await conn.execute(
        "INSERT INTO audit_log "
        "(user_id, action, token_id, token_name, request_id, details) "
        "VALUES (%(user_id)s, %(action)s, %(token_id)s, %(token_name)s, "
        "%(request_id)s, %(details)s)",
        {
            "user_id": user_id,
            "action": action.value,
            "token_id": actor.token_id,
            "token_name": actor.token_name,
            "request_id": actor.request_id,
            "details": Jsonb(dict(details or {})),
        },
    )
