"""Verify what db_backup leaves: the verified backup, its copy, and the retention's work."""

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

BACKUP_DIR = "/var/backups/reading-history"
MIGRATIONS_DIR = "/var/lib/reading-history/migrations"
# What prepare.yml put in the database before the backup.
INSERTED_ROWS = {"reading_history": 5, "user_reading_preferences": 3}
SCRATCH_DB = "molecule_restore_check"
# The copies on the controller, as molecule.yml places them.
COPIES = (
    Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "backups" / "molecule-backup-db"
)


@pytest.fixture
def expected_rows(host):
    """Return the row count of each table: the inserted rows, one per migration."""
    migrations = host.check_output("ls %s", MIGRATIONS_DIR).split()
    applied = len([name for name in migrations if name.endswith(".up.sql")])
    return {**INSERTED_ROWS, "schema_migrations": applied}


@pytest.fixture
def manifests(host):
    """Return every manifest of the backup folder, parsed, by file name."""
    names = host.check_output(
        "find %s -maxdepth 1 -name '*.manifest.json' -printf '%%f\\n'", BACKUP_DIR
    ).split()
    return {
        name: json.loads(host.file(f"{BACKUP_DIR}/{name}").content_string)
        for name in names
    }


@pytest.fixture
def manifest(manifests):
    """Return the manifest of the backup the role made (planted ones say so)."""
    made = [m for m in manifests.values() if m.get("app_release") != "planted"]
    assert len(made) == 1, f"check mode or a second run made backups: {made}"
    return made[0]


@pytest.fixture
def dump(manifest):
    """Return the path of the backup the role made."""
    return f"{BACKUP_DIR}/{manifest['file']}"


def test_backup_folder_is_root_only(host):
    """Ensure nobody but root can list or read the backups."""
    folder = host.file(BACKUP_DIR)
    assert folder.is_directory
    assert folder.user == "root"
    assert folder.group == "root"
    assert folder.mode == 0o700


def test_every_dump_has_a_manifest_and_nothing_else_is_there(host):
    """Verify the folder holds exactly dumps and their manifests, no partial file."""
    names = host.check_output("ls -A %s", BACKUP_DIR).split()
    dumps = {name.removesuffix(".dump") for name in names if name.endswith(".dump")}
    manifests = {
        name.removesuffix(".manifest.json")
        for name in names
        if name.endswith(".manifest.json")
    }
    assert dumps
    assert dumps == manifests
    assert len(names) == 2 * len(dumps), names


def test_retention_kept_by_manifest_time_not_by_name(manifests):
    """Verify retention kept the two newest verified and the young unverified backup.

    By name, reading_history_20990101T000000Z is the newest backup; by its manifest
    it is 30 days old, behind the new backup and the one from 20 days ago.
    """
    kept = sorted(name.removesuffix(".manifest.json") for name in manifests)
    planted_kept = [
        name
        for name in kept
        if manifests[f"{name}.manifest.json"].get("app_release") == "planted"
    ]
    assert planted_kept == [
        "reading_history_20000101T000000Z",
        "reading_history_20500101T000000Z",
    ]
    assert len(kept) == 3


def test_manifest_checksum_and_size_match_the_file(host, dump, manifest):
    """Ensure the manifest describes the very file beside it."""
    assert manifest["file"] == dump.rsplit("/", 1)[1]
    assert manifest["sha256"] == host.check_output("sha256sum %s", dump).split()[0]
    assert manifest["size"] == host.file(dump).size
    assert manifest["files"] == {
        manifest["file"]: {"size": manifest["size"], "sha256": manifest["sha256"]}
    }


