"""Build the FastAPI application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from reading_history import __version__
from reading_history.api.errors import register_error_handlers
from reading_history.api.main import api_router
from reading_history.core.config import Settings, load_settings
from reading_history.core.db import create_pool, open_pool
from reading_history.core.logs import configure_logging
from reading_history.core.metrics import Metrics
from reading_history.core.middleware import (
    REQUEST_ID_HEADER,
    RequestObservabilityMiddleware,
)
from reading_history.core.ratelimit import TokenBucketLimiter
from reading_history.migrations import expected_version

CORS_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
CORS_REQUEST_HEADERS = ["Authorization", "Content-Type", REQUEST_ID_HEADER]
CORS_EXPOSED_HEADERS = [REQUEST_ID_HEADER, "Retry-After", "Content-Disposition"]

logger = logging.getLogger("reading_history")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the connection pool for the application's life, and close it after."""
    settings: Settings = app.state.settings
    logger.info(
        "starting",
        extra={
            "version": __version__,
            "release": settings.release,
            "environment": settings.environment,
            "database": settings.redacted_database_url,
            "api_docs": settings.api_docs_enabled,
            "cors_origins": settings.cors_origin_list,
            "rate_limit_per_minute": settings.rate_limit_per_minute,
            "expected_schema_version": expected_version(),
        },
    )

    app.state.pool = create_pool(settings)
    await open_pool(app.state.pool)
    try:
        yield
    finally:
        await app.state.pool.close()
        app.state.pool = None
        logger.info("stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Return the application for the settings, read from the environment if none."""
    settings = settings or load_settings()
    logger.setLevel(settings.log_level)

    docs = settings.api_docs_enabled
    app = FastAPI(
        title="reading-history",
        version=__version__,
        summary="Which articles a user read, exported on request, kept private.",
        lifespan=lifespan,
        # Never debug: an error's traceback goes to the log, not to the client.
        debug=False,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings
    app.state.pool = None
    app.state.metrics = Metrics(get_pool=lambda: app.state.pool)
    app.state.rate_limiter = TokenBucketLimiter(
        per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst
    )

    app.include_router(api_router)
    _add_cors(app, settings.cors_origin_list)
    # Added last, so it is outermost: preflight answers are logged and counted too.
    app.add_middleware(RequestObservabilityMiddleware, metrics=app.state.metrics)
    register_error_handlers(app)
    return app


def _add_cors(app: FastAPI, origins: list[str]) -> None:
    # Without configured origins browsers get no CORS headers: same-origin only.
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_methods=CORS_METHODS,
        allow_headers=CORS_REQUEST_HEADERS,
        expose_headers=CORS_EXPOSED_HEADERS,
        # Tokens travel in a header, never in cookies.
        allow_credentials=False,
        max_age=600,
    )


def create_served_app() -> FastAPI:
    """Build the application as each `serve` worker process does.

    Worker processes start afresh, so each sets up its own JSON logging.
    """
    settings = load_settings()
    configure_logging(settings.log_level)
    return create_app(settings)
