"""Measure pg_backup against plain pg_dump on a database of at least 1 GB.

Not a test: it prints figures. One run starts a throwaway PostgreSQL cluster on
loopback (tests/pgserver.py), creates the service's tables from the app's migrations,
fills reading_history with generate_series until the database passes --size-gb, and
then times, alternately and after one warm-up run of each:

1. plain ``pg_dump -Fc`` into a file;
2. the pg_backup module run as Ansible runs it (a child Python), without the test
   restore: checks, row counts, dump, checksum, table of contents and manifest;
3. the module with the test restore, whose verification time it reports apart.

The target is for (2) to take at most 1.05 times as long as (1).

    .venv/bin/python benchmarks/backup_bench.py [--size-gb 1] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests")]

from module_harness import run_module_process  # noqa: E402
from pgserver import SUPERUSER, SUPERUSER_PASSWORD, PostgresServer, running_server  # noqa: E402

MIGRATIONS = REPO / "app" / "src" / "reading_history" / "migrations"
DATABASE = "reading_history_bench"
USERS = 100_000
CHUNK_ROWS = 2_000_000


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size-gb", type=float, default=1.0, help="least database size"
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs of (1) and (2)")
    parser.add_argument("--verify-runs", type=int, default=1, help="timed runs of (3)")
    return parser.parse_args()


def database_size(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def build_database(server: PostgresServer, least_bytes: int) -> tuple[int, int]:
    """Create the service's tables and fill them; return (rows, database size)."""
    server.create_database(DATABASE)
    with psycopg.connect(server.dsn(DATABASE), autocommit=True) as conn:
        for path in sorted(MIGRATIONS.glob("*.up.sql")):
            conn.execute(path.read_text())
        conn.execute(
            "INSERT INTO user_reading_preferences (user_id)"
            " SELECT n FROM generate_series(1, %s) n",
            [USERS],
        )
        rows = 0
        while database_size(conn) < least_bytes:
            conn.execute(
                "INSERT INTO reading_history (user_id, article_id, feed_id, category,"
                " read_at, duration_seconds, scroll_depth)"
                " SELECT 1 + n %% %s, 1 + (n * 7919) %% 5000000, 1 + n %% 500,"
                " (ARRAY['news', 'sport', 'tech', 'culture', NULL])[1 + n %% 5],"
                " timestamptz '2024-01-01' + n * interval '7 seconds', n %% 600, n %% 101"
                " FROM generate_series(%s::bigint, %s::bigint) n",
                [USERS, rows + 1, rows + CHUNK_ROWS],
            )
            rows += CHUNK_ROWS
            print(
                f"  {rows:>11,} reads, {database_size(conn) / 2**30:.2f} GiB",
                flush=True,
            )
        # Set hint bits and the visibility map now, so that no timed run pays for them.
        conn.execute("VACUUM (FREEZE, ANALYZE)")
        return rows, database_size(conn)


def time_pg_dump(server: PostgresServer, folder: Path) -> float:
    target = folder / "plain.dump"
    started = time.monotonic()
    subprocess.run(
        [
            str(server.bindir / "pg_dump"),
            "--format=custom",
            f"--file={target}",
            "--no-password",
            f"--host={server.host}",
            f"--port={server.port}",
            f"--username={SUPERUSER}",
            DATABASE,
        ],
        check=True,
        env={**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD},
    )
    seconds = time.monotonic() - started
    target.unlink()
    return seconds


def run_backup(
    server: PostgresServer, folder: Path, verify_restore: bool
) -> tuple[float, dict]:
    backups = folder / "module"
    backups.mkdir()
    args = {
        **server.conninfo("postgres"),
        "database": DATABASE,
        "backup_dir": str(backups),
        "verify_restore": verify_restore,
        "pg_dump_path": str(server.bindir / "pg_dump"),
        "pg_restore_path": str(server.bindir / "pg_restore"),
    }
    started = time.monotonic()
    rc, result, _ = run_module_process("pg_backup", args, timeout=7200)
    seconds = time.monotonic() - started
    if rc != 0:
        raise RuntimeError(f"pg_backup failed: {json.dumps(result)[:2000]}")
    shutil.rmtree(backups)
    return seconds, result


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f} s  (runs: {', '.join(f'{v:.2f}' for v in values)})"


def main() -> None:
    args = parse_arguments()
    with (
        running_server() as server,
        tempfile.TemporaryDirectory(prefix="backup-bench-") as tmp,
    ):
        folder = Path(tmp)
        print(f"Filling {DATABASE} to {args.size_gb} GiB or more", flush=True)
        started = time.monotonic()
        rows, size = build_database(server, int(args.size_gb * 2**30))
        print(f"  built in {time.monotonic() - started:.0f} s", flush=True)

        print("Warming up", flush=True)
        time_pg_dump(server, folder)
        _, result = run_backup(server, folder, verify_restore=False)
        dump_size = result["size"]

        plain, module, phases = [], [], []
        for run in range(args.runs):
            print(f"Run {run + 1} of {args.runs}", flush=True)
            plain.append(time_pg_dump(server, folder))
            seconds, result = run_backup(server, folder, verify_restore=False)
            module.append(seconds)
            phases.append(result["durations"])

        verified, verification = [], []
        for run in range(args.verify_runs):
            print(
                f"Run {run + 1} of {args.verify_runs} with the test restore", flush=True
            )
            seconds, result = run_backup(server, folder, verify_restore=True)
            verified.append(seconds)
            verification.append(result["durations"]["verification"])

        ratio = statistics.median(module) / statistics.median(plain)
        print()
        print(
            f"database {DATABASE}: {size / 2**30:.2f} GiB on disk, {rows:,} reads,"
            f" custom dump {dump_size / 2**20:.0f} MiB"
        )
        print(f"(1) pg_dump -Fc                           {summary(plain)}")
        print(f"(2) pg_backup, no test restore            {summary(module)}")
        print(
            f"    ratio (2) / (1)                       {ratio:8.3f}  (target <= 1.050)"
        )
        for name in ("checks", "dump", "checksum", "verification"):
            values = [phase[name] for phase in phases]
            print(f"      of which {name:<27} {statistics.median(values):8.2f} s")
        print(f"(3) pg_backup with the test restore       {summary(verified)}")
        print(f"    of which verification                 {summary(verification)}")


if __name__ == "__main__":
    main()
