"""Unit tests of pg_backup: naming, TOC parsing, verification and the dump flow.

The database and the PostgreSQL client programs are faked, so the flow can be checked
for what reaches the command line and the environment without a server.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import stat
from pathlib import Path

import pg_backup
import pytest
from ansible.module_utils import basic, pg_dump_tools
from module_harness import ModuleFail, run_module
from pg_backup import (
    backup_stem,
    missing_from_toc,
    newest_packaged_client,
    parse_toc,
    parse_toc_line,
    verify_dump,
)
from psycopg import sql

PASSWORD = "s3cret-Pa55"

# Trimmed from a real pg_restore --list of a PostgreSQL 15 custom dump.
TOC_LISTING = """\
;
; Archive created at 2025-01-02 03:04:05 UTC
;     dbname: sample
;     TOC Entries: 23
;
6; 2615 16405 SCHEMA - audit postgres
220; 1255 16409 FUNCTION public touch(integer) postgres
218; 1259 16406 TABLE audit log postgres
216; 1259 16386 TABLE public feeds postgres
3372; 0 0 COMMENT public TABLE feeds postgres
215; 1259 16385 SEQUENCE public feeds_id_seq postgres
3373; 0 0 SEQUENCE OWNED BY public feeds_id_seq postgres
219; 1259 16410 MATERIALIZED VIEW public mv postgres
217; 1259 16396 TABLE public reading events postgres
3364; 0 16406 TABLE DATA audit log postgres
3362; 0 16386 TABLE DATA public feeds postgres
3363; 0 16396 TABLE DATA public reading events postgres
3374; 0 0 SEQUENCE SET public feeds_id_seq postgres
3213; 2606 16393 CONSTRAINT public feeds feeds_pkey postgres
3217; 2606 16399 FK CONSTRAINT public reading events reading events_fk postgres
3365; 0 16410 MATERIALIZED VIEW DATA public mv postgres
"""


class TestNaming:
    def test_name_is_database_and_utc_time(self) -> None:
        """Ensure the stem is <database>_<YYYYmmddTHHMMSSZ> in UTC."""
        moment = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
        assert (
            backup_stem("reading_history", moment) == "reading_history_20250102T030405Z"
        )

    def test_local_time_is_converted_to_utc(self) -> None:
        """Verify a time with an offset is named after its UTC equivalent."""
        paris = datetime.timezone(datetime.timedelta(hours=2))
        moment = datetime.datetime(2025, 6, 1, 1, 30, 0, tzinfo=paris)
        assert backup_stem("db", moment) == "db_20250531T233000Z"

    def test_unsafe_characters_become_underscores(self) -> None:
        """Ensure a database name cannot walk out of the backup folder."""
        moment = datetime.datetime(2025, 1, 2, tzinfo=datetime.UTC)
        assert backup_stem("../odd name", moment) == ".._odd_name_20250102T000000Z"


class TestTocParsing:
    def test_reads_kind_schema_name_and_owner(self) -> None:
        """Ensure multi-word kinds and names with spaces are split correctly."""
        entry = parse_toc_line(
            "3363; 0 16396 TABLE DATA public reading events postgres"
        )

        assert (entry.dump_id, entry.kind, entry.schema, entry.name, entry.owner) == (
            3363,
            "TABLE DATA",
            "public",
            "reading events",
            "postgres",
        )

    def test_skips_comment_lines(self) -> None:
        """Verify header and commented-out lines are not entries."""
        entries = parse_toc(TOC_LISTING)

        assert len(entries) == 16
        assert entries[0].kind == "SCHEMA" and entries[0].schema == "-"

    def test_comment_on_a_table_is_not_the_table(self) -> None:
        """Ensure 'COMMENT public TABLE feeds' does not count as a TABLE entry."""
        kinds = {(e.kind, e.name) for e in parse_toc(TOC_LISTING) if "feeds" in e.name}

        assert ("COMMENT", "TABLE feeds") in kinds
        assert ("SEQUENCE OWNED BY", "feeds_id_seq") in kinds
        assert ("TABLE", "feeds") in kinds

    def test_all_tables_present(self) -> None:
        """Verify nothing is reported when every table has definition and data."""
        entries = parse_toc(TOC_LISTING)
        assert missing_from_toc(entries, ["feeds", "reading events", "audit.log"]) == []

    def test_reports_missing_definition_and_data(self) -> None:
        """Ensure a table absent from the archive is reported for both entries."""
        problems = missing_from_toc(parse_toc(TOC_LISTING), ["feeds", "bookmarks"])

        assert problems == [
            "TABLE entry for public.bookmarks is missing",
            "TABLE DATA entry for public.bookmarks is missing",
        ]

    def test_schema_must_match(self) -> None:
        """Verify a table of the same name in another schema does not count."""
        problems = missing_from_toc(parse_toc(TOC_LISTING), ["log"])
        assert "TABLE entry for public.log is missing" in problems

    def test_definition_without_data_is_caught(self) -> None:
        """Ensure a dump made without data fails the check."""
        schema_only = "\n".join(
            line for line in TOC_LISTING.splitlines() if "TABLE DATA" not in line
        )
        problems = missing_from_toc(parse_toc(schema_only), ["feeds"])
        assert problems == ["TABLE DATA entry for public.feeds is missing"]


def fake_runner(rc: int = 0, stdout: str = TOC_LISTING, stderr: str = ""):
    calls: list[list[str]] = []

    def run(argv: list[str]) -> tuple[int, str, str]:
        calls.append(argv)
        return rc, stdout, stderr

    run.calls = calls
    return run


class TestVerifyDump:
    def test_good_dump_passes(self, tmp_path: Path) -> None:
        """Verify a dump with the right checksum and TOC passes."""
        dump = tmp_path / "d.dump"
        dump.write_bytes(b"PGDMP archive")
        run = fake_runner()

        result = verify_dump(
            run,
            "/bin/pg_restore",
            str(dump),
            hashlib.sha256(b"PGDMP archive").hexdigest(),
            ["feeds"],
        )

        assert result.ok and result.checksum_matches
        assert result.tables_checked == ["public.feeds"]
        assert run.calls == [["/bin/pg_restore", "--list", str(dump)]]

    def test_changed_bytes_fail_the_checksum(self, tmp_path: Path) -> None:
        """Ensure a file altered after the dump is caught by its checksum."""
        dump = tmp_path / "d.dump"
        dump.write_bytes(b"PGDMP altered")

        result = verify_dump(
            fake_runner(), "pg_restore", str(dump), "0" * 64, ["feeds"]
        )

        assert not result.ok and not result.checksum_matches

    def test_unreadable_archive_fails(self, tmp_path: Path) -> None:
        """Verify a pg_restore --list failure is reported with its error."""
        dump = tmp_path / "d.dump"
        dump.write_bytes(b"junk")
        run = fake_runner(
            rc=1, stdout="", stderr="pg_restore: error: input file is too short"
        )

        result = verify_dump(
            run, "pg_restore", str(dump), hashlib.sha256(b"junk").hexdigest(), ["feeds"]
        )

        assert result.problems == [
            "pg_restore --list failed: pg_restore: error: input file is too short"
        ]


def test_newest_packaged_client_compares_versions_as_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ensure version 15 wins over 9.6-era folders that sort later as text."""
    for version in ("9", "13", "15", "extra"):
        folder = tmp_path / version / "bin"
        folder.mkdir(parents=True)
        (folder / "pg_dump").write_text("")
    monkeypatch.setattr(pg_dump_tools, "CLIENT_ROOT", str(tmp_path))

    assert newest_packaged_client("pg_dump") == str(tmp_path / "15" / "bin" / "pg_dump")
    assert newest_packaged_client("pg_restore") is None


