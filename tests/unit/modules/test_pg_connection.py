"""Unit tests of the shared PostgreSQL connection helpers in module_utils."""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible.module_utils import pg_connection
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.pg_connection import (
    PgConnectError,
    connection_kwargs,
    libpq_environment,
    pg_argument_spec,
)
from module_harness import ModuleFail, run_module


def params(**overrides) -> dict:
    """Return module parameters as AnsibleModule would fill them from the defaults."""
    values = {name: spec.get("default") for name, spec in pg_argument_spec().items()}
    values.update(overrides)
    return values


class TestArgumentSpec:
    def test_defaults_and_types(self) -> None:
        """Ensure every shared option has the agreed type and default."""
        spec = pg_argument_spec()

        assert {name: (s["type"], s["default"]) for name, s in spec.items()} == {
            "login_host": ("str", ""),
            "login_port": ("int", 5432),
            "login_user": ("str", "postgres"),
            "login_password": ("str", ""),
            "login_db": ("str", "postgres"),
            "login_unix_socket": ("str", ""),
            "connect_timeout": ("int", 10),
            "ssl_mode": ("str", "prefer"),
        }
        assert spec["ssl_mode"]["choices"] == [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ]

    def test_password_is_no_log(self) -> None:
        """Verify the password option is masked by Ansible."""
        assert pg_argument_spec()["login_password"]["no_log"] is True

    def test_each_call_returns_a_fresh_dict(self) -> None:
        """Ensure a module extending the spec cannot change another module's spec."""
        first = pg_argument_spec()
        first["login_port"]["default"] = 1
        first["extra"] = {}

        second = pg_argument_spec()
        assert second["login_port"]["default"] == 5432
        assert "extra" not in second


class TestLibpqEnvironment:
    def test_carries_every_connection_setting(self) -> None:
        """Ensure the environment holds host, port, user, password, db, timeout, ssl."""
        env = libpq_environment(
            params(
                login_host="db.test",
                login_port=6543,
                login_user="release",
                login_password="pw",
                connect_timeout=3,
                ssl_mode="require",
            ),
            "reading_history",
        )

        assert env == {
            "PGHOST": "db.test",
            "PGPORT": "6543",
            "PGUSER": "release",
            "PGPASSWORD": "pw",
            "PGDATABASE": "reading_history",
            "PGCONNECT_TIMEOUT": "3",
            "PGSSLMODE": "require",
        }

    def test_socket_folder_wins_over_host(self) -> None:
        """Verify login_unix_socket is used in place of login_host."""
        env = libpq_environment(
            params(login_host="db.test", login_unix_socket="/run/postgresql"), "db"
        )
        assert env["PGHOST"] == "/run/postgresql"

    def test_empty_values_are_left_to_libpq(self) -> None:
        """Ensure an empty host or password is left out, so libpq's defaults apply."""
        env = libpq_environment(params(), "db")

        assert "PGHOST" not in env
        assert "PGPASSWORD" not in env
        assert all(isinstance(value, str) for value in env.values())


class TestConnectionKwargs:
    def test_password_only_when_given(self) -> None:
        """Verify an empty password is not sent, so ~/.pgpass can supply one."""
        assert "password" not in connection_kwargs(params(), "db", "app")
        assert (
            connection_kwargs(params(login_password="pw"), "db", "app")["password"]
            == "pw"
        )

    def test_names_the_application(self) -> None:
        """Ensure sessions carry the module's application name for pg_stat_activity."""
        kwargs = connection_kwargs(params(), "db", "ansible-pg_migrate")
        assert kwargs["application_name"] == "ansible-pg_migrate"
        assert kwargs["dbname"] == "db"


def make_module(args: dict) -> AnsibleModule:
    from ansible.module_utils.testing import patch_module_args

    with patch_module_args(args):
        return AnsibleModule(argument_spec=pg_argument_spec())


class TestConnect:
    def test_failure_can_be_returned_as_an_exception(self, tmp_path: Path) -> None:
        """Ensure fail_on_error=False raises PgConnectError naming db, server, user."""
        module = make_module({"login_unix_socket": str(tmp_path), "login_port": 1})

        with pytest.raises(PgConnectError) as raised:
            pg_connection.connect(module, dbname="reading_history", fail_on_error=False)

        message = str(raised.value)
        assert "'reading_history'" in message
        assert str(tmp_path) in message
        assert "'postgres'" in message
        assert "\n" not in message

    def test_missing_psycopg_fails_with_the_library_name(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Verify a host without psycopg gets a clear missing-library failure."""
        import pg_state

        monkeypatch.setattr(pg_connection, "HAS_PSYCOPG", False)
        monkeypatch.setattr(
            pg_connection, "PSYCOPG_IMPORT_ERROR", "Traceback: no psycopg"
        )

        with pytest.raises(ModuleFail) as failed:
            run_module(pg_state, {})

        assert "psycopg (version 3)" in failed.value.result["msg"]
        assert failed.value.result["exception"] == "Traceback: no psycopg"
