"""Tests for the wheel the deployment installs: contents, command, reproducibility."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from reading_history.migrations import expected_version, load_migrations

APP_DIR = Path(__file__).resolve().parents[3] / "app"


def build_wheel(outdir: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            str(APP_DIR),
            "--outdir",
            str(outdir),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    [wheel] = outdir.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel once for this module."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def read_member(wheel_path: Path, suffix: str) -> str:
    with zipfile.ZipFile(wheel_path) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(suffix)]
        return archive.read(name).decode()


def test_wheel_is_named_for_the_release(wheel: Path) -> None:
    """Verify the wheel's name and version are those the deployment looks for."""
    assert wheel.name == "reading_history-1.0.0-py3-none-any.whl"

    metadata = Parser().parsestr(read_member(wheel, ".dist-info/METADATA"))
    assert metadata["Name"] == "reading-history"
    assert metadata["Version"] == "1.0.0"
    assert metadata["Requires-Python"] == ">=3.11"
    requirements = " ".join(metadata.get_all("Requires-Dist") or [])
    for dependency in ("fastapi", "uvicorn", "psycopg", "pydantic-settings"):
        assert dependency in requirements


def test_wheel_carries_every_migration_unchanged(wheel: Path) -> None:
    """Ensure the migrations travel inside the wheel, byte for byte."""
    source = APP_DIR / "src" / "reading_history" / "migrations"

    with zipfile.ZipFile(wheel) as archive:
        packaged = {
            Path(name).name: archive.read(name)
            for name in archive.namelist()
            if name.startswith("reading_history/migrations/") and name.endswith(".sql")
        }

    expected = {path.name: path.read_bytes() for path in source.glob("*.sql")}
    assert packaged == expected
    assert len(packaged) == 2 * len(load_migrations())


def test_wheel_declares_the_console_script(wheel: Path) -> None:
    """Verify installing the wheel provides the reading-history command."""
    entry_points = read_member(wheel, ".dist-info/entry_points.txt")

    assert "[console_scripts]" in entry_points
    assert "reading-history = reading_history.cli:main" in entry_points


def test_wheel_is_reproducible(wheel: Path, tmp_path: Path) -> None:
    """Ensure building the same source twice gives the same bytes."""
    again = build_wheel(tmp_path)

    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert hashlib.sha256(again.read_bytes()).hexdigest() == digest


def test_installed_wheel_reports_its_schema_version_and_commands(
    wheel: Path, tmp_path: Path
) -> None:
    """Verify the installed command finds its migrations, and offers every command."""
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )

    result = subprocess.run(
        [str(environment / "bin" / "reading-history"), "schema-version"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    )

    assert result.stdout == f"{expected_version()}\n"
    commands = subprocess.run(
        [str(environment / "bin" / "reading-history"), "--help"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    )
    for command in ("serve", "purge-expired", "tokens"):
        assert command in commands.stdout
