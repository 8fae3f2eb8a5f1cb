"""The connection pool, opened and closed with the application."""

from __future__ import annotations

from typing import Any, TypeAlias

from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from reading_history.core.config import Settings

Connection: TypeAlias = AsyncConnection[DictRow]
Pool: TypeAlias = AsyncConnectionPool[Connection]

APPLICATION_NAME = "reading-history"
# Seconds libpq waits for a server that does not answer, unless the URL says.
CONNECT_TIMEOUT = 5
# Seconds a request waits for a free connection before it is answered 503.
POOL_TIMEOUT = 10.0


def connection_options(database_url: str) -> dict[str, Any]:
    """Return the options every pooled connection is opened with."""
    options: dict[str, Any] = {"row_factory": dict_row, "autocommit": True}

    # Options written in the URL win over these defaults.
    given = conninfo_to_dict(database_url)
    if "application_name" not in given:
        options["application_name"] = APPLICATION_NAME
    if "connect_timeout" not in given:
        options["connect_timeout"] = CONNECT_TIMEOUT
    # Exports are sent as UTF-8 whatever the database's own encoding.
    if "client_encoding" not in given:
        options["client_encoding"] = "UTF8"
    return options


async def configure_connection(conn: Connection) -> None:
    """Give every connection UTC, so timestamps read back the same everywhere."""
    await conn.execute("SET TimeZone TO 'UTC'")


async def connect(settings: Settings) -> Connection:
    """Open one connection set up as the pool's are, for the command line."""
    database_url = settings.database_url.get_secret_value()
    conn: Connection = await AsyncConnection.connect(
        database_url, **connection_options(database_url)
    )
    await configure_connection(conn)
    return conn


def create_pool(settings: Settings) -> Pool:
    """Build a pool for the settings, not yet open."""
    database_url = settings.database_url.get_secret_value()
    return AsyncConnectionPool(
        database_url,
        connection_class=AsyncConnection[DictRow],
        kwargs=connection_options(database_url),
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=POOL_TIMEOUT,
        configure=configure_connection,
        # A connection broken by a database restart is replaced, not handed out.
        check=AsyncConnectionPool.check_connection,
        name=APPLICATION_NAME,
        open=False,
    )


async def open_pool(pool: Pool) -> None:
    """Open the pool without waiting, so the service starts while the database is down.

    /api/v1/health/db then reports the outage instead of the process failing.
    """
    await pool.open(wait=False)


def pool_usage(pool: Pool) -> dict[str, int]:
    """Return how many connections the pool has, and how they are used."""
    stats = pool.get_stats()
    size = stats.get("pool_size", 0)
    available = stats.get("pool_available", 0)
    return {
        "min": stats.get("pool_min", 0),
        "max": stats.get("pool_max", 0),
        "size": size,
        "available": available,
        "in_use": size - available,
        "waiting": stats.get("requests_waiting", 0),
    }
