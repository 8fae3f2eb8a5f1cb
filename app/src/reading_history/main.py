"""Build the FastAPI application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from reading_history import __version__
from reading_history.api.errors import register_error_handlers
from reading_history.api.main import api_router
from reading_history.core.config import Settings, load_settings
from reading_history.core.db import create_pool, open_pool
from reading_history.core.metrics import Metrics
from reading_history.core.middleware import RequestObservabilityMiddleware
from reading_history.migrations import expected_version

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

    app = FastAPI(
        title="reading-history",
        version=__version__,
        summary="Which articles a user read, exported on request, kept private.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.pool = None
    app.state.metrics = Metrics(get_pool=lambda: app.state.pool)

    app.include_router(api_router)
    app.add_middleware(RequestObservabilityMiddleware, metrics=app.state.metrics)
    register_error_handlers(app)
    return app
