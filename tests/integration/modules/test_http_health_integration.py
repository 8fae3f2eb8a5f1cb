"""Integration tests of http_health against a small HTTP server on 127.0.0.1.

The server answers from a script of responses per path, so a test can make an
endpoint fail a few times before it recovers, or never recover.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from module_harness import run_module_process

HEALTHY = {
    "status": "ok",
    "schema_version": {"found": 7, "expected": 7},
    "release": "1.4",
}


@dataclass
class Endpoint:
    """Responses served in turn; the last one repeats."""

    responses: list[tuple[int, str]]
    hits: int = 0
    seen_headers: list[dict[str, str]] = field(default_factory=list)

    def next_response(self) -> tuple[int, str]:
        index = min(self.hits, len(self.responses) - 1)
        self.hits += 1
        return self.responses[index]


class ScriptedServer:
    def __init__(self) -> None:
        self.endpoints: dict[str, Endpoint] = {}
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler_class())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def serve(self, path: str, *responses: tuple[int, object]) -> str:
        encoded = [
            (status, body if isinstance(body, str) else json.dumps(body))
            for status, body in responses
        ]
        self.endpoints[path] = Endpoint(encoded)
        return self.url(path)

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self, with_body: bool) -> None:
                endpoint = server.endpoints.get(self.path)
                if endpoint is None:
                    self.send_error(404)
                    return
                endpoint.seen_headers.append(dict(self.headers))
                status, body = endpoint.next_response()
                payload = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if with_body:
                    self.wfile.write(payload)

            def do_GET(self) -> None:
                self.answer(with_body=True)

            def do_HEAD(self) -> None:
                self.answer(with_body=False)

            def log_message(self, *args) -> None:
                """Keep the test output quiet."""

        return Handler


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    scripted.thread.start()
    yield scripted
    scripted.httpd.shutdown()
    scripted.httpd.server_close()


def health(check_mode: bool = False, **args):
    return run_module_process("http_health", args, check_mode=check_mode)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_healthy_endpoint_passes_at_once(server: ScriptedServer) -> None:
    """Ensure a matching answer succeeds on the first attempt and is returned."""
    url = server.serve("/ready", (200, HEALTHY))

    rc, result, _ = health(
        url=url,
        expected_json={"status": "ok", "schema_version.found": 7},
        required_fields=["release"],
    )

    assert rc == 0, result
    assert result["changed"] is False
    assert result["status"] == 200
    assert result["json"] == HEALTHY
    assert result["attempts"] == 1
    assert result["url"] == url


def test_polls_until_the_service_recovers(server: ScriptedServer) -> None:
    """Verify failing answers are retried until a healthy one comes."""
    url = server.serve(
        "/ready", (503, {"status": "starting"}), (503, "oops"), (200, HEALTHY)
    )

    rc, result, _ = health(url=url, interval=0.1, deadline=10)

    assert rc == 0, result
    assert result["attempts"] == 3
    assert server.endpoints["/ready"].hits == 3


def test_wrong_status_until_the_deadline_fails(server: ScriptedServer) -> None:
    """Ensure a service that never recovers fails at the deadline with its status."""
    url = server.serve("/ready", (503, {"status": "starting"}))

    rc, result, _ = health(url=url, deadline=1.5, interval=0.3, timeout=1)

    assert rc == 1
    assert url in result["msg"] and "status 503" in result["msg"]
    assert result["status"] == 503
    assert result["attempts"] >= 3
    assert 1.0 <= result["elapsed"] < 4


def test_json_mismatch_is_described(server: ScriptedServer) -> None:
    """Verify a wrong schema version fails, naming the field and both values."""
    stale = {**HEALTHY, "schema_version": {"found": 6, "expected": 7}}
    url = server.serve("/ready", (200, stale))

    rc, result, _ = health(
        url=url, expected_json={"schema_version.found": 7}, deadline=0.5, interval=0.2
    )

    assert rc == 1
    assert "field 'schema_version.found' is 6, expected 7" in result["msg"]
    assert result["json"] == stale


def test_refused_connection_is_reported(server: ScriptedServer) -> None:
    """Ensure a port nobody listens on fails with the transport error."""
    url = f"http://127.0.0.1:{closed_port()}/ready"

    rc, result, _ = health(url=url, deadline=0.5, interval=0.2)

    assert rc == 1
    assert "last error" in result["msg"] and url in result["msg"]
    assert result["status"] is None


def test_check_mode_still_polls(server: ScriptedServer) -> None:
    """Verify check mode makes the real requests and reports the answer."""
    url = server.serve("/ready", (200, HEALTHY))

    rc, result, _ = health(check_mode=True, url=url, expected_json={"status": "ok"})

    assert rc == 0, result
    assert result["status"] == 200
    assert server.endpoints["/ready"].hits == 1


def test_headers_are_sent_but_credentials_never_printed(server: ScriptedServer) -> None:
    """Ensure the Authorization header reaches the server and not the output."""
    url = server.serve("/ready", (401, {"error": "denied"}))

    rc, result, stdout = health(
        url=url,
        deadline=0,
        headers={"Authorization": "Bearer top-secret-token", "X-Trace": "t1"},
    )

    assert rc == 1
    seen = server.endpoints["/ready"].seen_headers[0]
    assert seen["Authorization"] == "Bearer top-secret-token"
    assert seen["X-Trace"] == "t1"
    assert "top-secret-token" not in stdout
    assert result["request_headers"] == {"Authorization": "********", "X-Trace": "t1"}


def test_other_statuses_can_count_as_healthy(server: ScriptedServer) -> None:
    """Verify status_code widens what passes, here a 503 expected during maintenance."""
    url = server.serve("/live", (503, {"status": "maintenance"}))

    rc, result, _ = health(url=url, status_code=[503], method="HEAD")

    assert rc == 0, result
    assert result["status"] == 503


def test_custom_message_replaces_the_default(server: ScriptedServer) -> None:
    """Ensure msg overrides the failure text while the details stay in the result."""
    url = server.serve("/ready", (500, "{}"))

    rc, result, _ = health(url=url, deadline=0, msg="release 1.4 is not healthy")

    assert rc == 1
    assert result["msg"] == "release 1.4 is not healthy"
    assert result["error"] == "status 500, expected one of [200]"
