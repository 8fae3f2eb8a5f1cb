"""Integration tests of pg_restore: a real backup of a service-shaped database put back.

Each test backs the database up with pg_backup as its owner, changes the database,
then restores the backup as the superuser, the way the db_restore role does, and
looks at what the app role finds afterwards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pg_restore
import psycopg
import pytest
from backup_support import (
    SEEDED_ROWS,
    ServiceDatabase,
    fake_client,
    flip_byte,
    service_database,
)
from module_harness import ModuleFail, run_module, run_module_process
from pgserver import SUPERUSER, SUPERUSER_PASSWORD, PostgresServer
from psycopg import sql


@pytest.fixture
def service(pg_server: PostgresServer):
    with service_database(pg_server) as service:
        yield service


def take_backup(service: ServiceDatabase, folder: Path, **options: Any) -> dict:
    """Back the service database up as its owner, test-restored by the superuser."""
    folder.mkdir(exist_ok=True)
    args = {
        **service.owner_args(),
        "backup_dir": str(folder),
        "login_db": "postgres",
        "maintenance_user": SUPERUSER,
        "maintenance_password": SUPERUSER_PASSWORD,
        **options,
    }
    rc, result, _ = run_module_process("pg_backup", args)
    assert rc == 0, result
    return result


@pytest.fixture
def backup(service: ServiceDatabase, tmp_path: Path) -> dict:
    return take_backup(service, tmp_path / "backups")


def restore_args(service: ServiceDatabase, backup: dict, **options: Any) -> dict:
    return {
        **service.admin_args(),
        "manifest": backup["manifest"],
        "confirm": service.name,
        **options,
    }


def restore(
    service: ServiceDatabase, backup: dict, check_mode: bool = False, **options
):
    return run_module_process(
        "pg_restore", restore_args(service, backup, **options), check_mode=check_mode
    )


def write_after_backup(service: ServiceDatabase) -> None:
    """Change the database the way a bad release would: rows and a new table."""
    with service.connect(user=service.owner) as conn:
        conn.execute("INSERT INTO user_reading_preferences (user_id) VALUES (104)")
        conn.execute(
            "INSERT INTO reading_history (user_id, article_id) VALUES (104, 99)"
        )
        conn.execute("DELETE FROM reading_history WHERE article_id = 1")
        conn.execute("CREATE TABLE bookmarks (id int)")
        conn.execute("INSERT INTO bookmarks VALUES (1)")


def table_owners(service: ServiceDatabase, dbname: str | None = None) -> dict[str, str]:
    with service.connect(dbname=dbname) as conn:
        rows = conn.execute(
            "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
        return dict(rows)


class TestRestore:
    def test_restore_brings_back_every_row_of_the_backup(
        self, service: ServiceDatabase, backup: dict
    ) -> None:
        """Ensure the database holds the backup's rows again, the later ones kept aside."""
        write_after_backup(service)
        changed = service.counts()

        rc, result, _ = restore(service, backup)

        assert rc == 0, result
        assert result["changed"] is True
        assert service.counts() == SEEDED_ROWS == result["tables"]
        with service.connect() as conn:
            article_ids = conn.execute(
                "SELECT array_agg(article_id ORDER BY article_id) FROM reading_history"
            ).fetchone()[0]
        assert article_ids == [1, 2, 3, 4, 5]
        previous = result["previous_database"]
        assert previous.startswith(f"{service.name}_before_restore_")
        assert service.counts(dbname=previous) == changed
        assert service.databases() == {service.name, previous}
        assert result["schema_version"] == 2
        assert result["verification"]["counts_after_swap"] is True

    def test_owners_grants_and_settings_are_kept(
        self, service: ServiceDatabase, backup: dict
    ) -> None:
        """Verify owners, the app's rights and the database's settings survive a restore."""
        owners_before = table_owners(service)

        rc, result, _ = restore(service, backup)

        assert rc == 0, result
        assert table_owners(service) == owners_before
        assert owners_before["archive_notes"] == service.archivist
        assert owners_before["reading_history"] == service.owner
        with service.connect(user=service.app) as app:
            app.execute("INSERT INTO user_reading_preferences (user_id) VALUES (200)")
            app.execute(
                "INSERT INTO reading_history (user_id, article_id) VALUES (200, 7)"
            )
            assert app.execute("SELECT count(*) FROM archive_notes").fetchone()[0] == 2
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute("DELETE FROM archive_notes")
            assert app.execute("SHOW statement_timeout").fetchone()[0] == "5min"
            assert app.execute("SHOW search_path").fetchone()[0] == '"$user", public'
        # Tables the migrator adds later are still the app's to use.
        with service.connect(user=service.owner) as owner:
            owner.execute("CREATE TABLE later (id int)")
        with service.connect(user=service.app) as app:
            app.execute("INSERT INTO later VALUES (1)")
        with service.server_connection() as conn:
            owner, public_connect = conn.execute(
                "SELECT pg_get_userbyid(datdba), has_database_privilege('public', oid, 'CONNECT')"
                " FROM pg_database WHERE datname = %s",
                [service.name],
            ).fetchone()
        assert owner == service.owner
        assert public_connect is False

    def test_sessions_of_the_database_are_ended(
        self, service: ServiceDatabase, backup: dict
    ) -> None:
        """Ensure a connected app session is ended and a new one sees the restored data."""
        write_after_backup(service)
        session = service.connect(user=service.app)

        rc, result, _ = restore(service, backup)

        assert rc == 0, result
        assert result["terminated_sessions"] >= 1
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")
        session.close()
        with service.connect(user=service.app) as fresh:
            assert (
                fresh.execute("SELECT count(*) FROM reading_history").fetchone()[0] == 5
            )

    def test_directory_backup_restores_in_parallel(
        self, service: ServiceDatabase, tmp_path: Path
    ) -> None:
        """Verify a directory backup made by two jobs is restored by two jobs."""
        backup = take_backup(service, tmp_path / "backups", format="directory", jobs=2)
        write_after_backup(service)

        rc, result, _ = restore(service, backup, jobs=2)

        assert rc == 0, result
        assert service.counts() == SEEDED_ROWS

    def test_check_mode_names_the_databases_and_changes_nothing(
        self, service: ServiceDatabase, backup: dict
    ) -> None:
        """Verify check mode runs the checks, says what it would do and leaves all alone."""
        write_after_backup(service)
        counts = service.counts()

        rc, result, _ = restore(service, backup, check_mode=True)

        assert rc == 0, result
        assert result["changed"] is True
        assert result["restore_database"] in result["msg"]
        assert result["previous_database"] in result["msg"]
        assert service.databases() == {service.name}
        assert service.counts() == counts