def test_manifest_says_verified_by_a_test_restore(host, manifest, expected_rows):
    """Verify the dump passed checksum, table of contents and test restore."""
    verification = manifest["verification"]
    assert manifest["verified"] is True
    assert verification["checks"] == ["checksum", "table_of_contents", "test_restore"]
    assert verification["checksum_matches"] is True
    assert verification["problems"] == []
    assert "public.reading_history" in verification["tables_checked"]
    assert verification["restore"]["rows"] == sum(manifest["tables"].values())
    assert verification["restore"]["dropped"] is True
    # The scratch database is gone.
    databases = host.check_output(
        "runuser -u postgres -- psql -Atc 'SELECT datname FROM pg_database'"
    ).split()
    assert verification["restore"]["database"] not in databases
    assert not [name for name in databases if "_verify_" in name]


def test_manifest_counts_the_rows_prepare_inserted(manifest, expected_rows):
    """Ensure the row counts are those of the data in the database."""
    counted = manifest["tables"]
    assert {table: counted.get(table) for table in expected_rows} == expected_rows
    # Tables that later migrations add hold nothing yet; the migrations' own log
    # does, one row or more per migration.
    app_tables = counted.keys() - expected_rows.keys() - {"schema_migrations_log"}
    assert app_tables
    assert not any(counted[table] for table in app_tables)
    assert manifest["schema_version"] == expected_rows["schema_migrations"]
    assert manifest["database"] == "reading_history"


def test_manifest_names_the_release_and_versions(manifest):
    """Verify the release built on the controller and the versions are recorded."""
    assert re.fullmatch(r"\d+\.\d+\.\d+-[0-9a-f]{12}", manifest["app_release"])
    assert manifest["server_version"].startswith("15.")
    assert manifest["pg_dump_version"].startswith("15.")
    assert manifest["started_at"] <= manifest["finished_at"]


def test_pg_restore_reads_the_dump(host, dump, expected_rows):
    """Ensure pg_restore lists the tables and their data from the file."""
    listing = host.check_output("pg_restore --list %s", dump)
    for table in expected_rows:
        assert re.search(rf"TABLE DATA public {table} ", listing), table


def test_dump_restores_with_the_same_rows(host, dump, expected_rows):
    """Verify the dump restores into an empty database with every row counted."""
    as_postgres = "runuser -u postgres -- "
    host.run(as_postgres + "dropdb --if-exists %s", SCRATCH_DB)
    host.run_test(as_postgres + "createdb %s", SCRATCH_DB)
    try:
        # Root opens the file, which postgres cannot read, and hands it over.
        restored = host.run(
            as_postgres + "pg_restore --no-owner --no-acl --exit-on-error "
            "--dbname=%s < %s",
            SCRATCH_DB,
            dump,
        )
        assert restored.rc == 0, restored.stderr
        for table, count in expected_rows.items():
            found = host.check_output(
                as_postgres + "psql -d %s -Atc %s",
                SCRATCH_DB,
                f"SELECT count(*) FROM public.{table}",
            )
            assert int(found) == count, table
    finally:
        host.run(as_postgres + "dropdb --if-exists %s", SCRATCH_DB)


@pytest.mark.parametrize("suffix", [".dump", ".manifest.json"])
def test_backup_files_are_private(host, dump, suffix):
    """Ensure the dump and its manifest are readable by their owner only."""
    backup_file = host.file(dump.removesuffix(".dump") + suffix)
    assert backup_file.user == "root"
    assert backup_file.mode & 0o077 == 0


def test_controller_holds_an_identical_copy_and_its_manifest(host, dump, manifest):
    """Verify the copy on the controller has the bytes the manifest describes."""
    copy = COPIES / manifest["file"]
    copied_manifest = COPIES / (
        manifest["file"].removesuffix(".dump") + ".manifest.json"
    )
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == manifest["sha256"]
    assert json.loads(copied_manifest.read_text()) == manifest
    assert COPIES.stat().st_mode & 0o077 == 0


def test_controller_retention_removed_the_older_copy():
    """Ensure the controller keeps only the newest verified copy (keep_last 1)."""
    names = sorted(path.name for path in COPIES.iterdir())
    assert len(names) == 2, names
    assert not [name for name in names if name.startswith("reading_history_2099")]