class FakeCursor:
    def __init__(self, rows: list[tuple]) -> None:
        self.rows = rows

    def fetchone(self) -> tuple | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[tuple]:
        return self.rows


class FakeConnection:
    """Answers the few queries pg_backup makes, the way PostgreSQL 15 would."""

    def __init__(self, may_create_databases: bool = True) -> None:
        self.queries: list[str] = []
        self.may_create_databases = may_create_databases

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def commit(self) -> None:
        self.queries.append("COMMIT")

    def execute(self, query, params=None) -> FakeCursor:
        if isinstance(query, sql.Composable):
            text = query.as_string(None) if hasattr(query, "as_string") else str(query)
            self.queries.append(text)
            if text.startswith("SELECT count(*)"):
                return FakeCursor([(3,)])
            return FakeCursor([])
        self.queries.append(query)
        if "server_version" in query:
            return FakeCursor([("15.4", 150004)])
        if "pg_database_size" in query:
            return FakeCursor([(8_000_000,)])
        if "rolcreatedb" in query:
            return FakeCursor([(self.may_create_databases,)])
        if "pg_export_snapshot" in query:
            return FakeCursor([("00000003-00000002-1",)])
        if "to_regclass" in query:
            return FakeCursor([(False,)])
        if "pg_class" in query:
            return FakeCursor([("public", "feeds")])
        if "FROM pg_database d WHERE" in query:
            return FakeCursor(
                [
                    (
                        1,
                        "owner",
                        "UTF8",
                        "C.UTF-8",
                        "C.UTF-8",
                        "c",
                        None,
                        -1,
                        True,
                        None,
                        True,
                    )
                ]
            )
        if "pg_db_role_setting" in query:
            return FakeCursor([])
        if "FROM pg_database WHERE datname" in query:
            return FakeCursor([])
        raise AssertionError(f"unexpected query {query}")