def create_replaced(service: ServiceDatabase, *stamps: str) -> list[str]:
    """Create databases named as earlier restores would have left them."""
    names = [f"{service.name}_before_restore_{stamp}" for stamp in stamps]
    with service.server_connection() as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return names


class TestReplacedDatabases:
    def test_by_default_every_replaced_database_is_kept(
        self, service: ServiceDatabase, backup: dict
    ) -> None:
        """Ensure nothing is dropped unless keep_replaced asks for it."""
        older = create_replaced(service, "20240101000000")

        rc, result, _ = restore(service, backup)

        assert rc == 0, result
        assert result["dropped_databases"] == []
        assert service.databases() == {service.name, result["previous_database"], *older}

    def test_keep_replaced_drops_the_oldest_by_the_time_in_their_names(
        self, service: ServiceDatabase, backup: dict
    ) -> None:
        """Verify the database just replaced and the next newest stay, older ones go.

        The one made first carries the newest time, so creation order is not used.
        """
        newer, oldest, older = create_replaced(
            service, "20241201000000", "20230101000000", "20240101000000"
        )
        unrelated = f"{service.name}_before_restore_notes"
        with service.server_connection() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(unrelated)))

        rc, result, _ = restore(service, backup, keep_replaced=2)

        assert rc == 0, result
        assert sorted(result["dropped_databases"]) == sorted([oldest, older])
        assert service.databases() == {
            service.name, result["previous_database"], newer, unrelated
        }  # fmt: skip

    def test_replaced_database_in_use_is_kept_with_a_warning(
        self, service: ServiceDatabase, backup: dict
    ) -> None:
        """Ensure a replaced database someone is connected to is left alone."""
        (in_use,) = create_replaced(service, "20240101000000")

        with service.connect(dbname=in_use):
            rc, result, _ = restore(service, backup, keep_replaced=1)

        assert rc == 0, result
        assert result["dropped_databases"] == []
        assert in_use in service.databases()
        assert in_use in str(result["warnings"])

    def test_check_mode_names_what_would_be_dropped(
        self, service: ServiceDatabase, backup: dict
    ) -> None:
        """Verify check mode lists the databases beyond keep_replaced and drops none."""
        older = create_replaced(service, "20240101000000", "20240201000000")

        rc, result, _ = restore(service, backup, check_mode=True, keep_replaced=2)

        assert rc == 0, result
        assert result["dropped_databases"] == [older[0]]
        assert older[0] in result["msg"]
        assert service.databases() == {service.name, *older}

    def test_keeping_none_is_refused(self, service: ServiceDatabase, backup: dict) -> None:
        """Ensure the database a restore replaces can never be dropped by that restore."""
        rc, result, _ = restore(service, backup, keep_replaced=0)

        assert rc == 1
        assert "keep_replaced must be 1 or more" in result["msg"]
        assert service.databases() == {service.name}


