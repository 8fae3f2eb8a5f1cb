"""Tests for the reading-history command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reading_history import cli
from reading_history.main import create_served_app
from reading_history.migrations import expected_version

APP_SOURCE = Path(__file__).resolve().parents[3] / "app" / "src"


def test_schema_version_prints_the_expected_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Verify `schema-version` prints only the integer the deployment compares."""
    assert cli.main(["schema-version"]) == 0

    assert capsys.readouterr().out == f"{expected_version()}\n"


def test_schema_version_needs_no_settings_nor_web_stack() -> None:
    """Ensure the version can be read where the service is not configured."""
    code = (
        "import sys; from reading_history.cli import main; "
        "rc = main(['schema-version']); "
        "assert 'fastapi' not in sys.modules and 'uvicorn' not in sys.modules; "
        "sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(APP_SOURCE)},
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(expected_version())


def test_serve_with_bad_settings_exits_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ensure a bad setting stops `serve` before it listens, saying which one."""
    monkeypatch.setenv("READING_HISTORY_DATABASE_URL", "mysql://u:pw@db/x")
    monkeypatch.setattr("uvicorn.run", pytest.fail)

    assert cli.main(["serve"]) == 2

    error = capsys.readouterr().err
    assert "READING_HISTORY_DATABASE_URL" in error
    assert "pw@" not in error


def test_serve_listens_where_the_settings_say(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Verify `serve` hands uvicorn the host and port from the settings."""
    calls: list[dict[str, object]] = []
    monkeypatch.setenv("READING_HISTORY_DATABASE_URL", "postgresql://u:pw@db/x")
    monkeypatch.setenv("READING_HISTORY_HOST", "0.0.0.0")
    monkeypatch.setenv("READING_HISTORY_PORT", "8765")
    monkeypatch.setenv("READING_HISTORY_WORKERS", "3")
    monkeypatch.setattr(
        "uvicorn.run", lambda app, **options: calls.append({"app": app, **options})
    )
    monkeypatch.setattr("reading_history.core.logs.configure_logging", print)

    assert cli.main(["serve"]) == 0

    assert calls[0]["host"] == "0.0.0.0"
    assert calls[0]["port"] == 8765
    # Each worker process builds its own application from the same settings.
    assert calls[0]["workers"] == 3
    assert calls[0]["app"] == "reading_history.main:create_served_app"
    assert calls[0]["factory"] is True
    # Requests are logged by the service itself, as JSON.
    assert calls[0]["access_log"] is False


def test_a_subcommand_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    """Ensure running the command bare is a usage error, not a silent success."""
    with pytest.raises(SystemExit) as caught:
        cli.main([])

    assert caught.value.code == 2
    assert "serve" in capsys.readouterr().err


def test_the_application_factory_builds_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Verify what each `serve` worker runs reads the same settings as `serve`."""
    monkeypatch.setenv("READING_HISTORY_DATABASE_URL", "postgresql://u:pw@db/x")
    monkeypatch.setenv("READING_HISTORY_RELEASE", "2024.05.01-3")
    monkeypatch.setattr("reading_history.main.configure_logging", lambda level: None)

    app = create_served_app()

    assert app.state.settings.release == "2024.05.01-3"


@pytest.mark.parametrize(
    "arguments",
    [
        ["tokens"],
        ["tokens", "create", "--name", "phone"],
        ["tokens", "create", "--user-id", "1", "--name", "x" * 101],
        ["tokens", "revoke", "--user-id", "1"],
        ["tokens", "list", "--user-id", "0"],
        ["purge-expired", "--batch-size", "0"],
    ],
)
def test_bad_arguments_are_refused_before_connecting(
    arguments: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ensure a mistyped command exits 2 without touching the database."""
    monkeypatch.setattr(cli, "run_with_database", pytest.fail)

    with pytest.raises(SystemExit) as caught:
        cli.main(arguments)

    assert caught.value.code == 2


@pytest.mark.parametrize("arguments", [["tokens", "list"], ["purge-expired"]])
def test_database_commands_need_valid_settings(
    arguments: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ensure commands that connect refuse to start on bad settings, and say why."""
    monkeypatch.delenv("READING_HISTORY_DATABASE_URL", raising=False)

    assert cli.main(arguments) == 2

    assert "READING_HISTORY_DATABASE_URL is required" in capsys.readouterr().err
