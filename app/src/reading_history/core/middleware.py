"""Request ids, one JSON log line per request, request metrics, and 500 answers.

Written as plain ASGI rather than on BaseHTTPMiddleware, so that streamed
exports are timed until their last byte and are not buffered on the way.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reading_history.core.metrics import UNMATCHED_ROUTE, Metrics

REQUEST_ID_HEADER = "X-Request-ID"
# An id sent by a proxy is kept only if it is short and plain, since it is logged.
ACCEPTABLE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

request_logger = logging.getLogger("reading_history.requests")
error_logger = logging.getLogger("reading_history")


def request_id_for(scope: Scope) -> str:
    """Reuse the caller's request id when it is safe to log, or make a new one."""
    offered = Headers(scope=scope).get(REQUEST_ID_HEADER)
    if offered and ACCEPTABLE_REQUEST_ID.match(offered):
        return offered
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    """Return the path template of the route that answered, such as /users/{user_id}.

    Labels use the template, not the path, so one user's id never becomes a series.
    """
    route = scope.get("route")
    if isinstance(route, BaseRoute):
        # path_format leaves out convertors: {entry_id}, not {entry_id:int}.
        template = getattr(route, "path_format", None)
        if isinstance(template, str):
            return template
    return UNMATCHED_ROUTE


def log_unexpected_error(error: Exception, request_id: str) -> None:
    """Log where a request failed, with the error's type but not its message.

    Messages can quote data: PostgreSQL's repeat the row that broke a
    constraint, with what the user read in it. The stack names code only.
    """
    error_logger.error(
        "unexpected error",
        extra={
            "request_id": request_id,
            "error": type(error).__name__,
            "sqlstate": getattr(error, "sqlstate", None),
            "stack": "".join(traceback.format_tb(error.__traceback__)),
        },
    )


def internal_error(request_id: str) -> JSONResponse:
    """Return the answer to a failed request: its id, never a traceback."""
    return JSONResponse(
        {"detail": "Internal Server Error", "request_id": request_id},
        status_code=500,
    )


class RequestObservabilityMiddleware:
    """Tag each request with an id, then log and count it once it is answered."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = request_id_for(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        # Stays 500 if the application fails before it starts a response.
        status = 500
        response_started = False

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception as error:
            log_unexpected_error(error, request_id)
            if response_started:
                # Too late for a 500: the server drops the connection, told
                # only which request failed.
                raise RuntimeError(f"request {request_id} failed midway") from None
            await internal_error(request_id)(scope, receive, send_with_request_id)
        finally:
            self._record(scope, request_id, status, time.perf_counter() - started)

    def _record(
        self, scope: Scope, request_id: str, status: int, seconds: float
    ) -> None:
        route = route_template(scope)
        method = scope["method"]
        self.metrics.observe_request(
            method=method, route=route, status=status, seconds=seconds
        )
        # Headers, query strings and bodies stay out: they may carry tokens.
        request_logger.info(
            "request",
            extra={
                "request_id": request_id,
                "method": method,
                "route": route,
                "path": scope["path"],
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
            },
        )
