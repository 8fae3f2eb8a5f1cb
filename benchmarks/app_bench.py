"""Measure the reading-history service: exports, their memory, and latency under load.

Not a test: it prints figures. One run starts a throwaway PostgreSQL cluster
on loopback, migrates one database as the deployment does, loads it, and runs
`reading-history serve` against it as the restricted role:

1. Export of one user's history as CSV and as JSON, streamed through the
   service with curl, in rows per second and as a ratio to psql running the
   export's own COPY ... WITH CSV straight on the database.
2. The service's resident memory (VmRSS) sampled while it streams a small and
   a large export: streaming should keep them close.
3. Recording reads and listing history for many users at a constant rate with
   wrk, paced by app_load.lua and measured from each request's scheduled time,
   the service run with the production worker count.

    .venv/bin/python benchmarks/app_bench.py

needs wrk, curl and psql (Debian packages wrk, curl, postgresql-client).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [
    str(REPO / "app" / "src"),
    str(REPO / "tests"),
    str(REPO / "tests" / "integration" / "app"),
]

from pgserver import PostgresServer, free_port, running_server  # noqa: E402
from rh_support import (  # noqa: E402
    ServiceDatabase,
    apply_migrations,
    create_roles,
    make_token,
    new_roles,
    service_database,
    start_service,
    wait_until_up,
)

from reading_history.crud import export_copy_statement  # noqa: E402

LARGE_USER = 1
SMALL_USER = 2
# The users of the load test: many, so that each token stays within its limit.
LOAD_USERS = range(1001, 1101)
LOAD_USER_ROWS = 200
RSS_SAMPLE_SECONDS = 0.02
LOAD_SCRIPT = Path(__file__).with_name("app_load.lua")


@dataclass(frozen=True)
class ExportRun:
    export_format: str
    rows: int
    seconds: float
    size: int
    peak_rss_kib: int


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small-rows", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5, help="runs per export")
    parser.add_argument("--rate", type=int, default=300, help="requests a second")
    parser.add_argument("--duration", type=int, default=20, help="load seconds")
    parser.add_argument("--connections", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2, help="serve workers")
    return parser.parse_args()


# The database


def prepare_database(server: PostgresServer) -> ServiceDatabase:
    """Create a database with the deployment's two roles and every migration."""
    name = server.create_database()
    roles = new_roles(name)
    create_roles(server.dsn(name), roles)
    database = service_database(server, name, roles)
    apply_migrations(database.owner_dsn)
    return database


def load_rows(owner_dsn: str, *, user_id: int, rows: int) -> float:
    """Give a user `rows` reads, one a minute back from now; return the seconds."""
    started = time.perf_counter()
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO user_reading_preferences (user_id) VALUES (%s) "
            "ON CONFLICT DO NOTHING",
            (user_id,),
        )
        conn.execute(
            "INSERT INTO reading_history (user_id, article_id, feed_id, category, "
            "read_at, duration_seconds, scroll_depth) "
            "SELECT %s, n, n %% 500 + 1, "
            "(ARRAY['Science', 'Sport', 'Politics, \"quoted\"', NULL])[n %% 4 + 1], "
            "now() - n * interval '1 minute', n %% 600, n %% 101 "
            "FROM generate_series(1, %s) AS n",
            (user_id, rows),
        )
    return time.perf_counter() - started


def analyze(owner_dsn: str) -> None:
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE reading_history")


# The service


@contextmanager
def serving(
    database: ServiceDatabase, *, workers: int, log: Path
) -> Iterator[tuple[str, int]]:
    """Run `reading-history serve` as production does; yield its URL and pid.

    With one worker, that pid is the process that answers requests.
    """
    port = free_port()
    with log.open("a") as log_file:
        process = start_service(
            database.app_url,
            port=port,
            output=log_file,
            environment="production",
            release="benchmark",
            workers=str(workers),
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base_url, process)
        yield base_url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


# Exports