class FakeClients:
    """Plays pg_dump and pg_restore, recording every command and its environment."""

    def __init__(
        self, pg_dump_version: str = "15.4", dump_rc: int = 0, restore_rc: int = 0
    ) -> None:
        self.pg_dump_version = pg_dump_version
        self.dump_rc = dump_rc
        self.restore_rc = restore_rc
        self.commands: list[list[str]] = []
        self.environments: list[dict] = []

    def run_command(self, args, environ_update=None, **kwargs):
        self.commands.append(list(args))
        self.environments.append(dict(environ_update or {}))
        if "--version" in args:
            program = Path(args[0]).name
            return 0, f"{program} (PostgreSQL) {self.pg_dump_version}\n", ""
        if "--list" in args:
            return 0, TOC_LISTING, ""
        if any(arg.startswith("--dbname=") for arg in args):
            if self.restore_rc:
                return (
                    self.restore_rc,
                    "",
                    "pg_restore: error: could not read from input file: end of file",
                )
            return 0, "", ""
        target = Path(
            next(arg.split("=", 1)[1] for arg in args if arg.startswith("--file="))
        )
        if target.is_dir():
            target = target / "toc.dat"
        target.write_bytes(b"PGDMP partial" if self.dump_rc else b"PGDMP whole")
        return self.dump_rc, "", "pg_dump: error: disk full" if self.dump_rc else ""

    def of(self, program: str) -> list[list[str]]:
        """The commands run with one program, --version aside."""
        return [
            command
            for command in self.commands
            if Path(command[0]).name == program and "--version" not in command
        ]


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> FakeClients:
    fake = FakeClients()
    monkeypatch.setattr(basic.AnsibleModule, "run_command", fake.run_command)
    monkeypatch.setattr(pg_backup, "connect", lambda *args, **kwargs: FakeConnection())
    fake.maintenance = []

    # The connections of the test restore, made as the maintenance role.
    def connect_with(
        module, params, dbname, application_name, purpose, autocommit=True
    ):
        conn = FakeConnection()
        conn.params = params
        conn.dbname = dbname
        fake.maintenance.append(conn)
        return conn

    monkeypatch.setattr(pg_backup, "connect_with", connect_with)
    return fake


