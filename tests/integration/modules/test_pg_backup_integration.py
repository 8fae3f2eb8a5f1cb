"""Integration tests of pg_backup against a real PostgreSQL and its client programs.

The module runs in a child Python as Ansible would. Its dumps are checked apart from
the module: restored into a fresh database with pg_restore and counted again. Faults
are made for real: wrappers around pg_dump that damage what it wrote, a role without
CREATEDB, and tiny tmpfs file systems for a full or read-only backup folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from backup_support import (
    SEEDED_ROWS,
    ServiceDatabase,
    documented_directory_checksum,
    fake_client,
    scratch_databases,
    service_database,
    tmpfs,
)
from module_harness import run_module_process
from pg_backup import verify_dump
from pgserver import SUPERUSER, SUPERUSER_PASSWORD, PostgresServer


@pytest.fixture
def seeded(db: psycopg.Connection, seed_history) -> dict[str, int]:
    """Fill the test database with a few tables, one with an awkward name."""
    db.execute("CREATE TABLE feeds (id serial PRIMARY KEY, url text NOT NULL)")
    db.execute("INSERT INTO feeds (url) SELECT 'u' || n FROM generate_series(1, 3) n")
    db.execute('CREATE TABLE "reading events" (feed_id int REFERENCES feeds (id))')
    db.execute('INSERT INTO "reading events" SELECT 1 FROM generate_series(1, 5)')
    seed_history((1, "applied"), (2, "applied"))
    return {"feeds": 3, "reading events": 5, "schema_migrations": 2}


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "backups"
    folder.mkdir()
    return folder


def backup(db_args: dict, folder: Path, check_mode: bool = False, **options):
    args = {**db_args, "backup_dir": str(folder), **options}
    return run_module_process("pg_backup", args, check_mode=check_mode)


def restored_counts(pg_server: PostgresServer, dump: Path) -> dict[str, int]:
    """Restore a dump into a new database and count its rows there."""
    target = pg_server.create_database()
    try:
        subprocess.run(
            [
                str(pg_server.bindir / "pg_restore"),
                "--host",
                pg_server.host,
                "--port",
                str(pg_server.port),
                "--username",
                "postgres",
                "--dbname",
                target,
                "--exit-on-error",
                str(dump),
            ],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PGPASSWORD": SUPERUSER_PASSWORD},
        )
        with psycopg.connect(pg_server.dsn(target)) as conn:
            return {
                table: conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
                for table in ("feeds", "reading events", "schema_migrations")
            }
    finally:
        pg_server.drop_database(target)


class TestBackup:
    def test_dump_and_manifest_describe_the_database(
        self, db_args: dict, backup_dir: Path, seeded: dict, pg_server: PostgresServer
    ) -> None:
        """Ensure the dump restores to the same rows the manifest counted."""
        rc, result, _ = backup(db_args, backup_dir, app_release="1.4.0")

        assert rc == 0, result
        assert result["changed"] is True and result["verified"] is True
        dump, manifest_path = Path(result["dest"]), Path(result["manifest"])
        assert re.fullmatch(rf"{db_args['database']}_\d{{8}}T\d{{6}}Z\.dump", dump.name)
        assert manifest_path.name == dump.name.replace(".dump", ".manifest.json")
        assert sorted(os.listdir(backup_dir)) == sorted([dump.name, manifest_path.name])

        manifest = json.loads(manifest_path.read_text())
        assert manifest["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
        assert manifest["size"] == dump.stat().st_size == result["size"]
        assert manifest["tables"] == seeded == result["tables"]
        assert manifest["schema_version"] == 2
        assert manifest["app_release"] == "1.4.0"
        assert manifest["database"] == db_args["database"]
        assert manifest["verified"] is True
        assert "public.reading events" in manifest["verification"]["tables_checked"]
        assert manifest["verification"]["checks"] == [
            "checksum",
            "table_of_contents",
            "test_restore",
        ]
        assert manifest["verification"]["restore"]["tables"] == len(seeded)
        assert manifest["verification"]["restore"]["rows"] == sum(seeded.values())
        assert manifest["verification"]["restore"]["dropped"] is True
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest["finished_at"])
        assert manifest["started_at"] <= manifest["finished_at"]
        assert manifest["pg_dump_version"].split(".")[0] == "15"
        assert manifest["server_version"].startswith("15.")
        assert manifest["format"] == "custom"
        assert manifest["files"] == {
            dump.name: {"size": manifest["size"], "sha256": manifest["sha256"]}
        }
        assert restored_counts(pg_server, dump) == seeded
        assert scratch_databases(pg_server) == []

    def test_files_are_private_to_their_owner(
        self, db_args: dict, backup_dir: Path, seeded: dict
    ) -> None:
        """Verify the dump and manifest, which hold the data, are mode 0600."""
        _, result, _ = backup(db_args, backup_dir)

        for path in (result["dest"], result["manifest"]):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    def test_each_run_writes_a_new_backup(
        self, db_args: dict, backup_dir: Path, seeded: dict
    ) -> None:
        """Ensure a later run keeps the earlier backup and adds its own."""
        _, first, _ = backup(db_args, backup_dir)
        time.sleep(1.1)

        rc, second, _ = backup(db_args, backup_dir)

        assert rc == 0 and second["changed"] is True
        assert second["dest"] != first["dest"]
        assert Path(first["dest"]).exists() and Path(second["dest"]).exists()
        assert len(os.listdir(backup_dir)) == 4

    def test_check_mode_writes_nothing(
        self, db_args: dict, backup_dir: Path, seeded: dict
    ) -> None:
        """Verify check mode names the file it would write and writes nothing."""
        rc, result, _ = backup(db_args, backup_dir, check_mode=True)

        assert rc == 0, result
        assert result["changed"] is True
        assert Path(result["dest"]).parent == backup_dir
        assert os.listdir(backup_dir) == []

    def test_password_reaches_the_clients_only_through_the_environment(
        self,
        db_args: dict,
        backup_dir: Path,
        seeded: dict,
        pg_server: PostgresServer,
        tmp_path: Path,
    ) -> None:
        """Ensure pg_dump and pg_restore get PGPASSWORD and no argument carries it."""
        log = tmp_path / "clients.log"
        wrappers = {
            name: fake_client(
                tmp_path,
                name,
                f'printf "{name} %s\\n" "$*" >> {log}\n'
                f'[ -n "$PGPASSWORD" ] && echo "{name} has PGPASSWORD" >> {log}\n'
                f'exec {pg_server.bindir / name} "$@"',
            )
            for name in ("pg_dump", "pg_restore")
        }

        rc, result, stdout = backup(
            db_args,
            backup_dir,
            pg_dump_path=str(wrappers["pg_dump"]),
            pg_restore_path=str(wrappers["pg_restore"]),
        )

        assert rc == 0, result
        logged = log.read_text()
        assert "--format=custom" in logged and "pg_dump has PGPASSWORD" in logged
        # The test restore connects with the password too.
        assert (
            "--single-transaction" in logged and "pg_restore has PGPASSWORD" in logged
        )
        assert SUPERUSER_PASSWORD not in logged
        assert SUPERUSER_PASSWORD not in stdout


class TestFailures:
    def test_wrong_password_fails_and_leaves_no_file(
        self, db_args: dict, backup_dir: Path, seeded: dict
    ) -> None:
        """Ensure an unreachable database fails before any file is made."""
        rc, result, stdout = backup(
            {**db_args, "login_password": "not-the-password"}, backup_dir
        )

        assert rc == 1
        assert "password authentication failed" in result["msg"]
        assert f"'{db_args['database']}'" in result["msg"]
        assert os.listdir(backup_dir) == []
        assert "not-the-password" not in stdout

    def test_missing_backup_dir_fails(self, db_args: dict, tmp_path: Path) -> None:
        """Verify a backup folder that does not exist is named in the failure."""
        rc, result, _ = backup(db_args, tmp_path / "absent")

        assert rc == 1
        assert "absent' does not exist" in result["msg"]

    def test_older_pg_dump_than_server_is_refused(
        self, db_args: dict, backup_dir: Path, tmp_path: Path
    ) -> None:
        """Ensure a pg_dump of an older major than the server fails before dumping."""
        old = fake_client(tmp_path, "pg_dump", 'echo "pg_dump (PostgreSQL) 13.16"')

        rc, result, _ = backup(db_args, backup_dir, pg_dump_path=str(old))

        assert rc == 1
        assert (
            "pg_dump 13.16" in result["msg"] and "older than server 15" in result["msg"]
        )
        assert os.listdir(backup_dir) == []

    def test_pg_dump_failure_removes_the_partial_file(
        self, db_args: dict, backup_dir: Path, tmp_path: Path
    ) -> None:
        """Verify a pg_dump that dies half way leaves neither temp file nor dump."""
        dying = fake_client(
            tmp_path,
            "pg_dump",
            'case "$1" in --version) echo "pg_dump (PostgreSQL) 15.18"; exit 0;; esac\n'
            'for arg; do case "$arg" in\n'
            '  --file=*) echo PGDMP > "${arg#--file=}";;\n'
            "esac; done\n"
            'echo "pg_dump: error: No space left on device" >&2\n'
            "exit 1",
        )

        rc, result, _ = backup(db_args, backup_dir, pg_dump_path=str(dying))

        assert rc == 1
        assert f"pg_dump of database '{db_args['database']}' failed" in result["msg"]
        assert "No space left on device" in result["msg"]
        assert result["rc"] == 1 and "--format=custom" in result["cmd"]
        assert os.listdir(backup_dir) == []

    def test_missing_expected_table_fails_and_removes_everything(
        self, db_args: dict, backup_dir: Path, seeded: dict
    ) -> None:
        """Ensure a dump lacking an expected table is removed, manifest and all."""
        rc, result, _ = backup(
            db_args, backup_dir, expected_tables=["feeds", "bookmarks"]
        )

        assert rc == 1
        assert "public.bookmarks" in result["msg"]
        assert os.listdir(backup_dir) == []


def run_argv(argv: list[str]) -> tuple[int, str, str]:
    done = subprocess.run(argv, capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr


class TestVerification:
    @pytest.fixture
    def dump(self, db_args: dict, backup_dir: Path, seeded: dict) -> tuple[Path, dict]:
        _, result, _ = backup(db_args, backup_dir)
        return Path(result["dest"]), json.loads(Path(result["manifest"]).read_text())

    def test_intact_dump_passes(
        self, dump: tuple[Path, dict], pg_server: PostgresServer
    ) -> None:
        """Verify the check passes on the file as written."""
        path, manifest = dump
        pg_restore = str(pg_server.bindir / "pg_restore")

        result = verify_dump(
            run_argv,
            pg_restore,
            str(path),
            manifest["sha256"],
            list(manifest["tables"]),
        )

        assert result.ok, result.problems

    def test_truncated_dump_fails_its_checksum(
        self, dump: tuple[Path, dict], pg_server: PostgresServer
    ) -> None:
        """Ensure a dump cut in half no longer matches its recorded checksum."""
        path, manifest = dump
        os.truncate(path, path.stat().st_size // 2)

        result = verify_dump(
            run_argv,
            str(pg_server.bindir / "pg_restore"),
            str(path),
            manifest["sha256"],
            list(manifest["tables"]),
        )

        assert not result.ok
        assert not result.checksum_matches

    def test_archive_cut_before_its_table_of_contents_fails_pg_restore(
        self, dump: tuple[Path, dict], pg_server: PostgresServer
    ) -> None:
        """Verify pg_restore --list rejects a stub even when its checksum is current."""
        path, manifest = dump
        os.truncate(path, 64)
        stub_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()

        result = verify_dump(
            run_argv,
            str(pg_server.bindir / "pg_restore"),
            str(path),
            stub_sha256,
            list(manifest["tables"]),
        )

        assert result.checksum_matches
        assert any("pg_restore --list failed" in problem for problem in result.problems)

    def test_schema_only_archive_misses_table_data(
        self, db_args: dict, tmp_path: Path, seeded: dict, pg_server: PostgresServer
    ) -> None:
        """Ensure an archive without data is caught by the TOC check."""
        path = tmp_path / "schema_only.dump"
        subprocess.run(
            [
                str(pg_server.bindir / "pg_dump"),
                "--format=custom",
                "--schema-only",
                f"--file={path}",
                pg_server.dsn(db_args["database"]),
            ],
            check=True,
            capture_output=True,
        )
        sha256 = hashlib.sha256(path.read_bytes()).hexdigest()

        result = verify_dump(
            run_argv,
            str(pg_server.bindir / "pg_restore"),
            str(path),
            sha256,
            list(seeded),
        )

        assert "TABLE DATA entry for public.feeds is missing" in result.problems
        assert not any(problem.startswith("TABLE entry") for problem in result.problems)


def damaging_pg_dump(folder: Path, pg_server: PostgresServer, damage: str) -> Path:
    """A pg_dump that dumps for real, then damages the file it wrote with `damage`."""
    return fake_client(
        folder,
        "pg_dump",
        'for arg; do case "$arg" in --file=*) out="${arg#--file=}";; esac; done\n'
        f'{pg_server.bindir / "pg_dump"} "$@" || exit $?\n'
        'case "$1" in --version) exit 0;; esac\n'
        f"{damage}",
    )


@pytest.fixture
def bulky(db: psycopg.Connection) -> int:
    """Add about 6 MB of rows that compress poorly, so a dump outgrows a 2 MB folder."""
    db.execute("CREATE TABLE noise (id int, digest text)")
    db.execute(
        "INSERT INTO noise SELECT n, md5(n::text) || md5((n * 7)::text)"
        " FROM generate_series(1, 100000) n"
    )
    return 100000


class TestVerificationByRestore:
    def test_dump_cut_short_fails_and_leaves_nothing(
        self,
        db_args: dict,
        backup_dir: Path,
        bulky: int,
        pg_server: PostgresServer,
        tmp_path: Path,
    ) -> None:
        """Ensure a dump truncated after pg_dump is caught by the test restore."""
        cut = damaging_pg_dump(
            tmp_path,
            pg_server,
            'truncate -s "$(( $(stat -c %s "$out") * 2 / 3 ))" "$out"',
        )

        rc, result, _ = backup(db_args, backup_dir, pg_dump_path=str(cut))

        assert rc == 1, result
        assert "test restore into" in result["msg"]
        assert "could not read from input file: end of file" in result["msg"]
        assert result["verification"]["restore"]["dropped"] is True
        assert os.listdir(backup_dir) == []
        assert scratch_databases(pg_server) == []

    def test_dump_with_one_byte_changed_fails_and_leaves_nothing(
        self,
        db_args: dict,
        backup_dir: Path,
        bulky: int,
        pg_server: PostgresServer,
        tmp_path: Path,
    ) -> None:
        """Verify a single flipped byte inside the data fails the test restore."""
        flip = damaging_pg_dump(
            tmp_path,
            pg_server,
            'offset=$(( $(stat -c %s "$out") / 2 ))\n'
            'byte=$(dd if="$out" bs=1 skip=$offset count=1 2>/dev/null | od -An -tu1)\n'
            'printf "\\\\$(printf %o $(( (byte + 1) % 256 )))" '
            '| dd of="$out" bs=1 seek=$offset conv=notrunc 2>/dev/null',
        )

        rc, result, _ = backup(db_args, backup_dir, pg_dump_path=str(flip))

        assert rc == 1, result
        assert "test restore into" in result["msg"]
        assert "could not uncompress data" in result["msg"]
        # The checksum was taken after the damage: only the restore could see it.
        assert result["verification"]["checksum_matches"] is True
        assert os.listdir(backup_dir) == []
        assert scratch_databases(pg_server) == []

    def test_without_test_restore_the_manifest_says_so(
        self, db_args: dict, backup_dir: Path, seeded: dict, pg_server: PostgresServer
    ) -> None:
        """Ensure verify_restore=false records only the checks that ran."""
        rc, result, _ = backup(db_args, backup_dir, verify_restore=False)

        assert rc == 0, result
        manifest = json.loads(Path(result["manifest"]).read_text())
        assert manifest["verified"] is True
        assert manifest["verification"]["checks"] == ["checksum", "table_of_contents"]
        assert manifest["verification"]["restore"] is None
        assert result["scratch_database"] is None


class TestDirectoryFormat:
    def test_parallel_directory_dump_restores_with_its_documented_checksum(
        self, db_args: dict, backup_dir: Path, seeded: dict, pg_server: PostgresServer
    ) -> None:
        """Verify a directory dump by two jobs, its checksum per the documented recipe."""
        rc, result, _ = backup(db_args, backup_dir, format="directory", jobs=2)

        assert rc == 0, result
        folder = Path(result["dest"])
        assert folder.is_dir() and folder.name.endswith(".dir")
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        manifest = json.loads(Path(result["manifest"]).read_text())
        assert manifest["format"] == "directory" and manifest["jobs"] == 2
        assert manifest["sha256"] == documented_directory_checksum(folder)
        assert set(manifest["files"]) == set(os.listdir(folder))
        assert "toc.dat" in manifest["files"]
        assert manifest["size"] == sum(p.stat().st_size for p in folder.iterdir())
        assert manifest["verification"]["restore"]["rows"] == sum(seeded.values())
        assert restored_counts(pg_server, folder) == seeded

    def test_jobs_need_the_directory_format(
        self, db_args: dict, backup_dir: Path
    ) -> None:
        """Ensure a parallel custom dump is refused before anything happens."""
        rc, result, _ = backup(db_args, backup_dir, jobs=4)

        assert rc == 1
        assert "jobs=4 needs format=directory" in result["msg"]
        assert os.listdir(backup_dir) == []


class TestChecksBeforeDumping:
    @pytest.fixture
    def service(self, pg_server: PostgresServer):
        with service_database(pg_server) as service:
            yield service

    def test_role_without_createdb_is_refused_before_dumping(
        self, service: ServiceDatabase, backup_dir: Path
    ) -> None:
        """Ensure a test restore the login role could not make fails before any file."""
        args = {**service.owner_args(), "backup_dir": str(backup_dir)}

        rc, result, _ = run_module_process("pg_backup", args)

        assert rc == 1
        assert (
            f"role '{service.owner}' may not create the scratch database"
            in result["msg"]
        )
        assert os.listdir(backup_dir) == []

    def test_maintenance_role_makes_the_test_restore(
        self, service: ServiceDatabase, backup_dir: Path, pg_server: PostgresServer
    ) -> None:
        """Verify a maintenance role does the test restore of the owner's dump."""
        args = {
            **service.owner_args(),
            "backup_dir": str(backup_dir),
            "login_db": "postgres",
            "maintenance_user": SUPERUSER,
            "maintenance_password": SUPERUSER_PASSWORD,
        }

        rc, result, stdout = run_module_process("pg_backup", args)

        assert rc == 0, result
        assert result["tables"] == SEEDED_ROWS
        assert "test_restore" in result["verification"]["checks"]
        assert SUPERUSER_PASSWORD not in stdout
        assert scratch_databases(pg_server) == []

    def test_pg_restore_older_than_pg_dump_is_refused(
        self, db_args: dict, backup_dir: Path, tmp_path: Path
    ) -> None:
        """Ensure a pg_restore that could not read the dump fails before dumping."""
        old = fake_client(
            tmp_path, "pg_restore", 'echo "pg_restore (PostgreSQL) 13.16"'
        )

        rc, result, _ = backup(db_args, backup_dir, pg_restore_path=str(old))

        assert rc == 1
        assert "pg_restore 13.16" in result["msg"] and "cannot verify" in result["msg"]
        assert os.listdir(backup_dir) == []

    def test_check_mode_names_the_scratch_database_and_creates_nothing(
        self, db_args: dict, backup_dir: Path, seeded: dict, pg_server: PostgresServer
    ) -> None:
        """Verify check mode says what it would do, with sizes, and touches nothing."""
        rc, result, _ = backup(db_args, backup_dir, check_mode=True)

        assert rc == 0, result
        assert result["scratch_database"].startswith(f"{db_args['database']}_verify_")
        assert "would dump database" in result["msg"]
        assert result["database_size"] > 0 and result["free_space"] > 0
        assert os.listdir(backup_dir) == []
        assert scratch_databases(pg_server) == []


