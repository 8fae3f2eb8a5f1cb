# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Poll an HTTP endpoint until it answers as expected or a deadline passes.

Only the standard library and ansible.module_utils are used, because this runs on the
managed hosts.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import SSLValidationError, open_url

# Header names whose values are credentials; matched anywhere in the name.
SENSITIVE_HEADER_PATTERN = re.compile(
    r"authorization|cookie|token|secret|password|api[-_]?key|session", re.IGNORECASE
)
MASK = "********"

# A health answer is small; a bigger body is cut here rather than filling memory.
MAX_BODY_BYTES = 1024 * 1024

# The smallest per-request timeout worth making when little time is left.
MIN_REQUEST_TIMEOUT = 0.5

TRANSPORT_ERRORS = (
    urllib.error.URLError,
    http.client.HTTPException,
    OSError,
    UrlsConnectionError,
    SSLValidationError,
)


@dataclass
class ProbeResponse:
    """What one request brought back; status is None when no HTTP answer came."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    json: Any = None
    is_json: bool = False
    error: str | None = None


@dataclass
class ProbeResult:
    """The outcome of polling: the last response and the reason it was not accepted."""

    ok: bool
    response: ProbeResponse
    problem: str | None
    attempts: int
    elapsed: float


def is_sensitive_header(name: str) -> bool:
    return bool(SENSITIVE_HEADER_PATTERN.search(name))


def sanitize_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return a copy of headers that is safe to print: credential values are masked."""
    return {
        name: MASK if is_sensitive_header(name) else value
        for name, value in (headers or {}).items()
    }


def sensitive_header_values(headers: Mapping[str, Any] | None) -> list[str]:
    """List the credential values among headers, for the module to mask in its output."""
    return [
        str(value)
        for name, value in (headers or {}).items()
        if is_sensitive_header(name) and value not in (None, "")
    ]


def parse_json(body: str) -> tuple[bool, Any]:
    """Return (True, data) when body is JSON, (False, None) otherwise."""
    try:
        return True, json.loads(body)
    except ValueError:
        return False, None


def probe_once(
    url: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    timeout: float = 5,
    validate_certs: bool = True,
    use_proxy: bool = True,
) -> ProbeResponse:
    """Make one request; HTTP error statuses are answers too, not exceptions."""
    try:
        reply = open_url(
            url,
            method=method,
            headers=dict(headers or {}),
            timeout=timeout,
            validate_certs=validate_certs,
            use_proxy=use_proxy,
        )
    except urllib.error.HTTPError as error:
        # An HTTPError is a full response with a 4xx or 5xx status.
        reply = error
    except TRANSPORT_ERRORS as error:
        return ProbeResponse(error=f"{type(error).__name__}: {error}")

    return read_reply(reply)


def read_reply(reply: Any) -> ProbeResponse:
    """Turn an open_url answer (or HTTPError) into a ProbeResponse."""
    try:
        raw = reply.read(MAX_BODY_BYTES)
    except TRANSPORT_ERRORS as error:
        return ProbeResponse(status=reply.getcode(), error=f"reading the body failed: {error}")

    body = raw.decode("utf-8", errors="replace")
    is_json, data = parse_json(body) if body else (False, None)
    return ProbeResponse(
        status=reply.getcode(),
        headers={name.lower(): value for name, value in (reply.headers or {}).items()},
        body=body,
        json=data,
        is_json=is_json,
    )


def poll(
    request: Callable[[float], ProbeResponse],
    judge: Callable[[ProbeResponse], str | None],
    timeout: float,
    deadline: float,
    interval: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ProbeResult:
    """Call request(timeout) until judge() finds nothing wrong or the deadline passes.

    judge returns None for an acceptable response, otherwise the reason it is not.
    The first request is always made, whatever the deadline. The per-request timeout
    shrinks near the deadline so the whole poll never runs far past it.
    """
    started = clock()
    attempts = 0

    while True:
        remaining = deadline - (clock() - started)
        request_timeout = max(min(timeout, remaining), MIN_REQUEST_TIMEOUT)
        response = request(request_timeout)
        attempts += 1
        problem = judge(response)
        elapsed = clock() - started

        if problem is None:
            return ProbeResult(True, response, None, attempts, elapsed)

        if elapsed + interval >= deadline:
            return ProbeResult(False, response, problem, attempts, elapsed)

        sleep(interval)


# The marker for a dotted key that leads nowhere, distinct from a JSON null.
MISSING = object()


def lookup_dotted(data: Any, dotted_key: str) -> Any:
    """Follow a dotted key (``a.b.0.c``) through dicts and lists; MISSING if absent."""
    current = data
    for part in dotted_key.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return MISSING
    return current


def values_equal(actual: Any, expected: Any) -> bool:
    """Compare JSON values strictly: True is not 1, and "3" is not 3."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual == expected
    if isinstance(actual, (int, float)) and isinstance(expected, (int, float)):
        return actual == expected
    return type(actual) is type(expected) and actual == expected


def json_mismatches(
    data: Any,
    expected: Mapping[str, Any] | None,
    required_fields: list[str] | None,
    prefix: str = "",
) -> list[str]:
    """Describe every way data differs from expected and required_fields; [] if none.

    Keys of expected may be dotted. A dict value is matched as a subset, so the
    response may carry more keys than the expectation names.
    """
    problems = [
        f"field '{key}' is missing"
        for key in required_fields or []
        if lookup_dotted(data, key) is MISSING
    ]

    for key, wanted in (expected or {}).items():
        path = f"{prefix}{key}"
        actual = lookup_dotted(data, key)
        if actual is MISSING:
            problems.append(f"field '{path}' is missing")
        elif isinstance(wanted, dict) and isinstance(actual, dict):
            problems.extend(json_mismatches(actual, wanted, None, prefix=f"{path}."))
        elif not values_equal(actual, wanted):
            problems.append(
                f"field '{path}' is {json.dumps(actual)}, expected {json.dumps(wanted)}"
            )

    return problems