@pytest.fixture
def backup_args(tmp_path: Path) -> dict:
    programs = tmp_path / "bin"
    programs.mkdir()
    for name in ("pg_dump", "pg_restore"):
        program = programs / name
        program.write_text("#!/bin/sh\nexit 1\n")
        program.chmod(0o755)
    backups = tmp_path / "backups"
    backups.mkdir()
    return {
        "database": "reading_history",
        "backup_dir": str(backups),
        "pg_dump_path": str(programs / "pg_dump"),
        "pg_restore_path": str(programs / "pg_restore"),
        "login_host": "db.test",
        "login_user": "release",
        "login_password": PASSWORD,
        "app_release": "1.4.0",
    }


class TestBackupFlow:
    def test_password_goes_only_through_the_environment(
        self, clients: FakeClients, backup_args: dict
    ) -> None:
        """Ensure PGPASSWORD carries the password and no argv or result holds it."""
        result = run_module(pg_backup, backup_args)

        dump_env = clients.environments[
            clients.commands.index(clients.of("pg_dump")[0])
        ]
        assert dump_env["PGPASSWORD"] == PASSWORD
        assert dump_env["PGDATABASE"] == "reading_history"
        assert dump_env["PGHOST"] == "db.test"
        assert all(
            PASSWORD not in arg for command in clients.commands for arg in command
        )
        assert PASSWORD not in json.dumps(result)

    def test_dump_runs_in_the_exported_snapshot_without_prompting(
        self, clients: FakeClients, backup_args: dict
    ) -> None:
        """Verify pg_dump gets the custom format, the snapshot and --no-password."""
        run_module(pg_backup, backup_args)

        [dump_command] = clients.of("pg_dump")
        assert "--format=custom" in dump_command
        assert "--no-password" in dump_command
        assert "--snapshot=00000003-00000002-1" in dump_command

    def test_writes_dump_and_manifest_that_agree(
        self, clients: FakeClients, backup_args: dict
    ) -> None:
        """Ensure the manifest describes the file written, and both are private."""
        result = run_module(pg_backup, backup_args)

        dump = Path(result["dest"])
        manifest = json.loads(Path(result["manifest"]).read_text())
        assert dump.read_bytes() == b"PGDMP whole"
        assert manifest["sha256"] == hashlib.sha256(b"PGDMP whole").hexdigest()
        assert manifest["file"] == dump.name
        assert manifest["tables"] == {"feeds": 3}
        assert manifest["app_release"] == "1.4.0"
        assert manifest["verified"] is True
        assert manifest["pg_dump_version"] == "15.4"
        assert dump.name.startswith("reading_history_") and dump.suffix == ".dump"
        assert Path(result["manifest"]).name == f"{dump.stem}.manifest.json"
        assert stat.S_IMODE(os.stat(dump).st_mode) == 0o600
        assert sorted(os.listdir(backup_args["backup_dir"])) == sorted(
            [dump.name, Path(result["manifest"]).name]
        )

    def test_failed_dump_leaves_nothing_behind(
        self, clients: FakeClients, backup_args: dict
    ) -> None:
        """Verify a pg_dump failure reports its stderr and removes the partial file."""
        clients.dump_rc = 1

        with pytest.raises(ModuleFail) as failed:
            run_module(pg_backup, backup_args)

        result = failed.value.result
        assert "pg_dump of database 'reading_history' failed" in result["msg"]
        assert "disk full" in result["msg"]
        assert result["rc"] == 1
        assert PASSWORD not in json.dumps(result["cmd"])
        assert os.listdir(backup_args["backup_dir"]) == []

    def test_old_pg_dump_is_refused_before_dumping(
        self, clients: FakeClients, backup_args: dict
    ) -> None:
        """Ensure a pg_dump older than the server fails without dumping."""
        clients.pg_dump_version = "13.9"

        with pytest.raises(
            ModuleFail, match="pg_dump 13.9 .* is older than server 15.4"
        ):
            run_module(pg_backup, backup_args)

        assert clients.of("pg_dump") == []
        assert os.listdir(backup_args["backup_dir"]) == []

    def test_check_mode_reports_the_path_and_writes_nothing(
        self, clients: FakeClients, backup_args: dict
    ) -> None:
        """Verify check mode names the file it would write and dumps nothing."""
        result = run_module(pg_backup, backup_args, check_mode=True)

        assert result["changed"] is True
        assert result["dest"].startswith(backup_args["backup_dir"])
        assert result["dest"].endswith(".dump")
        assert [
            command for command in clients.commands if "--version" not in command
        ] == []
        assert os.listdir(backup_args["backup_dir"]) == []

    def test_missing_expected_table_fails_and_removes_the_dump(
        self, clients: FakeClients, backup_args: dict
    ) -> None:
        """Ensure failed verification leaves no dump and no manifest."""
        args = {**backup_args, "expected_tables": ["bookmarks"]}

        with pytest.raises(
            ModuleFail, match="TABLE entry for public.bookmarks is missing"
        ):
            run_module(pg_backup, args)

        assert os.listdir(backup_args["backup_dir"]) == []


