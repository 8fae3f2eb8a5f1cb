"""Measure what the release's migrations cost the app's writes.

Not a test: it prints figures. One run starts a throwaway PostgreSQL cluster on
loopback (tests/pgserver.py) and keeps a steady write load on reading_history, a few
threads each inserting at a fixed rate through psycopg, while pg_migrate runs, as the
deployment runs it (lock_timeout 500ms, lock retries):

1. Every migration of the app, from an empty database. The writers start writing as
   soon as migration 0002 has made their table.
2. A representative added migration on a reading_history of about a million rows: a
   new column, and an index built with CREATE INDEX CONCURRENTLY.
3. A second added column while a report keeps reading_history locked for a few
   seconds: the migration gives up on each lock wait after its lock_timeout and is
   retried, and the writes queued behind it wait no longer than that.

Each write's wait is measured from the moment it was due, not from when it could
start, so a write held up behind another counts its whole delay. The run prints, per
phase, how long the migrations took, how many writes there were, the longest write
wait and the 50th and 99th percentiles; the target is a longest wait under a second.

    .venv/bin/python benchmarks/migration_bench.py [--rows 1000000] [--writers 4]

The cluster runs with fsync off, as the tests' does: absolute latencies are lower
than on a durable server, the waits a migration causes are not.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests")]

from module_harness import run_module_process
from pgserver import PostgresServer, running_server

MIGRATIONS = REPO / "app" / "src" / "reading_history" / "migrations"
MARKER = "-- reading-history: no-transaction"
TARGET_SECONDS = 1.0
USERS = 1000

ADDED_COLUMN_AND_INDEX = f"""{MARKER}
-- Where each read came from, and the per-feed listing a new page needs.
ALTER TABLE reading_history ADD COLUMN source text;
CREATE INDEX CONCURRENTLY reading_history_feed_id_read_at_idx
    ON reading_history (feed_id, read_at DESC);
"""
ADDED_COLUMN_AND_INDEX_DOWN = """DROP INDEX reading_history_feed_id_read_at_idx;
ALTER TABLE reading_history DROP COLUMN source;
"""
ADDED_COLUMN = "ALTER TABLE reading_history ADD COLUMN device text;\n"
INSERT = (
    "INSERT INTO reading_history (user_id, article_id, feed_id, category, read_at)"
    " VALUES (%s, %s, %s, 'news', now())"
)


@dataclass
class Writes:
    """What the writers saw during one phase."""

    waits: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    def percentile(self, share: float) -> float:
        ordered = sorted(self.waits)
        return (
            ordered[min(len(ordered) - 1, int(share * len(ordered)))]
            if ordered
            else 0.0
        )


class Writer(threading.Thread):
    """Inserts into reading_history at a fixed rate once the table exists."""

    def __init__(
        self, dsn: str, number: int, rate: float, ready: threading.Event
    ) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.ready = ready
        self.number = number
        self.interval = 1.0 / rate
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.writes = Writes()

    def take(self) -> Writes:
        """Hand over what was measured so far and start a fresh tally."""
        with self.lock:
            taken, self.writes = self.writes, Writes()
        return taken

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stopping.is_set():
                if self.ready.is_set():
                    break
                time.sleep(0.005)
            due, count = time.monotonic(), 0
            while not self.stopping.is_set():
                count += 1
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                try:
                    conn.execute(INSERT, [count % USERS + 1, count, self.number + 1])
                    failed = False
                except psycopg.Error:
                    failed = True
                waited = time.monotonic() - due
                with self.lock:
                    self.writes.waits.append(waited)
                    self.writes.errors += failed
                due += self.interval


@contextmanager
def write_load(dsn: str, writers: int, rate: float, ready: threading.Event):
    threads = [Writer(dsn, number, rate, ready) for number in range(writers)]
    for thread in threads:
        thread.start()
    try:
        yield threads
    finally:
        for thread in threads:
            thread.stopping.set()
        for thread in threads:
            thread.join(timeout=30)


def collect(threads: list[Writer], seconds: float) -> Writes:
    merged = Writes(seconds=seconds)
    for thread in threads:
        taken = thread.take()
        merged.waits += taken.waits
        merged.errors += taken.errors
    return merged


def migrate(server: PostgresServer, database: str, folder: Path) -> tuple[float, dict]:
    args = {
        **server.conninfo(database),
        "database": database,
        "path": str(folder),
        "app_release": "bench",
        "lock_timeout": "500ms",
        "lock_retries": 10,
        "lock_retry_delay": 1,
    }
    started = time.monotonic()
    rc, result, _ = run_module_process("pg_migrate", args, timeout=3600)
    took = time.monotonic() - started
    if rc != 0:
        raise SystemExit(f"migration failed: {result.get('msg')}")
    return took, result


def ensure_users(dsn: str, ready: threading.Event) -> None:
    """Create the users the writers write for once reading_history exists, then let
    the writers go."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not conn.execute("SELECT to_regclass('reading_history')").fetchone()[0]:
            time.sleep(0.002)
        conn.execute(
            "INSERT INTO user_reading_preferences (user_id)"
            " SELECT generate_series(1, %s) ON CONFLICT DO NOTHING",
            [USERS],
        )
    ready.set()


