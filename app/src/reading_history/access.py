"""Who may call the API: tokens made, found, listed and revoked.

Each token acts for exactly one user. The table keeps a digest of each token
(see reading_history.tokens), never the token itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import errors
from psycopg.rows import DictRow

from reading_history import audit
from reading_history.core.db import Connection
from reading_history.tokens import generate_token, looks_like_token, token_digest

TOKEN_NAME_MAX_LENGTH = 100

# Finds a live token and notes its use. The note is written at most once a
# minute, so that busy tokens do not turn every request into a row update.
FIND_AND_TOUCH = """
WITH found AS (
    SELECT id, user_id, name, last_used_at FROM api_tokens
    WHERE token_sha256 = %(digest)s AND revoked_at IS NULL
), touched AS (
    UPDATE api_tokens SET last_used_at = now()
    FROM found
    WHERE api_tokens.id = found.id
      AND (found.last_used_at IS NULL
           OR found.last_used_at < now() - interval '1 minute')
)
SELECT id, user_id, name FROM found
"""


class TokenNameTakenError(ValueError):
    """The user already has a live token of that name."""


@dataclass(frozen=True)
class Principal:
    """The token a request was made with, and the one user it may act for."""

    token_id: int
    token_name: str
    user_id: int

    def actor(self, request_id: str | None) -> audit.Actor:
        return audit.Actor(
            token_id=self.token_id, token_name=self.token_name, request_id=request_id
        )


@dataclass(frozen=True)
class NewToken:
    """A token just made: the only time the token itself is known."""

    token_id: int
    user_id: int
    name: str
    token: str


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about a token: everything but the token and its digest."""

    token_id: int
    user_id: int
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


async def find_principal(*, conn: Connection, token: str) -> Principal | None:
    """Return who a live token acts for, or None for unknown or revoked ones."""
    if not looks_like_token(token):
        return None

    cursor = await conn.execute(FIND_AND_TOUCH, {"digest": token_digest(token)})
    row = await cursor.fetchone()
    if row is None:
        return None
    return Principal(token_id=row["id"], token_name=row["name"], user_id=row["user_id"])


async def create_token(*, conn: Connection, user_id: int, name: str) -> NewToken:
    """Make a token for one user, or raise TokenNameTakenError."""
    token = generate_token()
    async with conn.transaction():
        try:
            cursor = await conn.execute(
                "INSERT INTO api_tokens (user_id, name, token_sha256) "
                "VALUES (%(user_id)s, %(name)s, %(digest)s) RETURNING id",
                {"user_id": user_id, "name": name, "digest": token_digest(token)},
            )
        except errors.UniqueViolation:
            raise TokenNameTakenError(
                f"user {user_id} already has a token named {name!r}"
            ) from None
        row = await cursor.fetchone()
        assert row is not None, "INSERT ... RETURNING gives one row"
        await audit.record(
            conn=conn,
            user_id=user_id,
            action=audit.AuditAction.TOKEN_CREATED,
            actor=audit.COMMAND_LINE,
            details={"token_id": row["id"], "name": name},
        )
    return NewToken(token_id=row["id"], user_id=user_id, name=name, token=token)


async def revoke_token(
    *,
    conn: Connection,
    token_id: int | None = None,
    user_id: int | None = None,
    name: str | None = None,
) -> TokenInfo | None:
    """Revoke one live token, by id or by user and name; None if there was none."""
    if token_id is None and (user_id is None or name is None):
        raise ValueError("name a token by its id, or by its user and name")

    async with conn.transaction():
        cursor = await conn.execute(
            "UPDATE api_tokens SET revoked_at = now() "
            "WHERE revoked_at IS NULL "
            "AND (%(token_id)s::bigint IS NULL OR id = %(token_id)s) "
            "AND (%(user_id)s::bigint IS NULL OR user_id = %(user_id)s) "
            "AND (%(name)s::text IS NULL OR name = %(name)s) "
            "RETURNING id, user_id, name, created_at, last_used_at, revoked_at",
            {"token_id": token_id, "user_id": user_id, "name": name},
        )
        row = await cursor.fetchone()
        if row is None:
            return None
        await audit.record(
            conn=conn,
            user_id=row["user_id"],
            action=audit.AuditAction.TOKEN_REVOKED,
            actor=audit.COMMAND_LINE,
            details={"token_id": row["id"], "name": row["name"]},
        )
    return _token_info(row)


async def list_tokens(
    *, conn: Connection, user_id: int | None = None
) -> list[TokenInfo]:
    """Return the tokens, of one user or of all, oldest first, revoked ones too."""
    cursor = await conn.execute(
        "SELECT id, user_id, name, created_at, last_used_at, revoked_at "
        "FROM api_tokens "
        "WHERE %(user_id)s::bigint IS NULL OR user_id = %(user_id)s "
        "ORDER BY id",
        {"user_id": user_id},
    )
    return [_token_info(row) for row in await cursor.fetchall()]


def _token_info(row: DictRow) -> TokenInfo:
    return TokenInfo(
        token_id=row["id"],
        user_id=row["user_id"],
        name=row["name"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )
