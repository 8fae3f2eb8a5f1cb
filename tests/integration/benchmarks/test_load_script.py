"""The constant-rate pacing of benchmarks/app_load.lua, run by wrk for real.

The server here answers at once except for one pause of every answer, as a
stalled service would. A closed-loop client hides such a pause behind its few
in-flight requests; the script must count every request scheduled during it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

LOAD_SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "app_load.lua"
RATE = 100
SECONDS = 3
CONNECTIONS = 10
PAUSE_AFTER = 1.0
PAUSE_SECONDS = 0.5

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is installed by tools/setup"
)


class PausingServer:
    """An HTTP/1.1 server that echoes X-Request-ID and stops answering once."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.resume_at: float | None = None
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.ready = threading.Event()
        self.server: asyncio.Server | None = None

    async def wait_out_the_pause(self) -> None:
        now = time.monotonic()
        if self.resume_at is None and now - self.started > PAUSE_AFTER:
            self.resume_at = now + PAUSE_SECONDS
        if self.resume_at is not None and now < self.resume_at:
            await asyncio.sleep(self.resume_at - now)

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = dict(
                    line.split(": ", 1)
                    for line in head.decode().split("\r\n")[1:]
                    if ": " in line
                )
                await reader.readexactly(int(headers.get("Content-Length", "0")))
                await self.wait_out_the_pause()
                request_id = headers.get("X-Request-ID", "")
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                    + f"X-Request-ID: {request_id}\r\n\r\n".encode()
                    + b"{}"
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self.serve_connection, "127.0.0.1", 0)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        self.loop.close()

    async def shut_down(self) -> None:
        assert self.server is not None
        self.server.close()
        connections = asyncio.all_tasks() - {asyncio.current_task()}
        for connection in connections:
            connection.cancel()
        await asyncio.gather(*connections, return_exceptions=True)


@pytest.fixture
def pausing_server() -> Iterator[PausingServer]:
    server = PausingServer()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    server.ready.wait(5)
    yield server
    asyncio.run_coroutine_threadsafe(server.shut_down(), server.loop).result(5)
    server.loop.call_soon_threadsafe(server.loop.stop)
    thread.join(5)


def run_load(port: int, tmp_path: Path) -> dict[str, int]:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("1001 token-of-user-1001\n1002 token-of-user-1002\n")
    result = subprocess.run(
        [
            "wrk", "--threads", "1", "--connections", str(CONNECTIONS),
            "--duration", f"{SECONDS}s", "--script", str(LOAD_SCRIPT),
            f"http://127.0.0.1:{port}", "--", str(tokens), str(RATE),
        ],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_requests_leave_at_the_fixed_rate(pausing_server, tmp_path):
    """Ensure the pause does not lower the rate: late slots are sent at once."""
    summary = run_load(pausing_server.port, tmp_path)

    assert 0.9 * RATE * SECONDS <= summary["sent"] <= 1.05 * RATE * SECONDS
    assert summary["answered"] >= summary["sent"] - CONNECTIONS
    assert summary["status_errors"] == summary["unmatched"] == 0


def test_a_pause_counts_for_every_request_scheduled_during_it(pausing_server, tmp_path):
    """Verify latency runs from each request's slot, not from when it was sent.

    About a sixth of the slots fall in the pause, so the slowest tenth must
    show it; measured from sending, only the ten requests in flight would.
    """
    summary = run_load(pausing_server.port, tmp_path)

    assert summary["p50_us"] < 50_000
    assert summary["p90_us"] > 100_000
    assert PAUSE_SECONDS * 1e6 * 0.9 <= summary["max_us"] <= PAUSE_SECONDS * 1e6 * 2