def test_an_existing_backup_is_never_replaced(
    clients: FakeClients, backup_args: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ensure a backup whose name is taken fails and leaves the earlier file alone."""
    monkeypatch.setattr(pg_backup, "backup_stem", lambda database, moment: "taken")
    earlier = Path(backup_args["backup_dir"]) / "taken.dump"
    earlier.write_bytes(b"earlier backup")

    with pytest.raises(ModuleFail, match="taken.dump' already exists"):
        run_module(pg_backup, backup_args)

    assert earlier.read_bytes() == b"earlier backup"
    assert os.listdir(backup_args["backup_dir"]) == ["taken.dump"]


class TestArguments:
    def test_database_and_backup_dir_are_required(self) -> None:
        """Verify the argument spec names both required options."""
        with pytest.raises(ModuleFail) as failed:
            run_module(pg_backup, {})

        assert "backup_dir" in failed.value.result["msg"]
        assert "database" in failed.value.result["msg"]

    def test_missing_backup_dir_is_named(self, tmp_path: Path) -> None:
        """Ensure a backup folder that does not exist fails before connecting."""
        args = {"database": "db", "backup_dir": str(tmp_path / "nowhere")}

        with pytest.raises(ModuleFail, match="nowhere' does not exist"):
            run_module(pg_backup, args)

    def test_unwritable_backup_dir_is_named(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Verify a folder the module may not write into fails before connecting."""
        monkeypatch.setattr(pg_backup.os, "access", lambda path, mode: False)

        with pytest.raises(ModuleFail, match="is not writable"):
            run_module(pg_backup, {"database": "db", "backup_dir": str(tmp_path)})

    def test_pg_dump_path_must_be_executable(self, tmp_path: Path, clients) -> None:
        """Ensure a configured pg_dump that cannot run is named in the failure."""
        args = {
            "database": "db",
            "backup_dir": str(tmp_path),
            "pg_dump_path": str(tmp_path / "missing_pg_dump"),
        }

        with pytest.raises(ModuleFail, match="missing_pg_dump' is not an executable"):
            run_module(pg_backup, args)


class TestTestRestore:
    def test_restores_into_a_scratch_database_as_the_maintenance_role(
        self, clients: FakeClients, backup_args: dict
    ) -> None:
        """Ensure the scratch restore stops on errors, runs as one transaction and is dropped."""
        args = {
            **backup_args,
            "maintenance_user": "backup_admin",
            "maintenance_password": "admin-Pa55",
        }

        result = run_module(pg_backup, args)

        [restore] = [c for c in clients.of("pg_restore") if "--list" not in c]
        scratch = result["scratch_database"]
        assert scratch.startswith("reading_history_verify_")
        assert f"--dbname={scratch}" in restore
        for flag in (
            "--exit-on-error",
            "--single-transaction",
            "--no-owner",
            "--no-password",
        ):
            assert flag in restore
        env = clients.environments[clients.commands.index(restore)]
        assert env["PGUSER"] == "backup_admin" and env["PGPASSWORD"] == "admin-Pa55"
        assert "admin-Pa55" not in json.dumps(
            result
        ) and "admin-Pa55" not in json.dumps(clients.commands)
        admin, counted = clients.maintenance[-2:]
        assert any(q.startswith("CREATE DATABASE") for q in admin.queries)
        assert (
            admin.queries[-1].startswith("DROP DATABASE")
            and "FORCE" in admin.queries[-1]
        )
        assert counted.dbname == scratch
        assert result["verification"]["checks"][-1] == "test_restore"
        assert result["verification"]["restore"]["dropped"] is True

    def test_failed_test_restore_drops_the_scratch_database_and_the_dump(
        self, clients: FakeClients, backup_args: dict
    ) -> None:
        """Verify a test restore that fails removes the dump and still drops the scratch."""
        clients.restore_rc = 1

        with pytest.raises(ModuleFail, match="test restore into .* end of file"):
            run_module(pg_backup, backup_args)

        admin = clients.maintenance[-1]
        assert admin.queries[-1].startswith("DROP DATABASE")
        assert os.listdir(backup_args["backup_dir"]) == []

    def test_role_that_may_not_create_databases_fails_before_dumping(
        self, clients: FakeClients, backup_args: dict, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Ensure a missing CREATEDB is reported before pg_dump runs."""
        monkeypatch.setattr(
            pg_backup,
            "connect_with",
            lambda *args, **kwargs: FakeConnection(may_create_databases=False),
        )

        with pytest.raises(ModuleFail, match="may not create the scratch database"):
            run_module(pg_backup, backup_args)

        assert clients.of("pg_dump") == []

    def test_without_test_restore_no_scratch_database_is_made(
        self, clients: FakeClients, backup_args: dict
    ) -> None:
        """Verify verify_restore=false neither connects as maintenance nor restores."""
        result = run_module(pg_backup, {**backup_args, "verify_restore": False})

        assert clients.maintenance == []
        assert [c for c in clients.of("pg_restore") if "--list" not in c] == []
        assert result["verification"]["checks"] == ["checksum", "table_of_contents"]


class TestFormatsAndSpace:
    def test_directory_format_dumps_and_restores_with_its_jobs(
        self, clients: FakeClients, backup_args: dict
    ) -> None:
        """Ensure format=directory passes --jobs to pg_dump and to the test restore."""
        result = run_module(
            pg_backup, {**backup_args, "format": "directory", "jobs": 3}
        )

        [dump_command] = clients.of("pg_dump")
        assert "--format=directory" in dump_command and "--jobs=3" in dump_command
        [restore] = [c for c in clients.of("pg_restore") if "--list" not in c]
        assert "--jobs=3" in restore and "--single-transaction" not in restore
        assert result["dest"].endswith(".dir")
        assert result["files"] == {
            "toc.dat": {
                "size": 11,
                "sha256": hashlib.sha256(b"PGDMP whole").hexdigest(),
            }
        }

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"jobs": 0}, "jobs must be 1 or more"),
            ({"jobs": 2}, "jobs=2 needs format=directory"),
            ({"space_factor": -1.0}, "space_factor must be 0 or more"),
        ],
    )
    def test_inconsistent_options_are_refused(
        self, clients: FakeClients, backup_args: dict, options: dict, message: str
    ) -> None:
        """Verify option values that cannot work fail before any command runs."""
        with pytest.raises(ModuleFail, match=message):
            run_module(pg_backup, {**backup_args, **options})

        assert clients.commands == []

    def test_too_little_free_space_fails_before_dumping(
        self, clients: FakeClients, backup_args: dict, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Ensure the free-space estimate (size x factor) is checked before pg_dump."""
        monkeypatch.setattr(pg_backup, "free_space", lambda folder: 3_000_000)

        with pytest.raises(ModuleFail) as failed:
            run_module(pg_backup, {**backup_args, "space_factor": 0.5})

        assert "3000000 bytes free, 4000000 needed" in failed.value.result["msg"]
        assert clients.of("pg_dump") == []

        # A factor that fits the free space lets the backup through.
        result = run_module(pg_backup, {**backup_args, "space_factor": 0.25})
        assert result["verified"] is True
