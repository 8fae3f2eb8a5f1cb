"""Unit tests of pg_backup_retention on folders of planted backups and manifests.

The file names and modification times of the planted backups are made to disagree
with the times in their manifests, so a retention that looked at them would fail.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pg_backup_retention
import pytest
from module_harness import ModuleFail, run_module

NOW = datetime.datetime.now(datetime.UTC)


def plant(
    folder: Path,
    stem: str,
    days_ago: float,
    verified: bool = True,
    database: str = "reading_history",
    directory: bool = False,
) -> Path:
    """Write a backup whose manifest says it started `days_ago` days ago."""
    started = NOW - datetime.timedelta(days=days_ago)
    suffix = ".dir" if directory else ".dump"
    archive = folder / f"{stem}{suffix}"
    if directory:
        archive.mkdir()
        (archive / "toc.dat").write_bytes(b"toc")
    else:
        archive.write_bytes(b"PGDMP")
    manifest = folder / f"{stem}.manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "file": archive.name,
                "format": "directory" if directory else "custom",
                "sha256": "0" * 64,
                "size": 5,
                "database": database,
                "started_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "finished_at": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "tables": {},
                "verified": verified,
            }
        )
    )
    # Modification times that say the opposite of the manifests.
    moment = (NOW + datetime.timedelta(days=days_ago)).timestamp()
    os.utime(archive, (moment, moment))
    os.utime(manifest, (moment, moment))
    return archive


def prune(folder: Path, check_mode: bool = False, **options) -> dict:
    args = {"backup_dir": str(folder), "database": "reading_history", **options}
    return run_module(pg_backup_retention, args, check_mode=check_mode)


def names(items: list[dict]) -> list[str]:
    return [item["name"] for item in items]


def left(folder: Path) -> set[str]:
    return {name.split(".")[0] for name in os.listdir(folder)}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Five backups; the names sort in the reverse order of their manifests' times."""
    plant(tmp_path, "e_oldest", days_ago=40)
    plant(tmp_path, "d_old", days_ago=30)
    plant(tmp_path, "c_unverified", days_ago=20, verified=False)
    plant(tmp_path, "b_week", days_ago=7)
    plant(tmp_path, "a_newest", days_ago=1)
    return tmp_path


class TestRetention:
    def test_keeps_the_newest_verified_by_manifest_time(self, folder: Path) -> None:
        """Ensure keep_last counts verified backups, newest first by manifest time."""
        result = prune(folder, keep_last=3, keep_days=0)

        assert names(result["kept"]) == ["a_newest", "b_week", "d_old"]
        assert names(result["removed"]) == ["c_unverified", "e_oldest"]
        assert left(folder) == {"a_newest", "b_week", "d_old"}
        assert result["changed"] is True
        assert result["newest_verified"] == "a_newest"

    def test_keeps_whatever_is_younger_than_keep_days(self, folder: Path) -> None:
        """Verify a backup younger than keep_days stays, even unverified."""
        result = prune(folder, keep_last=1, keep_days=25)

        assert names(result["kept"]) == ["a_newest", "b_week", "c_unverified"]
        assert result["kept"][2]["reason"] == "younger than 25 days"
        assert left(folder) == {"a_newest", "b_week", "c_unverified"}

    def test_never_removes_the_newest_verified_backup(self, tmp_path: Path) -> None:
        """Ensure the newest verified backup survives even keep_last=0 and keep_days=0."""
        plant(tmp_path, "old_verified", days_ago=50)
        plant(tmp_path, "new_unverified", days_ago=40, verified=False)

        result = prune(tmp_path, keep_last=0, keep_days=0)

        assert names(result["kept"]) == ["old_verified"]
        assert result["kept"][0]["reason"] == "newest verified backup"
        assert names(result["removed"]) == ["new_unverified"]

    def test_a_manifest_without_its_archive_is_not_verified(
        self, tmp_path: Path
    ) -> None:
        """Verify a backup whose archive is gone cannot be the one kept as newest."""
        plant(tmp_path, "older", days_ago=50)
        (plant(tmp_path, "newer", days_ago=45)).unlink()

        result = prune(tmp_path, keep_last=1, keep_days=0)

        assert result["newest_verified"] == "older"
        assert names(result["removed"]) == ["newer"]
        assert left(tmp_path) == {"older"}

    def test_directory_archive_is_removed_whole(self, tmp_path: Path) -> None:
        """Ensure a directory backup goes with all its files."""
        plant(tmp_path, "dir_old", days_ago=50, directory=True)
        plant(tmp_path, "dir_new", days_ago=1, directory=True)

        prune(tmp_path, keep_last=1, keep_days=0)

        assert sorted(os.listdir(tmp_path)) == ["dir_new.dir", "dir_new.manifest.json"]

    def test_check_mode_lists_and_removes_nothing(self, folder: Path) -> None:
        """Verify check mode reports what would go and leaves every file in place."""
        before = sorted(os.listdir(folder))

        result = prune(folder, check_mode=True, keep_last=1, keep_days=0)

        assert names(result["removed"]) == [
            "b_week",
            "c_unverified",
            "d_old",
            "e_oldest",
        ]
        assert result["changed"] is True
        assert "would remove 4" in result["msg"]
        assert sorted(os.listdir(folder)) == before

    def test_nothing_to_remove_is_no_change(self, folder: Path) -> None:
        """Ensure a retention that keeps everything reports no change."""
        result = prune(folder, keep_last=10, keep_days=100)

        assert result["changed"] is False and result["removed"] == []

    def test_other_databases_and_unreadable_manifests_are_left_alone(
        self, tmp_path: Path
    ) -> None:
        """Verify only this database's readable backups are ever removed."""
        plant(tmp_path, "other_db", days_ago=90, database="accounts")
        plant(tmp_path, "ours_new", days_ago=1)
        (tmp_path / "broken.manifest.json").write_text("{")
        (tmp_path / "broken.dump").write_bytes(b"PGDMP")
        (tmp_path / "orphan.dump").write_bytes(b"PGDMP")
        escaping = plant(tmp_path, "escaping", days_ago=90)
        manifest = tmp_path / "escaping.manifest.json"
        manifest.write_text(
            manifest.read_text().replace('"escaping.dump"', '"../outside.dump"')
        )
        outside = tmp_path.parent / "outside.dump"
        outside.write_bytes(b"keep me")

        result = prune(tmp_path, keep_last=1, keep_days=0)

        assert result["removed"] == []
        assert {item["name"] for item in result["ignored"]} == {
            "broken.manifest.json",
            "escaping.manifest.json",
        }
        assert outside.read_bytes() == b"keep me"
        assert escaping.exists()
        assert left(tmp_path) == {
            "other_db",
            "ours_new",
            "broken",
            "orphan",
            "escaping",
        }


class TestArguments:
    def test_negative_counts_are_refused(self, tmp_path: Path) -> None:
        """Ensure keep_last and keep_days below zero fail."""
        with pytest.raises(ModuleFail, match="must be 0 or more"):
            prune(tmp_path, keep_last=-1)

    def test_missing_folder_is_named(self, tmp_path: Path) -> None:
        """Verify a backup folder that does not exist is named in the failure."""
        with pytest.raises(ModuleFail, match="nowhere' does not exist"):
            prune(tmp_path / "nowhere")
