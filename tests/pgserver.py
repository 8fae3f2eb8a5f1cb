"""A throwaway PostgreSQL cluster for the integration tests.

The cluster lives in a temporary folder, listens on loopback on a free port and is
removed when the tests end. PostgreSQL refuses to run as root, so when the tests run
as root the cluster is owned and started by the unprivileged ``postgres`` account.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "test-superuser-secret"


def find_pg_bindir() -> Path:
    """Return the folder holding initdb and pg_ctl, newest major version first."""
    configured = os.environ.get("PG_BINDIR")
    if configured:
        return Path(configured)

    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name),
        reverse=True,
    )
    if candidates:
        return candidates[0].parent

    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError("initdb not found: install PostgreSQL or set PG_BINDIR")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    """A running cluster and the means to make databases in it."""

    bindir: Path
    datadir: Path
    port: int
    host: str = "127.0.0.1"
    run_as: str | None = None
    _log: Path = field(init=False)

    def __post_init__(self) -> None:
        self._log = self.datadir.parent / "server.log"

    @property
    def superuser_dsn(self) -> str:
        return self.dsn("postgres")

    def dsn(
        self, dbname: str, user: str = SUPERUSER, password: str = SUPERUSER_PASSWORD
    ) -> str:
        return (
            f"host={self.host} port={self.port} dbname={dbname} "
            f"user={user} password={password}"
        )

    def conninfo(self, dbname: str) -> dict[str, object]:
        """Return connection options in the shape the modules take."""
        return {
            "login_host": self.host,
            "login_port": self.port,
            "login_user": SUPERUSER,
            "login_password": SUPERUSER_PASSWORD,
            "login_db": dbname,
        }

    def _run(self, *argv: str) -> None:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        subprocess.run(command, check=True, capture_output=True, text=True)

    def start(self) -> None:
        password_file = self.datadir.parent / "pwfile"
        password_file.write_text(SUPERUSER_PASSWORD + "\n")
        self._chown(password_file)

        self._run(
            "initdb",
            "--pgdata", str(self.datadir),
            "--username", SUPERUSER,
            "--pwfile", str(password_file),
            "--auth", "scram-sha-256",
            "--encoding", "UTF8",
            "--locale", "C.UTF-8",
        )  # fmt: skip
        password_file.unlink()

        options = (
            f"-c port={self.port} -c listen_addresses={self.host} "
            f"-c unix_socket_directories='{self.datadir.parent}' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl", "start", "--pgdata", str(self.datadir), "--wait",
            "--log", str(self._log), "--options", options,
        )  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "--pgdata", str(self.datadir), "--mode", "fast")

    def _chown(self, path: Path) -> None:
        if self.run_as:
            account = pwd.getpwnam(self.run_as)
            os.chown(path, account.pw_uid, account.pw_gid)

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database and return its name."""
        name = name or f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.superuser_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.superuser_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )


@contextmanager
def running_server() -> Iterator[PostgresServer]:
    """Start a cluster in a temporary folder and remove it afterwards."""
    run_as = SUPERUSER if os.geteuid() == 0 else None
    workdir = Path(tempfile.mkdtemp(prefix="pgtest-"))
    datadir = workdir / "data"
    server = PostgresServer(
        bindir=find_pg_bindir(), datadir=datadir, port=free_port(), run_as=run_as
    )
    if run_as:
        account = pwd.getpwnam(run_as)
        os.chown(workdir, account.pw_uid, account.pw_gid)
        workdir.chmod(0o700)

    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(workdir, ignore_errors=True)