class TestRefusals:
    def test_refuses_without_the_database_named_in_confirm(
        self, service: ServiceDatabase, backup: dict
    ) -> None:
        """Ensure a confirmation naming another database refuses before any check."""
        rc, result, _ = restore(service, backup, confirm="reading_history")

        assert rc == 1
        assert f"confirm must be '{service.name}'" in result["msg"]
        assert service.databases() == {service.name}

    def test_one_changed_byte_is_refused_before_anything_is_created(
        self, service: ServiceDatabase, backup: dict
    ) -> None:
        """Verify an archive that no longer matches its manifest is not restored."""
        archive = Path(backup["dest"])
        flip_byte(archive, archive.stat().st_size // 2)

        rc, result, _ = restore(service, backup)

        assert rc == 1
        assert "does not match its manifest" in result["msg"]
        assert "SHA-256" in result["msg"]
        assert service.databases() == {service.name}
        assert service.counts() == SEEDED_ROWS

    def test_missing_file_of_a_directory_backup_is_named(
        self, service: ServiceDatabase, tmp_path: Path
    ) -> None:
        """Ensure a directory backup missing one of its files is refused by name."""
        backup = take_backup(service, tmp_path / "backups", format="directory")
        data_file = next(
            name
            for name in json.loads(Path(backup["manifest"]).read_text())["files"]
            if name != "toc.dat"
        )
        os.unlink(Path(backup["dest"]) / data_file)

        rc, result, _ = restore(service, backup)

        assert rc == 1
        assert f"file {data_file} is missing" in result["msg"]
        assert service.databases() == {service.name}

    def test_pg_restore_older_than_the_archive_is_refused(
        self, service: ServiceDatabase, backup: dict, tmp_path: Path, pg_server
    ) -> None:
        """Verify a pg_restore of an older major than the dump's pg_dump is refused."""
        old = fake_client(
            tmp_path,
            "pg_restore",
            'case "$1" in --version) echo "pg_restore (PostgreSQL) 13.16"; exit 0;; esac\n'
            f'exec {pg_server.bindir / "pg_restore"} "$@"',
        )

        rc, result, _ = restore(service, backup, pg_restore_path=str(old))

        assert rc == 1
        assert (
            "pg_restore 13.16" in result["msg"]
            and "is older than the pg_dump" in result["msg"]
        )
        assert service.databases() == {service.name}

    def test_unverified_backup_is_refused(
        self, service: ServiceDatabase, backup: dict
    ) -> None:
        """Ensure a manifest that does not say verified is not restored."""
        manifest_path = Path(backup["manifest"])
        manifest = json.loads(manifest_path.read_text())
        manifest_path.write_text(json.dumps({**manifest, "verified": False}))

        rc, result, _ = restore(service, backup)

        assert rc == 1
        assert "was not verified" in result["msg"]

    def test_absent_owner_role_is_refused_before_anything_is_created(
        self, service: ServiceDatabase, backup: dict
    ) -> None:
        """Verify a backup whose owners this server lacks is refused up front."""
        with service.connect() as conn:
            conn.execute(
                sql.SQL("REASSIGN OWNED BY {} TO {}").format(
                    sql.Identifier(service.archivist), sql.Identifier(SUPERUSER)
                )
            )
            conn.execute(
                sql.SQL("DROP OWNED BY {}").format(sql.Identifier(service.archivist))
            )
            conn.execute(
                sql.SQL("DROP ROLE {}").format(sql.Identifier(service.archivist))
            )

        rc, result, _ = restore(service, backup)

        assert rc == 1
        assert f"owned by roles this server lacks: {service.archivist}" in result["msg"]
        assert service.databases() == {service.name}


class TestFailuresLeaveTheDatabaseAsItWas:
    def test_restore_that_fails_midway_drops_the_new_database(
        self, service: ServiceDatabase, backup: dict, tmp_path: Path, pg_server
    ) -> None:
        """Ensure a pg_restore that fails leaves the current database untouched and open."""
        write_after_backup(service)
        counts = service.counts()
        failing = fake_client(
            tmp_path,
            "pg_restore",
            'case "$*" in *--dbname=*)\n'
            f'  {pg_server.bindir / "pg_restore"} "$@"\n'
            '  echo "pg_restore: error: connection to server lost" >&2; exit 1;;\n'
            "esac\n"
            f'exec {pg_server.bindir / "pg_restore"} "$@"',
        )

        rc, result, _ = restore(service, backup, pg_restore_path=str(failing))

        assert rc == 1
        assert "connection to server lost" in result["msg"]
        assert f"database '{service.name}' is as it was" in result["msg"]
        assert service.databases() == {service.name}
        assert service.counts() == counts
        with service.connect(user=service.app) as app:
            assert app.execute("SELECT 1").fetchone() == (1,)

    def test_counts_that_differ_from_the_manifest_fail_before_the_swap(
        self, service: ServiceDatabase, backup: dict
    ) -> None:
        """Verify a restored database whose counts differ is dropped, never swapped in."""
        manifest_path = Path(backup["manifest"])
        manifest = json.loads(manifest_path.read_text())
        manifest["tables"]["reading_history"] = 6
        manifest_path.write_text(json.dumps(manifest))

        rc, result, _ = restore(service, backup)

        assert rc == 1
        assert (
            "table reading_history has 5 rows, the manifest counted 6" in result["msg"]
        )
        assert service.databases() == {service.name}

    def test_failure_after_the_swap_puts_the_database_back(
        self, service: ServiceDatabase, backup: dict, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Ensure a check failing after the swap gives the current database its name back."""
        write_after_backup(service)
        counts = service.counts()
        real_count = pg_restore.RestoreModule.count

        def count_wrong_after_swap(self, dbname: str, purpose: str):
            oid, found = real_count(self, dbname, purpose)
            if dbname == service.name:
                found = {**found, "reading_history": -1}
            return oid, found

        monkeypatch.setattr(pg_restore.RestoreModule, "count", count_wrong_after_swap)

        with pytest.raises(ModuleFail) as failed:
            run_module(pg_restore, restore_args(service, backup))

        assert "after the swap" in failed.value.result["msg"]
        assert f"database '{service.name}' is as it was" in failed.value.result["msg"]
        assert service.databases() == {service.name}
        assert service.counts() == counts
        with service.connect(user=service.app) as app:
            assert app.execute("SELECT count(*) FROM bookmarks").fetchone() == (1,)

    def test_missing_database_is_refused(
        self, service: ServiceDatabase, backup: dict
    ) -> None:
        """Verify the module only replaces a database that exists."""
        args = {
            **restore_args(service, backup),
            "database": "absent",
            "confirm": "absent",
        }

        rc, result, _ = run_module_process("pg_restore", args)

        assert rc == 1
        assert "database 'absent' does not exist" in result["msg"]

    def test_password_stays_out_of_the_output(
        self, service: ServiceDatabase, backup: dict
    ) -> None:
        """Ensure the login password appears neither in the result nor in stdout."""
        rc, result, stdout = restore(service, backup)

        assert rc == 0, result
        assert SUPERUSER_PASSWORD not in stdout
