"""The SQL migrations shipped with the service, and the schema version they lead to.

Each migration is `NNNN_snake_name.up.sql`, with an optional
`NNNN_snake_name.down.sql` that undoes it. Versions start at 0001 and follow
each other without gaps. The service never applies them itself: the deployment
does, and records each one in `schema_migrations`. This module only finds and
describes them, using nothing beyond the standard library, so that reading the
expected version needs neither the web stack nor a database.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

NO_TRANSACTION_MARKER = "-- reading-history: no-transaction"

MIGRATION_FILENAME = re.compile(
    r"^(?P<version>\d{4})_(?P<name>[a-z0-9]+(?:_[a-z0-9]+)*)"
    r"\.(?P<direction>up|down)\.sql$"
)


class MigrationLayoutError(ValueError):
    """The migration files are misnamed, duplicated, or leave a gap."""


@dataclass(frozen=True)
class MigrationFile:
    """One `.up.sql` or `.down.sql` file."""

    version: int
    name: str
    direction: str
    content: bytes

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.{self.direction}.sql"


@dataclass(frozen=True)
class Migration:
    """One schema change: the SQL that applies it and, optionally, its undo."""

    version: int
    name: str
    up_sql: str
    checksum: str
    transactional: bool
    down_sql: str | None = None
    down_transactional: bool = True


def runs_in_transaction(content: bytes) -> bool:
    """Tell whether a file may run inside a transaction (no marker on line one)."""
    first_line = content.split(b"\n", 1)[0].rstrip(b"\r")
    return first_line != NO_TRANSACTION_MARKER.encode()


def checksum(content: bytes) -> str:
    """Return the checksum recorded for a migration: sha256 of its up file."""
    return hashlib.sha256(content).hexdigest()


def parse_filename(filename: str, content: bytes) -> MigrationFile:
    """Describe one migration file, or raise MigrationLayoutError for a bad name."""
    match = MIGRATION_FILENAME.match(filename)
    if match is None:
        raise MigrationLayoutError(
            f"{filename}: a migration must be named NNNN_snake_name.up.sql "
            "or NNNN_snake_name.down.sql"
        )

    version = int(match["version"])
    if version == 0:
        raise MigrationLayoutError(f"{filename}: versions start at 0001")
    return MigrationFile(version, match["name"], match["direction"], content)


def pair_files(migration_files: list[MigrationFile]) -> list[Migration]:
    """Join up and down files into migrations, checking versions are 1, 2, 3..."""
    ups = _index_by_version(f for f in migration_files if f.direction == "up")
    downs = _index_by_version(f for f in migration_files if f.direction == "down")

    for version, down in downs.items():
        up = ups.get(version)
        if up is None or up.name != down.name:
            raise MigrationLayoutError(
                f"{down.filename}: has no {down.version:04d}_{down.name}.up.sql"
            )

    _check_no_gaps(sorted(ups))
    return [_migration(ups[version], downs.get(version)) for version in sorted(ups)]


def _index_by_version(
    migration_files: Iterable[MigrationFile],
) -> dict[int, MigrationFile]:
    indexed: dict[int, MigrationFile] = {}
    for migration_file in migration_files:
        taken = indexed.get(migration_file.version)
        if taken is not None:
            raise MigrationLayoutError(
                f"{migration_file.filename} and {taken.filename} share the same version"
            )
        indexed[migration_file.version] = migration_file
    return indexed


def _check_no_gaps(versions: list[int]) -> None:
    for expected, version in enumerate(versions, start=1):
        if version != expected:
            raise MigrationLayoutError(
                f"migration {expected:04d} is missing: versions must follow "
                "each other from 0001 without gaps"
            )


def _migration(up: MigrationFile, down: MigrationFile | None) -> Migration:
    return Migration(
        version=up.version,
        name=up.name,
        up_sql=up.content.decode("utf-8"),
        checksum=checksum(up.content),
        transactional=runs_in_transaction(up.content),
        down_sql=down.content.decode("utf-8") if down else None,
        down_transactional=runs_in_transaction(down.content) if down else True,
    )


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """Return the migrations in a folder (by default, the packaged ones) in order."""
    folder = directory if directory is not None else files(__name__)
    migration_files = [
        parse_filename(entry.name, entry.read_bytes())
        for entry in folder.iterdir()
        if entry.is_file() and entry.name.endswith(".sql")
    ]
    return pair_files(migration_files)


def expected_version() -> int:
    """Return the schema version this build expects: its highest migration."""
    return max((m.version for m in load_migrations()), default=0)
