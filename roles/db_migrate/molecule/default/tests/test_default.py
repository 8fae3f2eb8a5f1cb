"""Verify the schema db_migrate applies, its history, the read-only window around it,
and who may use the tables."""

import pytest

MIGRATOR = ("reading_history_migrator", "molecule-migrator-2e7b9c4f")
APP = ("reading_history_app", "molecule-app-6a1d3f8e5c")
MIGRATIONS_DIR = "/var/lib/reading-history/migrations"
# The scenario's own last migration, added by prepare.yml, notes what it saw.
WINDOW_TABLE = "molecule_read_only_window"
# The migrations every release of the app has had from the start.
FIRST_MIGRATIONS = {
    1: "0001_create_user_reading_preferences.up.sql",
    2: "0002_create_reading_history.up.sql",
}


def psql(host, user, password, sql):
    """Run SQL over TCP with a password, as the app and the tools do."""
    return host.run(
        "PGPASSWORD=%s psql -h 127.0.0.1 -U %s -d reading_history"
        " -v ON_ERROR_STOP=1 -qAtc %s",
        password,
        user,
        sql,
    )


def rows(host, user, password, sql):
    """Return the rows of a query as lists of text fields."""
    result = psql(host, user, password, sql)
    assert result.rc == 0, result.stderr
    return [line.split("|") for line in result.stdout.splitlines()]


@pytest.fixture
def up_files(host):
    """Map each version copied to the host to the SHA-256 of its up file."""
    listing = host.check_output("cd %s && sha256sum *.up.sql", MIGRATIONS_DIR)
    files = {}
    for line in listing.splitlines():
        checksum, name = line.split()
        files[int(name.split("_", 1)[0])] = (name, checksum)
    return files


def test_migration_files_are_on_the_host_and_private(host):
    """Ensure the release's first up files are there, readable by root only."""
    for name in FIRST_MIGRATIONS.values():
        migration = host.file(f"{MIGRATIONS_DIR}/{name}")
        assert migration.is_file
        assert migration.user == "root"
        assert migration.mode == 0o640


def test_history_records_every_version_applied(host, up_files):
    """Verify schema_migrations holds versions 1, 2 and any later one, all applied."""
    history = rows(
        host, *MIGRATOR,
        "SELECT version, status FROM schema_migrations ORDER BY version",
    )  # fmt: skip
    assert history == [[str(version), "applied"] for version in sorted(up_files)]
    assert set(FIRST_MIGRATIONS) <= set(up_files)


def test_recorded_checksums_are_those_of_the_files(host, up_files):
    """Ensure each checksum recorded is the SHA-256 of the file that was applied."""
    recorded = rows(
        host, *MIGRATOR, "SELECT version, checksum FROM schema_migrations"
    )  # fmt: skip
    assert {int(version): checksum for version, checksum in recorded} == {
        version: checksum for version, (_, checksum) in up_files.items()
    }


@pytest.mark.parametrize("table", ["reading_history", "user_reading_preferences"])
def test_tables_are_owned_by_the_migrator(host, table):
    """Verify the migrations made each table as the migrator role."""
    owner = rows(
        host, *MIGRATOR,
        f"SELECT tableowner FROM pg_tables WHERE schemaname = 'public' "
        f"AND tablename = '{table}'",
    )  # fmt: skip
    assert owner == [[MIGRATOR[0]]]


def test_app_role_can_write_rows(host):
    """Ensure the app role can insert, read and delete rows in the new tables."""
    result = psql(
        host, *APP,
        "BEGIN;"
        " INSERT INTO user_reading_preferences (user_id) VALUES (424242);"
        " INSERT INTO reading_history (user_id, article_id, feed_id, read_at)"
        "  VALUES (424242, 7, 3, now());"
        " SELECT count(*) FROM reading_history WHERE user_id = 424242;"
        " DELETE FROM user_reading_preferences WHERE user_id = 424242;"
        " SELECT count(*) FROM reading_history WHERE user_id = 424242;"
        " COMMIT;",
    )  # fmt: skip
    assert result.rc == 0, result.stderr
    # The delete cascades from the preferences to the history.
    assert result.stdout.split() == ["1", "0"]


def test_app_role_cannot_change_the_schema(host):
    """Verify the app role cannot drop what the migrations made."""
    result = psql(host, *APP, "DROP TABLE reading_history")
    assert result.rc != 0
    assert "must be owner" in result.stderr


def test_migrations_ran_inside_the_read_only_window(host):
    """Ensure the database defaulted to read-only while the migrator still wrote."""
    [[migrator, settings]] = rows(
        host, *MIGRATOR,
        f"SELECT migrator_transaction, database_settings FROM {WINDOW_TABLE}",
    )  # fmt: skip
    assert migrator == "off"
    assert "default_transaction_read_only=on" in settings


def test_read_only_setting_was_put_back(host):
    """Verify the window is closed: nothing stored, and new sessions may write."""
    stored = rows(
        host, *MIGRATOR,
        "SELECT count(*) FROM pg_db_role_setting s"
        " JOIN pg_database d ON d.oid = s.setdatabase"
        " WHERE d.datname = 'reading_history' AND s.setrole = 0"
        " AND 'default_transaction_read_only=on' = ANY (s.setconfig)",
    )  # fmt: skip
    assert stored == [["0"]]
    assert rows(host, *APP, "SHOW default_transaction_read_only") == [["off"]]


def test_log_records_each_version_applied_once(host, up_files):
    """Ensure schema_migrations_log has one applied entry per version, and who ran it."""
    log = rows(
        host, *MIGRATOR,
        "SELECT version, action, performed_by <> '' FROM schema_migrations_log ORDER BY id",
    )  # fmt: skip
    assert log == [[str(version), "applied", "t"] for version in sorted(up_files)]


def test_expected_schema_is_on_the_host_and_private(host):
    """Verify the release's expected schema was copied for pg_schema, root only."""
    expected = host.file(f"{MIGRATIONS_DIR}/expected_schema.json")
    assert expected.is_file and expected.user == "root" and expected.mode == 0o640
    assert f'"{WINDOW_TABLE}"' in expected.content_string
