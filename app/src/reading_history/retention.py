"""Forgetting every read older than its user's retention period.

Recording a read or changing one's preferences already forgets that user's
expired reads; this sweeps everyone, for users who stopped using the service.
It runs from the command line on a timer, alongside the running service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only for types: the command line reads the default batch size from here
    # without loading the database driver.
    from reading_history.core.db import Connection

PURGE_BATCH_SIZE = 5000
USERS_PER_CHUNK = 1000
# A batch waits this long for a row lock held by a request, then the run fails.
LOCK_TIMEOUT = "5s"

DELETE_EXPIRED_BATCH = """
DELETE FROM reading_history WHERE id IN (
    SELECT h.id
    FROM user_reading_preferences p
    JOIN reading_history h
      ON h.user_id = p.user_id
     AND h.read_at < now() - make_interval(days => p.retention_days)
    WHERE p.user_id = ANY(%(user_ids)s) AND p.retention_days IS NOT NULL
    LIMIT %(batch_size)s
)
"""


async def purge_expired(
    *,
    conn: Connection,
    batch_size: int = PURGE_BATCH_SIZE,
    users_per_chunk: int = USERS_PER_CHUNK,
) -> int:
    """Delete every read past its user's retention; return how many were deleted.

    The connection must be in autocommit mode: each batch of at most
    `batch_size` rows is then a transaction of its own, so no lock is held for
    longer than one batch takes, and requests go on meanwhile.
    """
    await conn.execute("SELECT set_config('lock_timeout', %s, false)", [LOCK_TIMEOUT])

    purged = 0
    after_user_id = 0
    while user_ids := await _users_with_retention(
        conn=conn, after_user_id=after_user_id, limit=users_per_chunk
    ):
        purged += await _purge_users(
            conn=conn, user_ids=user_ids, batch_size=batch_size
        )
        after_user_id = user_ids[-1]
    return purged


async def _users_with_retention(
    *, conn: Connection, after_user_id: int, limit: int
) -> list[int]:
    cursor = await conn.execute(
        "SELECT user_id FROM user_reading_preferences "
        "WHERE retention_days IS NOT NULL AND user_id > %(after)s "
        "ORDER BY user_id LIMIT %(limit)s",
        {"after": after_user_id, "limit": limit},
    )
    return [row["user_id"] for row in await cursor.fetchall()]


async def _purge_users(
    *, conn: Connection, user_ids: list[int], batch_size: int
) -> int:
    purged = 0
    while True:
        cursor = await conn.execute(
            DELETE_EXPIRED_BATCH, {"user_ids": user_ids, "batch_size": batch_size}
        )
        purged += cursor.rowcount
        if cursor.rowcount < batch_size:
            return purged
