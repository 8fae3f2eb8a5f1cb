"""Tests for the reading-history command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reading_history import cli
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
    monkeypatch.setattr("uvicorn.run", lambda app, **options: calls.append(options))
    monkeypatch.setattr("reading_history.core.logs.configure_logging", print)

    assert cli.main(["serve"]) == 0

    assert calls[0]["host"] == "0.0.0.0"
    assert calls[0]["port"] == 8765
    # Requests are logged by the service itself, as JSON.
    assert calls[0]["access_log"] is False


def test_a_subcommand_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    """Ensure running the command bare is a usage error, not a silent success."""
    with pytest.raises(SystemExit) as caught:
        cli.main([])

    assert caught.value.code == 2
    assert "serve" in capsys.readouterr().err