class RssSampler(threading.Thread):
    """Record the highest VmRSS of a process until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.status = Path(f"/proc/{pid}/status")
        self.peak_kib = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak_kib = max(self.peak_kib, read_rss_kib(self.status))
            time.sleep(RSS_SAMPLE_SECONDS)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak_kib


def read_rss_kib(status: Path) -> int:
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def export_through_service(
    base_url: str, pid: int, *, user_id: int, token: str, export_format: str
) -> tuple[float, int, int]:
    """Stream one export with curl; return seconds, bytes and peak RSS in KiB."""
    sampler = RssSampler(pid)
    sampler.start()
    result = subprocess.run(
        [
            "curl", "--silent", "--show-error", "--fail", "--output", "/dev/null",
            "--header", f"Authorization: Bearer {token}",
            "--write-out", "%{time_total} %{size_download}",
            f"{base_url}/api/v1/users/{user_id}/history/export?format={export_format}",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    peak = sampler.stop()
    seconds, size = result.stdout.split()
    return float(seconds), int(size), peak


def copy_with_psql(
    server: PostgresServer, database: ServiceDatabase, *, user_id: int, fmt: str
) -> float:
    """Run the export's own COPY through psql; return the seconds it took."""
    with psycopg.connect(database.owner_dsn) as conn:
        statement = psycopg.ClientCursor(conn).mogrify(
            export_copy_statement(fmt), {"user_id": user_id}
        )
    started = time.perf_counter()
    subprocess.run(
        [str(server.bindir / "psql"), database.app_dsn, "-X", "-q", "-c", statement],
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - started


def best_export(
    base_url: str,
    pid: int,
    *,
    user_id: int,
    token: str,
    fmt: str,
    rows: int,
    repeat: int,
) -> ExportRun:
    """Export `repeat` times; keep the median time and the highest memory."""
    runs = [
        export_through_service(
            base_url, pid, user_id=user_id, token=token, export_format=fmt
        )
        for _ in range(repeat)
    ]
    return ExportRun(
        export_format=fmt,
        rows=rows,
        seconds=statistics.median(seconds for seconds, _, _ in runs),
        size=runs[0][1],
        peak_rss_kib=max(peak for _, _, peak in runs),
    )


# Load


def write_token_file(path: Path, tokens: dict[int, str]) -> None:
    path.write_text("".join(f"{user} {token}\n" for user, token in tokens.items()))


def run_wrk(
    base_url: str, token_file: Path, *, rate: int, seconds: int, connections: int
) -> dict[str, int]:
    """Send requests at `rate` a second for `seconds` with wrk; return its summary.

    The script schedules every request at a fixed interval and measures its
    latency from that scheduled time, so a slow answer counts against the
    requests queued behind it, as with an open-loop load tool.
    """
    result = subprocess.run(
        [
            "wrk", "--threads", "1", "--connections", str(connections),
            "--duration", f"{seconds}s", "--timeout", "5s",
            "--script", str(LOAD_SCRIPT), base_url,
            "--", str(token_file), str(rate),
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    summary: dict[str, int] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


# Report


def mib(kib: int) -> float:
    return kib / 1024


def print_exports(exports: list[ExportRun], psql_seconds: dict[str, float]) -> None:
    """Print each export, and for the large one its speed next to psql's.

    "vs psql CSV" divides psql's time for COPY ... WITH CSV of the same rows by
    the service's; "vs own COPY" divides psql's time for the very COPY the
    service runs for that format (for JSON, the rows written as JSON).
    """
    print("\nExport of one user's history (median of runs), memory sampled during it")
    print(
        f"{'format':<6} {'rows':>9} {'seconds':>8} {'rows/s':>10} {'MB':>7} "
        f"{'vs psql CSV':>11} {'vs own COPY':>11} {'peak RSS MiB':>12}"
    )
    for run in exports:
        large = run.rows > 100_000
        to_csv = f"{psql_seconds['csv'] / run.seconds:.2f}" if large else "-"
        to_own = (
            f"{psql_seconds[run.export_format] / run.seconds:.2f}" if large else "-"
        )
        print(
            f"{run.export_format:<6} {run.rows:>9} {run.seconds:>8.2f} "
            f"{run.rows / run.seconds:>10.0f} {run.size / 1e6:>7.1f} "
            f"{to_csv:>11} {to_own:>11} {mib(run.peak_rss_kib):>12.1f}"
        )
    print(
        f"psql: COPY ... WITH CSV {psql_seconds['csv']:.2f} s, "
        f"the JSON export's COPY {psql_seconds['json']:.2f} s"
    )


def print_memory(exports: list[ExportRun], small_rows: int, rows: int) -> None:
    for fmt in ("csv", "json"):
        peaks = {
            run.rows: run.peak_rss_kib for run in exports if run.export_format == fmt
        }
        print(
            f"{fmt}: peak RSS {mib(peaks[small_rows]):.1f} MiB for {small_rows} rows, "
            f"{mib(peaks[rows]):.1f} MiB for {rows} rows: "
            f"{mib(peaks[rows] - peaks[small_rows]):+.1f} MiB apart"
        )


def print_load(summary: dict[str, int], rate: int, workers: int) -> None:
    achieved = summary["answered"] / (summary["duration_us"] / 1e6)
    errors = summary["status_errors"] + summary["socket_errors"] + summary["unmatched"]
    print(
        f"\nLoad: record a read and list history, {workers} workers, wrk at a "
        "constant rate, latency from each request's scheduled time"
    )
    print(f"{'target/s':>8} {'achieved/s':>10} {'p50 ms':>7} {'p90 ms':>7} "
          f"{'p99 ms':>7} {'max ms':>7} {'errors':>6}")  # fmt: skip
    print(
        f"{rate:>8} {achieved:>10.1f} {summary['p50_us'] / 1000:>7.2f} "
        f"{summary['p90_us'] / 1000:>7.2f} {summary['p99_us'] / 1000:>7.2f} "
        f"{summary['max_us'] / 1000:>7.2f} {errors:>6}"
    )
    print(
        f"sent {summary['sent']}, answered {summary['answered']}; errors: "
        f"{summary['status_errors']} HTTP, {summary['socket_errors']} socket, "
        f"{summary['unmatched']} answers matching no request"
    )


# The run


def measure_exports(
    server: PostgresServer,
    database: ServiceDatabase,
    tokens: dict[int, str],
    arguments: argparse.Namespace,
    log: Path,
) -> None:
    # psql first, which also brings the rows into the cache for everyone after.
    psql_seconds = {
        fmt: statistics.median(
            copy_with_psql(server, database, user_id=LARGE_USER, fmt=fmt)
            for _ in range(arguments.repeat)
        )
        for fmt in ("csv", "json")
    }

    # One worker, so that the memory sampled is that of the process exporting.
    with serving(database, workers=1, log=log) as (base_url, pid):
        exports = [
            best_export(
                base_url, pid, user_id=user_id, token=tokens[user_id], fmt=fmt,
                rows=rows, repeat=arguments.repeat,
            )
            for user_id, rows in (
                (SMALL_USER, arguments.small_rows),
                (LARGE_USER, arguments.rows),
            )
            for fmt in ("csv", "json")
        ]  # fmt: skip

    print_exports(exports, psql_seconds)
    print_memory(exports, arguments.small_rows, arguments.rows)


def measure_load(
    database: ServiceDatabase,
    tokens: dict[int, str],
    arguments: argparse.Namespace,
    scratch: Path,
) -> None:
    token_file = scratch / "tokens.txt"
    write_token_file(token_file, {user: tokens[user] for user in LOAD_USERS})

    with serving(database, workers=arguments.workers, log=scratch / "load.log") as (
        base_url,
        _,
    ):
        # A short warm-up fills the pools and the caches first.
        run_wrk(
            base_url, token_file, rate=arguments.rate, seconds=3,
            connections=arguments.connections,
        )  # fmt: skip
        summary = run_wrk(
            base_url, token_file, rate=arguments.rate, seconds=arguments.duration,
            connections=arguments.connections,
        )  # fmt: skip
    print_load(summary, arguments.rate, arguments.workers)


def main() -> None:
    arguments = parse_arguments()
    # Other work on the machine skews every figure: say how busy it was.
    print(f"{os.cpu_count()} cores; load average before the run: {os.getloadavg()}")
    with running_server() as server, tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        database = prepare_database(server)

        seconds = load_rows(database.owner_dsn, user_id=LARGE_USER, rows=arguments.rows)
        print(f"loaded {arguments.rows} rows in {seconds:.1f} s")
        load_rows(database.owner_dsn, user_id=SMALL_USER, rows=arguments.small_rows)
        for user_id in LOAD_USERS:
            load_rows(database.owner_dsn, user_id=user_id, rows=LOAD_USER_ROWS)
        analyze(database.owner_dsn)

        users = [LARGE_USER, SMALL_USER, *LOAD_USERS]
        tokens = {user: make_token(database.app_dsn, user).token for user in users}

        measure_exports(server, database, tokens, arguments, scratch / "export.log")
        measure_load(database, tokens, arguments, scratch)


if __name__ == "__main__":
    main()
