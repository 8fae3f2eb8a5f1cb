"""Answers for errors that are not the route's own doing."""

from __future__ import annotations

import json
import logging

import psycopg
from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

logger = logging.getLogger("reading_history")

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


async def invalid_request(_request: Request, exc: Exception) -> Response:
    """Answer 422 listing the problems, even when the input cannot be UTF-8 encoded.

    The default handler echoes the input as UTF-8 and fails with a 500 on a
    lone surrogate such as an escaped U+D800; ASCII-escaped JSON carries it.
    """
    assert isinstance(exc, RequestValidationError)
    errors = jsonable_encoder(exc.errors())
    body = json.dumps({"detail": errors}, ensure_ascii=True)
    return Response(body, status_code=422, media_type="application/json")


async def unreadable_body(request: Request, exc: Exception) -> Response:
    """Answer 422, as for any malformed JSON, when the body is not even text.

    FastAPI answers 400 when a body cannot be decoded at all, and 422 when it
    decodes to broken JSON; to a client both are the same mistake.
    """
    assert isinstance(exc, HTTPException)
    if not isinstance(exc.__cause__, UnicodeDecodeError):
        return await http_exception_handler(request, exc)

    problem = {
        "type": "json_invalid",
        "loc": ["body"],
        "msg": "JSON decode error",
        "input": {},
        "ctx": {"error": "the body is not UTF-8 text"},
    }
    return await invalid_request(request, RequestValidationError([problem]))


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    """Answer 405 with every method the path takes in Allow, not only one route's.

    Each method of a path is a route of its own, and the route that refuses
    the request knows only its own method.
    """
    assert isinstance(exc, HTTPException)
    allowed = ", ".join(methods_allowed(request))
    return JSONResponse(
        {"detail": exc.detail}, status_code=405, headers={"Allow": allowed}
    )


def methods_allowed(request: Request) -> list[str]:
    """Return the methods some route would take for the request's path."""
    routes = request.app.router.routes
    return [
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in routes
        )
    ]


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
    app.add_exception_handler(400, unreadable_body)
    app.add_exception_handler(405, method_not_allowed)
    # Pool timeouts and statement timeouts are OperationalErrors too.
    app.add_exception_handler(psycopg.OperationalError, database_unavailable)
    # Any other error is answered 500 by RequestObservabilityMiddleware.