class TestSmallFileSystems:
    def test_too_little_space_for_the_estimate_is_refused_before_dumping(
        self, db_args: dict, tmp_path: Path, seeded: dict
    ) -> None:
        """Ensure a folder smaller than the database times space_factor fails first."""
        with tmpfs(tmp_path / "small", "2m") as folder:
            rc, result, _ = backup(db_args, folder)

            assert rc == 1
            assert "not enough free space" in result["msg"]
            assert "space_factor 1.0" in result["msg"]
            assert os.listdir(folder) == []

    def test_full_file_system_during_the_dump_leaves_nothing_half_written(
        self, db_args: dict, tmp_path: Path, bulky: int
    ) -> None:
        """Verify a dump that fills the folder fails clearly and leaves no partial file."""
        with tmpfs(tmp_path / "full", "2m") as folder:
            # The estimate is switched off so that pg_dump really runs out of room.
            rc, result, _ = backup(db_args, folder, space_factor=0)

            assert rc == 1
            assert (
                f"pg_dump of database '{db_args['database']}' failed" in result["msg"]
            )
            assert "No space left on device" in result["msg"]
            assert os.listdir(folder) == []

    def test_read_only_folder_is_refused_before_connecting(
        self, db_args: dict, tmp_path: Path
    ) -> None:
        """Ensure a backup folder on a read-only file system is named as not writable."""
        with tmpfs(tmp_path / "ro", "1m", read_only=True) as folder:
            rc, result, _ = backup({**db_args, "login_password": "never-used"}, folder)

            assert rc == 1
            assert f"backup_dir '{folder}' is not writable" in result["msg"]


class TestRetentionOfRealBackups:
    def test_retention_keeps_the_newest_of_two_real_backups(
        self, db_args: dict, backup_dir: Path, seeded: dict
    ) -> None:
        """Verify retention reads pg_backup's own manifests and keeps the newest."""
        _, first, _ = backup(db_args, backup_dir, verify_restore=False)
        time.sleep(1.1)
        _, second, _ = backup(db_args, backup_dir, verify_restore=False)

        rc, result, _ = run_module_process(
            "pg_backup_retention",
            {
                "backup_dir": str(backup_dir),
                "database": db_args["database"],
                "keep_last": 1,
                "keep_days": 0,
            },
        )

        assert rc == 0, result
        assert [item["archive"] for item in result["removed"]] == [first["dest"]]
        assert result["newest_verified"] == Path(second["dest"]).stem
        assert sorted(os.listdir(backup_dir)) == sorted(
            [Path(second["dest"]).name, Path(second["manifest"]).name]
        )
