"""Liveness, and whether the database is reachable with the expected schema."""

from __future__ import annotations

import psycopg
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from psycopg import errors

from reading_history import __version__, crud
from reading_history.api.deps import PoolDep, SettingsDep
from reading_history.core.config import API_V1_PREFIX
from reading_history.core.db import Pool, pool_usage
from reading_history.migrations import expected_version
from reading_history.schemas import DatabaseHealthPublic, HealthPublic, SchemaVersion

# A health check answers quickly or not at all: a load balancer is waiting.
CONNECTION_TIMEOUT_SECONDS = 2.0
STATEMENT_TIMEOUT_MS = 2000

liveness_router = APIRouter(tags=["health"])
router = APIRouter(prefix=f"{API_V1_PREFIX}/health", tags=["health"])


@liveness_router.get("/health")
async def health(settings: SettingsDep) -> HealthPublic:
    """Report that the process is up, and which release it runs."""
    return HealthPublic(status="ok", version=__version__, release=settings.release)


@router.get(
    "/db",
    response_model=DatabaseHealthPublic,
    responses={
        503: {
            "model": DatabaseHealthPublic,
            "description": "The database is unreachable, or its schema version is "
            "not the one this build expects.",
        }
    },
)
async def database_health(pool: PoolDep) -> JSONResponse:
    """Check the database answers and holds the schema version this build expects."""
    expected = expected_version()
    try:
        found = await _found_version(pool)
    except psycopg.Error as error:
        return _answer(
            reason=_failure_reason(error), found=None, expected=expected, pool=pool
        )

    if found < expected:
        return _answer(
            reason="schema_behind", found=found, expected=expected, pool=pool
        )
    if found > expected:
        return _answer(reason="schema_ahead", found=found, expected=expected, pool=pool)
    return _answer(reason=None, found=found, expected=expected, pool=pool)


async def _found_version(pool: Pool) -> int:
    async with pool.connection(timeout=CONNECTION_TIMEOUT_SECONDS) as conn:
        return await crud.fetch_schema_version(
            conn=conn, timeout_ms=STATEMENT_TIMEOUT_MS
        )


def _failure_reason(error: psycopg.Error) -> str:
    if isinstance(error, errors.QueryCanceled):
        return "database_timeout"
    if isinstance(error, psycopg.OperationalError):
        return "database_unreachable"
    return "database_error"


def _answer(
    *, reason: str | None, found: int | None, expected: int, pool: Pool
) -> JSONResponse:
    body = DatabaseHealthPublic(
        status="unhealthy" if reason else "ok",
        reason=reason,
        schema_version=SchemaVersion(found=found, expected=expected),
        pool=pool_usage(pool),
    )
    status_code = 503 if reason else 200
    return JSONResponse(body.model_dump(mode="json"), status_code=status_code)
