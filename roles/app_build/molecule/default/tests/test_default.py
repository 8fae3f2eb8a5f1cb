"""Verify the release app_build leaves on the controller: record, wheelhouse, SQL."""

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
SOURCE = EPHEMERAL / "app"
RELEASES = EPHEMERAL / "releases"
REPO = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]).parents[1]
BUILD_TOOL = REPO / "tools" / "build-release"
FIRST_MIGRATIONS = [
    "0001_create_user_reading_preferences.up.sql",
    "0002_create_reading_history.up.sql",
]


@pytest.fixture
def release_dir(host):
    """Return the one release folder the builds of this run made."""
    names = host.file(str(RELEASES)).listdir()
    assert len(names) == 1, f"expected one release and no partial build: {names}"
    return RELEASES / names[0]


@pytest.fixture
def record(host, release_dir):
    """Return the parsed release.json of the release."""
    return json.loads(host.file(str(release_dir / "release.json")).content_string)


def wheel_names(host, release_dir):
    return host.file(str(release_dir / "wheelhouse")).listdir()


def test_release_is_named_after_version_and_wheel_checksum(release_dir, record):
    """Ensure the release name is <version>-<first 12 hex of the wheel's SHA-256>."""
    assert re.fullmatch(r"\d+\.\d+\.\d+-[0-9a-f]{12}", record["release"])
    assert record["release"] == f"{record['version']}-{record['wheel_sha256'][:12]}"
    assert release_dir.name == record["release"]


def test_wheelhouse_holds_the_app_wheel_it_records(host, release_dir, record):
    """Verify the app's wheel is in the wheelhouse with the checksum recorded."""
    wheel = host.file(str(release_dir / "wheelhouse" / record["wheel"]))
    assert wheel.is_file
    assert record["wheel"].startswith(f"reading_history-{record['version']}-")
    assert wheel.sha256sum == record["wheel_sha256"]


@pytest.mark.parametrize("dependency", ["fastapi", "uvicorn", "psycopg"])
def test_wheelhouse_holds_the_dependencies(host, release_dir, dependency):
    """Ensure the app hosts find a wheel of each main dependency offline."""
    pattern = re.compile(rf"{dependency}-\d[^-]*-.+\.whl")
    assert any(pattern.fullmatch(name) for name in wheel_names(host, release_dir))


def test_wheelhouse_archive_packs_the_same_wheels(host, release_dir):
    """Verify the archive shipped to the hosts holds exactly the wheelhouse's wheels."""
    with tarfile.open(release_dir / "wheelhouse.tar") as archive:
        packed = sorted(archive.getnames())
    assert packed == sorted(wheel_names(host, release_dir))


@pytest.mark.parametrize("name", FIRST_MIGRATIONS)
def test_migrations_are_those_of_the_source(host, release_dir, name):
    """Ensure the up files taken from the wheel are the source's, byte for byte."""
    extracted = host.file(str(release_dir / "migrations" / name))
    original = host.file(str(SOURCE / "src" / "reading_history" / "migrations" / name))
    assert extracted.is_file
    assert extracted.sha256sum == original.sha256sum


def test_second_build_of_the_same_source_changes_nothing(release_dir, record):
    """Verify building the same source again names the same release and writes nothing."""
    before = (release_dir / "release.json").stat().st_mtime_ns
    rebuilt = subprocess.run(
        [sys.executable, str(BUILD_TOOL), "--source", str(SOURCE), "--dest", str(RELEASES)],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    result = json.loads(rebuilt.stdout)
    assert result["changed"] is False
    assert result["release"] == record["release"]
    assert (release_dir / "release.json").stat().st_mtime_ns == before