def fill(dsn: str, rows: int) -> float:
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO reading_history (user_id, article_id, feed_id, category, read_at)"
            " SELECT g %% %s + 1, g, g %% 500 + 1, 'news',"
            " now() - make_interval(secs => g) FROM generate_series(1, %s) g",
            [USERS, rows],
        )
        conn.execute("VACUUM ANALYZE reading_history")
    return time.monotonic() - started


def report(
    title: str, migrations: float, recorded_ms: int, writes: Writes, notes: str = ""
) -> bool:
    longest = max(writes.waits, default=0.0)
    print(f"\n{title}")
    print(
        f"  migrations took          {migrations:8.3f} s  (recorded {recorded_ms} ms of SQL)"
    )
    print(
        f"  writes                   {len(writes.waits):8d}     "
        f"({len(writes.waits) / writes.seconds:.0f}/s, {writes.errors} failed)"
    )
    print(f"  longest write wait       {longest * 1000:8.1f} ms")
    print(f"  p99 write latency        {writes.percentile(0.99) * 1000:8.1f} ms")
    print(f"  p50 write latency        {writes.percentile(0.50) * 1000:8.1f} ms")
    if notes:
        print(f"  {notes}")
    return longest < TARGET_SECONDS


def recorded(dsn: str, versions: list[int]) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(duration_ms), 0) FROM schema_migrations WHERE version = ANY(%s)",
            [versions],
        ).fetchone()
    return int(row[0])


def hold_table(dsn: str, seconds: float, started: threading.Event) -> None:
    """A report that reads reading_history inside one long transaction."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT count(*) FROM reading_history").fetchone()
        started.set()
        time.sleep(seconds)
        conn.rollback()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="rows before phase 2"
    )
    parser.add_argument("--writers", type=int, default=4, help="writing threads")
    parser.add_argument("--rate", type=float, default=100, help="inserts/s per thread")
    parser.add_argument(
        "--hold", type=float, default=3, help="seconds the report holds"
    )
    args = parser.parse_args()

    ups = sorted(MIGRATIONS.glob("*.up.sql"))
    app_versions = [int(path.name[:4]) for path in ups]
    added, second = max(app_versions) + 1, max(app_versions) + 2
    passed = []

    with tempfile.TemporaryDirectory() as scratch, running_server() as server:
        folder = Path(scratch) / "migrations"
        folder.mkdir()
        for path in MIGRATIONS.glob("*.sql"):
            shutil.copy(path, folder / path.name)
        database = server.create_database("bench")
        dsn = server.dsn(database)
        print(
            f"{len(app_versions)} app migrations, then {args.rows} rows; "
            f"{args.writers} writers at {args.rate:g}/s each; lock_timeout 500ms"
        )

        ready = threading.Event()
        with write_load(dsn, args.writers, args.rate, ready) as threads:
            seeding = threading.Thread(target=ensure_users, args=[dsn, ready])
            seeding.start()
            started = time.monotonic()
            took, _ = migrate(server, database, folder)
            seeding.join()
            time.sleep(1)
            writes = collect(threads, time.monotonic() - started)
        passed.append(
            report(
                f"1. the app's migrations {app_versions} from an empty database",
                took,
                recorded(dsn, app_versions),
                writes,
                "(writes start once 0002 has made reading_history)",
            )
        )

        print(f"\nfilling reading_history: {fill(dsn, args.rows):.1f} s")
        name = f"{added:04d}_add_reading_history_source"
        (folder / f"{name}.up.sql").write_text(ADDED_COLUMN_AND_INDEX)
        (folder / f"{name}.down.sql").write_text(ADDED_COLUMN_AND_INDEX_DOWN)
        with write_load(dsn, args.writers, args.rate, ready) as threads:
            time.sleep(2)
            collect(threads, 0)
            started = time.monotonic()
            took, _ = migrate(server, database, folder)
            time.sleep(1)
            writes = collect(threads, time.monotonic() - started)
        passed.append(
            report(
                f"2. {name}: a column and a concurrent index on {args.rows} rows",
                took,
                recorded(dsn, [added]),
                writes,
            )
        )

        (folder / f"{second:04d}_add_reading_history_device.up.sql").write_text(
            ADDED_COLUMN
        )
        with write_load(dsn, args.writers, args.rate, ready) as threads:
            time.sleep(2)
            collect(threads, 0)
            holding = threading.Event()
            report_thread = threading.Thread(
                target=hold_table, args=[dsn, args.hold, holding]
            )
            started = time.monotonic()
            report_thread.start()
            holding.wait()
            took, result = migrate(server, database, folder)
            report_thread.join()
            time.sleep(1)
            writes = collect(threads, time.monotonic() - started)
        passed.append(
            report(
                f"3. another column while a report holds the table for {args.hold:g} s",
                took,
                recorded(dsn, [second]),
                writes,
                f"(lock retries used: {result['lock_retries_used']})",
            )
        )

    verdict = "met" if all(passed) else "NOT met"
    print(f"\ntarget, longest write wait under {TARGET_SECONDS:g} s: {verdict}")
    return 0 if all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
