"""Integration tests of pg_state against a real PostgreSQL.

The module runs in a child Python as Ansible would; one test runs it through the
ansible command itself, to prove the module and its module_utils ship together.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
from module_harness import run_module_process
from pgserver import PostgresServer


def state(args: dict, check_mode: bool = False) -> tuple[int, dict]:
    rc, result, _ = run_module_process("pg_state", args, check_mode=check_mode)
    return rc, result


def test_reports_server_and_database_facts(
    db_args: dict, db: psycopg.Connection
) -> None:
    """Ensure version, recovery, read-only flags and tables match the server."""
    db.execute("CREATE TABLE feeds (id int)")
    db.execute("INSERT INTO feeds SELECT generate_series(1, 50)")
    db.execute("CREATE TABLE never_analysed (id int)")
    db.execute("ANALYZE feeds")

    rc, result = state(db_args)

    assert rc == 0, result
    assert result["changed"] is False
    assert result["reachable"] is True and result["database_exists"] is True
    assert result["server_version"] == db.execute("SHOW server_version").fetchone()[0]
    assert result["server_version_num"] == db.info.server_version
    assert result["in_recovery"] is False
    assert result["read_only"] == {"database": False, "session": False}
    assert result["schema_version"] is None
    assert result["tables"] == {"feeds": 50, "never_analysed": None}


def test_schema_version_counts_applied_rows_only(db_args: dict, seed_history) -> None:
    """Verify a failed migration with a higher number does not raise the version."""
    seed_history()
    _, empty = state(db_args)
    seed_history((1, "applied"), (2, "applied"), (3, "failed"))

    rc, result = state(db_args)

    assert empty["schema_version"] == 0
    assert rc == 0 and result["schema_version"] == 2


def test_read_only_database_setting_is_seen(
    db_args: dict, pg_server: PostgresServer, pg_database: str
) -> None:
    """Ensure a database set read-only shows in both the stored and session flags."""
    with psycopg.connect(pg_server.superuser_dsn, autocommit=True) as admin:
        admin.execute(
            f'ALTER DATABASE "{pg_database}" SET default_transaction_read_only = on'
        )

    rc, result = state({**db_args, "login_db": "postgres"})

    assert rc == 0, result
    assert result["read_only"] == {"database": True, "session": True}


def test_role_setting_is_not_mistaken_for_the_database_one(
    db_args: dict, pg_server: PostgresServer, pg_database: str
) -> None:
    """Verify a read-only setting for one role in the database is not the database's."""
    with psycopg.connect(pg_server.superuser_dsn, autocommit=True) as admin:
        admin.execute(
            f'ALTER ROLE postgres IN DATABASE "{pg_database}"'
            " SET default_transaction_read_only = on"
        )
        try:
            rc, result = state({**db_args, "login_db": "postgres"})
        finally:
            admin.execute(f'ALTER ROLE postgres IN DATABASE "{pg_database}" RESET ALL')

    assert rc == 0, result
    assert result["read_only"] == {"database": False, "session": True}


def test_missing_database_is_reported_not_failed(db_args: dict) -> None:
    """Ensure a missing database gives database_exists false and no facts."""
    rc, result = state({**db_args, "login_db": "postgres", "database": "no_such_db"})

    assert rc == 0, result
    assert result["database_exists"] is False
    assert result["schema_version"] is None
    assert result["tables"] == {}
    assert result["read_only"]["session"] is None


def test_unreachable_server_fails_by_default(db_args: dict) -> None:
    """Verify a wrong password fails the task with a message naming the database."""
    rc, result = state({**db_args, "login_password": "wrong"})

    assert rc == 1
    assert "password authentication failed" in result["msg"]
    assert f"'{db_args['database']}'" in result["msg"]


def test_unreachable_server_can_be_a_result(db_args: dict) -> None:
    """Ensure fail_on_unreachable=false returns reachable=false with the error."""
    rc, result = state(
        {**db_args, "login_password": "wrong", "fail_on_unreachable": False}
    )

    assert rc == 0, result
    assert result["reachable"] is False
    assert "password authentication failed" in result["error"]


def test_check_mode_reports_the_same(db_args: dict, seed_history) -> None:
    """Verify check mode runs the same reads and reports no change."""
    seed_history((1, "applied"))

    normal = state(db_args)[1]
    checked = state(db_args, check_mode=True)[1]

    for key in ("reachable", "schema_version", "tables", "read_only", "changed"):
        assert checked[key] == normal[key]
    assert checked["changed"] is False


def test_runs_through_the_ansible_command(
    db_args: dict, repo_root: Path, tmp_path: Path
) -> None:
    """Ensure Ansible itself finds the module and ships its module_utils with it."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(repo_root / "ansible.cfg"),
        # Only the result tree is wanted here, not the timing callback of ansible.cfg.
        "ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.tree",
        "ANSIBLE_CALLBACK_TREE_DIR": str(tmp_path / "tree"),
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path),
    }
    command = [
        str(Path(sys.executable).parent / "ansible"),
        "localhost",
        "--inventory",
        "localhost,",
        "--connection",
        "local",
        "--extra-vars",
        json.dumps({"ansible_python_interpreter": sys.executable}),
        "--module-name",
        "pg_state",
        "--args",
        json.dumps(db_args),
    ]

    done = subprocess.run(
        command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "tree" / "localhost").read_text())
    assert result["reachable"] is True
    assert result["database"] == db_args["database"]
    assert db_args["login_password"] not in done.stdout
