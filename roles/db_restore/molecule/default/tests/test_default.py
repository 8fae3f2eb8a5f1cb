"""Verify what db_restore leaves: the backup's rows back, owners and rights kept.

prepare.yml backed the database up with three users and five reads, then added a
user and a read, removed a read and created a table; the restore must undo all that
and keep the changed database aside under another name.
"""

import json
import re

import pytest

DATABASE = "reading_history"
APP = "reading_history_app"
APP_PASSWORD = "molecule-app-9e4b7c3a6d"
MIGRATOR = "reading_history_migrator"
WORK_DIR = "/var/backups/reading-history-restore"


def psql(host, sql, database=DATABASE):
    """Run a query as postgres and return its rows, one string per row."""
    return host.check_output(
        "runuser -u postgres -- psql -d %s -AtX -v ON_ERROR_STOP=1 -c %s", database, sql
    ).splitlines()


def as_app(host, sql):
    """Run a query as the app role over TCP with its password, as the service does."""
    return host.run(
        "PGPASSWORD=%s psql -h 127.0.0.1 -U %s -d %s -qAtX -v ON_ERROR_STOP=1 -c %s",
        APP_PASSWORD,
        APP,
        DATABASE,
        sql,
    )


@pytest.fixture
def databases(host):
    return psql(host, "SELECT datname FROM pg_database ORDER BY 1", "postgres")


@pytest.fixture
def previous(databases):
    """Return the database the restore replaced, kept under its new name."""
    kept = [
        name
        for name in databases
        if re.fullmatch(rf"{DATABASE}_before_restore_[0-9]{{14}}", name)
    ]
    assert len(kept) == 1, f"check mode or a second run restored again: {kept}"
    return kept[0]


def test_rows_written_before_the_backup_are_back(host):
    """Ensure every read and user of the backup is there, and nothing written later."""
    assert psql(host, "SELECT article_id FROM reading_history ORDER BY 1") == [
        "1",
        "2",
        "3",
        "4",
        "5",
    ]
    assert psql(host, "SELECT user_id FROM user_reading_preferences ORDER BY 1") == [
        "101",
        "102",
        "103",
    ]
    assert psql(host, "SELECT to_regclass('bookmarks') IS NULL") == ["t"]


def test_replaced_database_is_kept_with_the_later_changes(host, previous):
    """Verify the data the restore replaced is kept, renamed, and open again."""
    assert psql(
        host, "SELECT article_id FROM reading_history ORDER BY 1", previous
    ) == [
        "2",
        "3",
        "4",
        "5",
        "6",
    ]
    assert psql(host, "SELECT count(*) FROM bookmarks", previous) == ["1"]
    assert psql(
        host,
        f"SELECT datallowconn FROM pg_database WHERE datname = '{previous}'",
        "postgres",
    ) == ["t"]


def test_no_working_database_is_left(databases):
    """Ensure neither the restore's nor the test restores' databases remain."""
    assert not [
        name for name in databases if "_restore_2" in name and "before" not in name
    ]
    assert not [name for name in databases if "_verify_" in name]


def test_owners_are_kept(host):
    """Verify every table has the owner it had when it was backed up."""
    owners = dict(
        line.split("|")
        for line in psql(
            host,
            "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'",
        )
    )
    assert owners.pop("archive_notes") == "reading_history_archivist"
    assert set(owners.values()) == {MIGRATOR}
    assert psql(
        host,
        f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{DATABASE}'",
    ) == [MIGRATOR]


def test_app_keeps_its_rights(host):
    """Ensure the app role may still connect, read and write, and no more than before."""
    written = as_app(
        host,
        "INSERT INTO user_reading_preferences (user_id) VALUES (900);"
        " INSERT INTO reading_history (user_id, article_id, feed_id, read_at)"
        " VALUES (900, 9, 1, now());"
        " DELETE FROM reading_history WHERE user_id = 900;"
        " DELETE FROM user_reading_preferences WHERE user_id = 900;"
        " SELECT count(*) FROM archive_notes",
    )
    assert written.rc == 0, written.stderr
    assert written.stdout.split() == ["2"]
    refused = as_app(host, "DELETE FROM archive_notes")
    assert refused.rc != 0 and "permission denied" in refused.stderr
    refused = as_app(host, "CREATE TABLE app_made (id int)")
    assert refused.rc != 0 and "permission denied" in refused.stderr


def test_only_the_service_roles_may_connect(host):
    """Verify the database privileges of the replaced database were carried over."""
    assert psql(
        host,
        "SELECT has_database_privilege('public', oid, 'CONNECT'),"
        f" has_database_privilege('{APP}', oid, 'CONNECT')"
        f" FROM pg_database WHERE datname = '{DATABASE}'",
    ) == ["f|t"]


def safety_manifests(host):
    """Return the manifests of the safety backups, oldest first."""
    names = host.check_output(
        "find %s/safety -maxdepth 1 -name '*.manifest.json'", WORK_DIR
    ).split()
    manifests = [json.loads(host.file(name).content_string) for name in names]
    return sorted(manifests, key=lambda manifest: manifest["started_at"])


def test_safety_backup_holds_the_state_before_the_restore(host):
    """Ensure the safety backup was taken, verified, and counts the later rows."""
    manifest = safety_manifests(host)[-1]
    assert manifest["verified"] is True
    assert "test_restore" in manifest["verification"]["checks"]
    assert manifest["tables"]["user_reading_preferences"] == 4
    assert manifest["tables"]["bookmarks"] == 1


def test_only_the_newest_safety_backups_are_kept(host):
    """Verify retention kept two of the three: the earlier restores' oldest went."""
    manifests = safety_manifests(host)
    assert len(manifests) == 2, [manifest["file"] for manifest in manifests]
    # The one kept from before is the second taken in prepare.yml, of 3 users.
    assert manifests[0]["tables"]["user_reading_preferences"] == 3


def test_older_replaced_databases_are_dropped(databases, previous):
    """Ensure only the database this restore replaced is kept, by its name's time."""
    assert "reading_history_before_restore_20240101000000" not in databases
    assert "reading_history_before_restore_20241201000000" not in databases
    assert "reading_history_before_restore_notes" in databases


def test_work_folder_is_private_and_the_staged_copy_gone(host):
    """Verify the work folder belongs to postgres alone and holds no staged backup."""
    folder = host.file(WORK_DIR)
    assert folder.user == "postgres"
    assert folder.mode == 0o700
    assert not host.file(f"{WORK_DIR}/staged").exists
