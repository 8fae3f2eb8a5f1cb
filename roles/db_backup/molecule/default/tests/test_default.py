"""Verify the backup db_backup leaves on the database host: dump, manifest, privacy."""

import json
import re

import pytest

BACKUP_DIR = "/var/backups/reading-history"
MIGRATIONS_DIR = "/var/lib/reading-history/migrations"
# What prepare.yml put in the database before the backup.
INSERTED_ROWS = {"reading_history": 5, "user_reading_preferences": 3}
SCRATCH_DB = "molecule_restore_check"


@pytest.fixture
def expected_rows(host):
    """Return the row count of each table: the inserted rows, one per migration."""
    migrations = host.check_output("ls %s", MIGRATIONS_DIR).split()
    applied = len([name for name in migrations if name.endswith(".up.sql")])
    return {**INSERTED_ROWS, "schema_migrations": applied}


@pytest.fixture
def dump(host):
    """Return the path of the one dump in the backup folder."""
    dumps = host.check_output("find %s -maxdepth 1 -name '*.dump'", BACKUP_DIR).split()
    assert len(dumps) == 1, f"check mode or a second run left dumps behind: {dumps}"
    return dumps[0]


@pytest.fixture
def manifest(host, dump):
    """Return the manifest beside the dump, parsed."""
    path = dump.removesuffix(".dump") + ".manifest.json"
    return json.loads(host.file(path).content_string)


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


def test_manifest_checksum_and_size_match_the_file(host, dump, manifest):
    """Ensure the manifest describes the very file beside it."""
    assert manifest["file"] == dump.rsplit("/", 1)[1]
    assert manifest["sha256"] == host.check_output("sha256sum %s", dump).split()[0]
    assert manifest["size"] == host.file(dump).size


def test_manifest_says_verified(manifest):
    """Verify the dump passed the module's own verification."""
    assert manifest["verified"] is True
    assert manifest["verification"]["checksum_matches"] is True
    assert manifest["verification"]["problems"] == []
    assert "public.reading_history" in manifest["verification"]["tables_checked"]


def test_manifest_counts_the_rows_prepare_inserted(manifest, expected_rows):
    """Ensure the row counts are those of the data in the database."""
    counted = manifest["tables"]
    assert {table: counted.get(table) for table in expected_rows} == expected_rows
    # Tables that later migrations add hold nothing yet.
    assert not any(counted[table] for table in counted.keys() - expected_rows.keys())
    assert manifest["schema_version"] == expected_rows["schema_migrations"]
    assert manifest["database"] == "reading_history"


def test_manifest_names_the_release(manifest):
    """Verify the release built on the controller is recorded with the backup."""
    assert re.fullmatch(r"\d+\.\d+\.\d+-[0-9a-f]{12}", manifest["app_release"])


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
