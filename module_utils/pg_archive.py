# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backup archives on disk: their names, checksums, manifests and tables of contents.

Shared by pg_backup, which writes them, pg_restore, which reads them back, and
pg_backup_retention, which prunes them. Nothing here talks to a server, so the
retention module also runs where psycopg is not installed, such as the controller.

A backup is two entries side by side in one folder:

* the archive, ``<stem>.dump`` (pg_dump's custom format, one file) or ``<stem>.dir``
  (its directory format, one folder of files), where the stem is
  ``<database>_<UTC start time>``;
* its manifest, ``<stem>.manifest.json``, written last: its presence means the
  archive is whole and passed verification.

The checksum of a directory archive is the SHA-256 of the lines that ``sha256sum``
prints for its files, ``<SHA-256 of the file>  <name>`` with a newline after each,
the files taken in the byte order of their names. From inside the folder this gives
the same value::

    find . -maxdepth 1 -type f -printf '%P\\0' | LC_ALL=C sort -z \\
        | xargs -0 sha256sum | sha256sum
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

MANIFEST_SUFFIX = ".manifest.json"
ARCHIVE_SUFFIXES = {"custom": ".dump", "directory": ".dir"}
FORMATS = sorted(ARCHIVE_SUFFIXES)
MANIFEST_VERSION = 2
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
BLOCK_SIZE = 1024 * 1024

TOC_LINE_PATTERN = re.compile(r"^(\d+);\s+(\d+)\s+(\d+)\s+(.*)$")
TOC_HEADER_PATTERN = re.compile(r"^;\s+([A-Za-z][A-Za-z_ ]*?):\s+(.*)$")
VERSION_PATTERN = re.compile(r"(\d+)(?:\.(\d+))?")

# pg_restore prints an entry's kind unquoted, and some kinds are several words;
# the longest names come first so "TABLE DATA" is not read as "TABLE".
MULTI_WORD_KINDS = sorted(
    [
        "TABLE DATA",
        "TABLE ATTACH",
        "SEQUENCE SET",
        "SEQUENCE OWNED BY",
        "FK CONSTRAINT",
        "CHECK CONSTRAINT",
        "DEFAULT ACL",
        "MATERIALIZED VIEW",
        "MATERIALIZED VIEW DATA",
        "INDEX ATTACH",
        "SHELL TYPE",
        "EVENT TRIGGER",
        "FOREIGN TABLE",
        "FOREIGN DATA WRAPPER",
        "USER MAPPING",
        "ROW SECURITY",
        "PUBLICATION TABLE",
        "PUBLICATION TABLES IN SCHEMA",
        "OPERATOR CLASS",
        "OPERATOR FAMILY",
        "TEXT SEARCH CONFIGURATION",
        "TEXT SEARCH DICTIONARY",
        "TEXT SEARCH PARSER",
        "TEXT SEARCH TEMPLATE",
        "ACCESS METHOD",
        "PROCEDURAL LANGUAGE",
        "LARGE OBJECT",
        "BLOB METADATA",
        "DATABASE PROPERTIES",
    ],
    key=len,
    reverse=True,
)


class ManifestError(Exception):
    """A manifest that cannot be read or does not describe a usable backup."""


# Names and times -------------------------------------------------------------


def backup_stem(database: str, moment: datetime.datetime) -> str:
    """Name a backup after its database and UTC start time, safe as a file name."""
    safe_database = re.sub(r"[^A-Za-z0-9_.-]", "_", database)
    return f"{safe_database}_{moment.astimezone(datetime.UTC):%Y%m%dT%H%M%SZ}"


def iso_utc(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime(TIME_FORMAT)


def parse_iso_utc(text: str) -> datetime.datetime:
    """Read a time as the manifests write it; ValueError when it is not one."""
    return datetime.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=datetime.UTC)


def archive_name(stem: str, archive_format: str) -> str:
    return stem + ARCHIVE_SUFFIXES[archive_format]


def manifest_name(stem: str) -> str:
    return stem + MANIFEST_SUFFIX


def major_of(version: str) -> int | None:
    """Return the major number of a version such as '15.8 (Debian ...)', or None."""
    match = VERSION_PATTERN.search(version or "")
    return int(match.group(1)) if match else None


# Checksums -------------------------------------------------------------------


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(BLOCK_SIZE), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Digest:
    """Checksum, size and files of an archive, as the manifest records them."""

    sha256: str
    size: int
    # Each file of the archive by its name (inside the folder for a directory
    # archive), with its size and SHA-256.
    files: dict[str, dict[str, Any]]


def directory_listing(files: dict[str, dict[str, Any]]) -> str:
    """The text whose SHA-256 is a directory archive's checksum, in sha256sum's form."""
    names = sorted(files, key=lambda name: name.encode("utf-8", "surrogateescape"))
    return "".join(f"{files[name]['sha256']}  {name}\n" for name in names)


def digest_of(path: str, archive_format: str) -> Digest:
    """Hash an archive; a directory archive must hold regular files only."""
    if archive_format == "custom":
        sha256 = sha256_of(path)
        size = os.path.getsize(path)
        return Digest(sha256, size, {os.path.basename(path): {"size": size, "sha256": sha256}})

    files: dict[str, dict[str, Any]] = {}
    with os.scandir(path) as entries:
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                raise OSError(f"'{entry.path}' in a directory archive is not a regular file")
            files[entry.name] = {
                "size": entry.stat(follow_symlinks=False).st_size,
                "sha256": sha256_of(entry.path),
            }
    listing = directory_listing(files).encode("utf-8", "surrogateescape")
    size = sum(item["size"] for item in files.values())
    return Digest(hashlib.sha256(listing).hexdigest(), size, files)


def checksum_problems(path: str, archive_format: str, manifest: dict[str, Any]) -> list[str]:
    """Compare an archive on disk with what its manifest recorded; [] when they agree."""
    try:
        digest = digest_of(path, archive_format)
    except OSError as error:
        return [f"cannot read archive '{path}': {error}"]

    problems = []
    recorded = manifest.get("files") or {}
    if archive_format == "directory" and recorded:
        missing = sorted(recorded.keys() - digest.files.keys())
        extra = sorted(digest.files.keys() - recorded.keys())
        changed = sorted(
            name
            for name in recorded.keys() & digest.files.keys()
            if recorded[name].get("sha256") != digest.files[name]["sha256"]
        )
        problems += [f"file {name} is missing" for name in missing]
        problems += [f"file {name} is not in the manifest" for name in extra]
        problems += [f"file {name} differs from the manifest" for name in changed]
    if digest.sha256 != manifest.get("sha256"):
        problems.append(
            f"SHA-256 of '{path}' is {digest.sha256}, the manifest recorded "
            f"{manifest.get('sha256')}"
        )
    elif digest.size != manifest.get("size"):
        problems.append(
            f"size of '{path}' is {digest.size}, the manifest recorded {manifest.get('size')}"
        )
    return problems


# Tables of contents ----------------------------------------------------------


@dataclass(frozen=True)
class TocEntry:
    """One line of pg_restore --list: what the archive holds and where it belongs."""

    dump_id: int
    kind: str
    schema: str
    name: str
    owner: str


def parse_toc_line(line: str) -> TocEntry | None:
    """Parse '<id>; <catalog oid> <oid> <kind> <schema> <name> <owner>'; None if not one."""
    match = TOC_LINE_PATTERN.match(line.strip())
    if not match:
        return None

    rest = match.group(4)
    kind = next((k for k in MULTI_WORD_KINDS if rest.startswith(f"{k} ")), rest.split(" ")[0])
    words = rest[len(kind) :].split()
    if len(words) < 3:
        return None

    # The schema is one word ("-" when none); the owner is the last; the name may have spaces.
    return TocEntry(int(match.group(1)), kind, words[0], " ".join(words[1:-1]), words[-1])


def parse_toc(listing: str) -> list[TocEntry]:
    """Parse pg_restore --list output; comment lines start with ';' and are skipped."""
    entries = (parse_toc_line(line) for line in listing.splitlines() if not line.startswith(";"))
    return [entry for entry in entries if entry is not None]


def parse_toc_header(listing: str) -> dict[str, str]:
    """Read the ';     Key: value' lines pg_restore --list prints before the entries."""
    header = {}
    for line in listing.splitlines():
        if not line.startswith(";"):
            break
        match = TOC_HEADER_PATTERN.match(line)
        if match:
            header[match.group(1)] = match.group(2).strip()
    return header


def qualified(table: str) -> tuple[str, str]:
    """Split 'schema.table' at its first dot; a bare name belongs to public."""
    schema, dot, name = table.partition(".")
    return (schema, name) if dot else ("public", table)


def table_key(schema: str, name: str) -> str:
    """Name a table in the manifest: bare in public, 'schema.table' elsewhere.

    A public table with a dot in its name is written 'public.<name>', so that
    qualified() reads every key back to its schema and table.
    """
    return name if schema == "public" and "." not in name else f"{schema}.{name}"


def missing_from_toc(entries: list[TocEntry], tables: list[str]) -> list[str]:
    """Describe every table that lacks its definition or its data in the archive."""
    present = {(entry.kind, entry.schema, entry.name) for entry in entries}
    problems = []
    for table in tables:
        schema, name = qualified(table)
        for kind in ("TABLE", "TABLE DATA"):
            if (kind, schema, name) not in present:
                problems.append(f"{kind} entry for {schema}.{name} is missing")
    return problems


def count_problems(expected: dict[str, int], found: dict[str, int]) -> list[str]:
    """Compare row counts table by table; [] when both name the same tables and rows."""
    problems = [f"table {name} is missing" for name in sorted(expected.keys() - found.keys())]
    problems += [
        f"table {name} is not in the manifest" for name in sorted(found.keys() - expected.keys())
    ]
    problems += [
        f"table {name} has {found[name]} rows, the manifest counted {expected[name]}"
        for name in sorted(expected.keys() & found.keys())
        if found[name] != expected[name]
    ]
    return problems


# Manifests -------------------------------------------------------------------

REQUIRED_MANIFEST_KEYS = ("file", "sha256", "size", "database", "started_at", "tables", "verified")


def read_manifest(path: str) -> dict[str, Any]:
    """Load and check a manifest; ManifestError names what is wrong with it."""
    try:
        with open(path, encoding="utf-8") as stream:
            manifest = json.load(stream)
    except OSError as error:
        raise ManifestError(f"cannot read manifest '{path}': {error.strerror or error}") from error
    except ValueError as error:
        raise ManifestError(f"manifest '{path}' is not valid JSON: {error}") from error

    if not isinstance(manifest, dict):
        raise ManifestError(f"manifest '{path}' does not hold a JSON object")
    missing = [key for key in REQUIRED_MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ManifestError(f"manifest '{path}' lacks {', '.join(missing)}")
    try:
        parse_iso_utc(manifest["started_at"])
    except (TypeError, ValueError) as error:
        raise ManifestError(f"manifest '{path}' has no valid started_at: {error}") from error

    # Manifests written before the directory format existed describe custom archives.
    manifest.setdefault("format", "custom")
    if manifest["format"] not in ARCHIVE_SUFFIXES:
        raise ManifestError(f"manifest '{path}' names an unknown format '{manifest['format']}'")

    # The archive must be the manifest's own sibling: a manifest never points elsewhere,
    # so pruning or restoring can never reach outside the backup folder.
    stem = os.path.basename(path)[: -len(MANIFEST_SUFFIX)]
    if manifest["file"] != archive_name(stem, manifest["format"]):
        raise ManifestError(
            f"manifest '{path}' names archive '{manifest['file']}', expected "
            f"'{archive_name(stem, manifest['format'])}'"
        )
    return manifest


def archive_path(manifest_path: str, manifest: dict[str, Any]) -> str:
    return os.path.join(os.path.dirname(manifest_path), manifest["file"])


def remove_path(path: str) -> None:
    """Remove a file or a whole folder; a path that is already gone is no error."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        with suppress(FileNotFoundError):
            os.unlink(path)


# The backups of a folder -----------------------------------------------------


@dataclass(frozen=True)
class Backup:
    """One backup of a folder, as its manifest describes it."""

    stem: str
    manifest_path: str
    archive: str
    database: str
    started_at: datetime.datetime
    finished_at: datetime.datetime | None
    verified: bool

    def describe(self, reason: str) -> dict[str, Any]:
        return {
            "name": self.stem,
            "archive": self.archive,
            "manifest": self.manifest_path,
            "database": self.database,
            "started_at": iso_utc(self.started_at),
            "verified": self.verified,
            "reason": reason,
        }


def list_backups(folder: str) -> tuple[list[Backup], list[dict[str, str]]]:
    """Read every manifest of a folder; return the backups and what was passed over.

    A backup counts as verified only when its manifest says so and its archive is
    still there. Backups come newest first by the start time in their manifest,
    then by its end time; file names and modification times play no part.
    """
    backups, passed_over = [], []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(MANIFEST_SUFFIX) or name.startswith("."):
            continue
        path = os.path.join(folder, name)
        try:
            manifest = read_manifest(path)
        except ManifestError as error:
            passed_over.append({"name": name, "reason": str(error)})
            continue
        archive = archive_path(path, manifest)
        finished_at = None
        with suppress(TypeError, ValueError):
            finished_at = parse_iso_utc(manifest.get("finished_at"))
        backups.append(
            Backup(
                stem=name[: -len(MANIFEST_SUFFIX)],
                manifest_path=path,
                archive=archive,
                database=str(manifest["database"]),
                started_at=parse_iso_utc(manifest["started_at"]),
                finished_at=finished_at,
                verified=manifest["verified"] is True and os.path.exists(archive),
            )
        )

    oldest = datetime.datetime.min.replace(tzinfo=datetime.UTC)
    backups.sort(key=lambda backup: (backup.started_at, backup.finished_at or oldest), reverse=True)
    return backups, passed_over
