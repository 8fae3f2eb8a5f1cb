"""Answers for errors that are not the route's own doing."""

from __future__ import annotations

import json
import logging

import psycopg
from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

logger = logging.getLogger("reading_history")


async def invalid_request(_request: Request, exc: Exception) -> Response:
    """Answer 422 listing the problems, even when the input cannot be UTF-8 encoded.

    The default handler echoes the input as UTF-8 and fails with a 500 on a
    lone surrogate such as an escaped U+D800; ASCII-escaped JSON carries it.
    """
    assert isinstance(exc, RequestValidationError)
    errors = jsonable_encoder(exc.errors())
    body = json.dumps({"detail": errors}, ensure_ascii=True)
    return Response(body, status_code=422, media_type="application/json")


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """Answer 503 when the database cannot be reached or times out, not 500."""
    logger.warning(
        "database unavailable",
        extra={
            "request_id": request.scope.get("state", {}).get("request_id"),
            "error": type(exc).__name__,
        },
    )
    return JSONResponse({"detail": "Database unavailable"}, status_code=503)


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, invalid_request)
    # Pool timeouts and statement timeouts are OperationalErrors too.
    app.add_exception_handler(psycopg.OperationalError, database_unavailable)
