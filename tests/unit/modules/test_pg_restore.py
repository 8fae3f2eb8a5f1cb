"""Unit tests of pg_restore's guards, and of the documentation of the new modules.

The restore itself is tested against a real server in the integration tests; here
the refusals that must come before any connection, and the documentation checks
test_documentation applies to the other modules.
"""

from __future__ import annotations

import json
from pathlib import Path

import pg_backup
import pg_restore
import pytest
from ansible.module_utils import basic
from module_harness import ModuleFail, run_module
from test_documentation import argument_spec_of



@pytest.fixture
def no_connection(monkeypatch: pytest.MonkeyPatch) -> list:
    """Fail the test if the module tries to reach a server or run a program."""
    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError("the module went past its guards")

    monkeypatch.setattr(pg_restore, "connect", refuse)
    monkeypatch.setattr(basic.AnsibleModule, "run_command", refuse)
    return attempts


def args(tmp_path: Path, **options) -> dict:
    return {
        "manifest": str(tmp_path / "db_20250102T030405Z.manifest.json"),
        "database": "reading_history",
        "confirm": "reading_history",
        **options,
    }


class TestGuards:
    @pytest.mark.parametrize(
        "confirm", ["", "reading-history", "READING_HISTORY", "yes"]
    )
    def test_confirm_must_repeat_the_database_name(
        self, tmp_path: Path, no_connection: list, confirm: str
    ) -> None:
        """Ensure anything but the exact database name in confirm is refused."""
        with pytest.raises(ModuleFail, match="confirm must be 'reading_history'"):
            run_module(pg_restore, args(tmp_path, confirm=confirm))

        assert no_connection == []

    def test_confirm_is_required(self, tmp_path: Path, no_connection: list) -> None:
        """Verify the module does not run without a confirm option at all."""
        options = args(tmp_path)
        del options["confirm"]

        with pytest.raises(ModuleFail, match="confirm"):
            run_module(pg_restore, options)

    def test_login_db_must_not_be_the_database_replaced(
        self, tmp_path: Path, no_connection: list
    ) -> None:
        """Ensure the restore never sits in the database it has to rename."""
        with pytest.raises(ModuleFail, match="login_db must be another database"):
            run_module(pg_restore, args(tmp_path, login_db="reading_history"))

    def test_missing_manifest_is_named(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Verify a manifest that is not there fails with its path, before connecting."""
        monkeypatch.setattr(
            pg_restore, "connect", lambda *a, **k: pytest.fail("connected")
        )

        with pytest.raises(ModuleFail, match="cannot read manifest .*manifest.json"):
            run_module(pg_restore, args(tmp_path))

    def test_unverified_backup_is_refused_before_hashing(
        self, tmp_path: Path, no_connection: list
    ) -> None:
        """Ensure a manifest that does not say verified stops the restore at once."""
        manifest = Path(args(tmp_path)["manifest"])
        manifest.write_text(
            json.dumps(
                {
                    "file": "db_20250102T030405Z.dump",
                    "sha256": "0" * 64,
                    "size": 1,
                    "database": "reading_history",
                    "started_at": "2025-01-02T03:04:05Z",
                    "tables": {},
                    "verified": False,
                }
            )
        )

        with pytest.raises(ModuleFail, match="was not verified"):
            run_module(pg_restore, args(tmp_path))


def test_passwords_are_no_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Verify every option holding a password is hidden from Ansible's output."""
    for module in (pg_restore, pg_backup):
        spec = argument_spec_of(module, monkeypatch)
        secrets = [name for name in spec if "password" in name]
        assert secrets, module.__name__
        assert all(spec[name].get("no_log") for name in secrets), module.__name__
