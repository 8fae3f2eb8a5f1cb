"""Unit tests of the archive helpers: checksums, manifests, TOC headers, names."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from ansible.module_utils.pg_archive import (
    ManifestError,
    checksum_problems,
    count_problems,
    digest_of,
    directory_listing,
    parse_toc_header,
    qualified,
    read_manifest,
    table_key,
)
from ansible.module_utils.pg_dump_tools import (
    restore_argv,
    setting_values,
    timestamped_name,
)

HEADER = """\
;
; Archive created at 2025-01-02 03:04:05 UTC
;     dbname: reading_history
;     TOC Entries: 23
;     Compression: -1
;     Dump Version: 1.14-0
;     Format: CUSTOM
;     Dumped from database version: 15.8 (Debian 15.8-0+deb12u1)
;     Dumped by pg_dump version: 15.8 (Debian 15.8-0+deb12u1)
;
;
; Selected TOC Entries:
;
216; 1259 16386 TABLE public feeds postgres
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def directory_archive(tmp_path: Path) -> Path:
    folder = tmp_path / "db_20250102T030405Z.dir"
    folder.mkdir()
    (folder / "toc.dat").write_bytes(b"toc")
    (folder / "3362.dat.gz").write_bytes(b"feeds")
    (folder / "10.dat.gz").write_bytes(b"events")
    return folder


class TestDirectoryChecksum:
    def test_listing_is_sha256sum_lines_in_byte_order_of_names(self) -> None:
        """Ensure the hashed text is sha256sum's output, names sorted bytewise."""
        files = {
            "toc.dat": {"sha256": "c" * 64},
            "3362.dat.gz": {"sha256": "a" * 64},
            "10.dat.gz": {"sha256": "b" * 64},
        }

        assert directory_listing(files) == (
            f"{'b' * 64}  10.dat.gz\n{'a' * 64}  3362.dat.gz\n{'c' * 64}  toc.dat\n"
        )

    def test_digest_of_a_directory_archive(self, directory_archive: Path) -> None:
        """Verify the checksum, size and per-file entries of a directory archive."""
        digest = digest_of(str(directory_archive), "directory")

        listing = f"{sha(b'events')}  10.dat.gz\n{sha(b'feeds')}  3362.dat.gz\n{sha(b'toc')}  toc.dat\n"
        assert digest.sha256 == sha(listing.encode())
        assert digest.size == len(b"tocfeedsevents")
        assert digest.files["toc.dat"] == {"size": 3, "sha256": sha(b"toc")}

    def test_a_subfolder_makes_the_archive_unreadable(
        self, directory_archive: Path
    ) -> None:
        """Ensure a directory archive holding anything but files is rejected."""
        (directory_archive / "stray").mkdir()

        with pytest.raises(OSError, match="not a regular file"):
            digest_of(str(directory_archive), "directory")

    def test_problems_name_missing_extra_and_changed_files(
        self, directory_archive: Path
    ) -> None:
        """Verify each kind of difference from the manifest is named with its file."""
        digest = digest_of(str(directory_archive), "directory")
        manifest = {
            "sha256": digest.sha256,
            "size": digest.size,
            "files": dict(digest.files),
        }
        assert checksum_problems(str(directory_archive), "directory", manifest) == []

        (directory_archive / "3362.dat.gz").write_bytes(b"feedz")
        (directory_archive / "10.dat.gz").unlink()
        (directory_archive / "99.dat.gz").write_bytes(b"new")
        problems = checksum_problems(str(directory_archive), "directory", manifest)

        assert "file 10.dat.gz is missing" in problems
        assert "file 99.dat.gz is not in the manifest" in problems
        assert "file 3362.dat.gz differs from the manifest" in problems
        assert any(problem.startswith("SHA-256 of") for problem in problems)

    def test_custom_archive_with_the_same_bytes_passes(self, tmp_path: Path) -> None:
        """Ensure a custom archive is checked by the SHA-256 of its one file."""
        dump = tmp_path / "d.dump"
        dump.write_bytes(b"PGDMP")
        manifest = {"sha256": sha(b"PGDMP"), "size": 5}

        assert checksum_problems(str(dump), "custom", manifest) == []
        dump.write_bytes(b"PGDMQ")
        assert checksum_problems(str(dump), "custom", manifest)[0].startswith("SHA-256")


def write_manifest(folder: Path, stem: str, **fields) -> Path:
    manifest = {
        "file": f"{stem}.dump",
        "sha256": "0" * 64,
        "size": 1,
        "database": "reading_history",
        "started_at": "2025-01-02T03:04:05Z",
        "tables": {},
        "verified": True,
        **fields,
    }
    path = folder / f"{stem}.manifest.json"
    path.write_text(json.dumps(manifest))
    return path


class TestManifests:
    def test_old_manifest_without_format_is_a_custom_archive(
        self, tmp_path: Path
    ) -> None:
        """Verify manifests from before the directory format still read as custom."""
        manifest = read_manifest(str(write_manifest(tmp_path, "db_1")))

        assert manifest["format"] == "custom"

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"file": "../etc/passwd"}, "names archive '../etc/passwd'"),
            ({"file": "db_2.dump"}, "names archive 'db_2.dump'"),
            ({"format": "tar"}, "unknown format 'tar'"),
            ({"started_at": "yesterday"}, "no valid started_at"),
        ],
    )
    def test_manifest_that_points_elsewhere_is_refused(
        self, tmp_path: Path, fields: dict, message: str
    ) -> None:
        """Ensure a manifest may only name its own sibling archive, with a valid time."""
        path = write_manifest(tmp_path, "db_1", **fields)

        with pytest.raises(ManifestError, match=message):
            read_manifest(str(path))

    def test_missing_keys_and_bad_json_are_named(self, tmp_path: Path) -> None:
        """Verify a truncated manifest and one lacking keys fail with the reason."""
        broken = tmp_path / "db_3.manifest.json"
        broken.write_text('{"file": ')
        with pytest.raises(ManifestError, match="not valid JSON"):
            read_manifest(str(broken))

        broken.write_text('{"file": "db_3.dump"}')
        with pytest.raises(ManifestError, match="lacks sha256, size, database"):
            read_manifest(str(broken))


class TestNamesAndCounts:
    @pytest.mark.parametrize(
        ("schema", "name", "key"),
        [
            ("public", "feeds", "feeds"),
            ("audit", "events", "audit.events"),
            ("public", "odd.name", "public.odd.name"),
        ],
    )
    def test_table_keys_read_back_to_their_schema(
        self, schema: str, name: str, key: str
    ) -> None:
        """Ensure every manifest key splits back into the schema and table it names."""
        assert table_key(schema, name) == key
        assert qualified(key) == (schema, name)

    def test_count_problems_name_each_difference(self) -> None:
        """Verify missing, extra and miscounted tables are each reported."""
        problems = count_problems({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5, "d": 0})

        assert problems == [
            "table c is missing",
            "table d is not in the manifest",
            "table b has 5 rows, the manifest counted 2",
        ]

    def test_toc_header_gives_the_versions(self) -> None:
        """Ensure the archive and pg_dump versions are read from pg_restore --list."""
        header = parse_toc_header(HEADER)

        assert header["Dump Version"] == "1.14-0"
        assert header["Dumped by pg_dump version"].startswith("15.8")
        assert header["Format"] == "CUSTOM"

    def test_database_names_fit_postgresql_identifiers(self) -> None:
        """Verify names made for a long database stay within 63 bytes and keep the stamp."""
        name = timestamped_name("x" * 80, "before_restore", "20250102030405")

        assert len(name) == 63
        assert name.endswith("_before_restore_20250102030405")
        assert timestamped_name("my-db", "restore", "1") == "my_db_restore_1"

    def test_list_settings_are_split_into_their_values(self) -> None:
        """Ensure search_path is given back element by element, unquoted."""
        assert setting_values("search_path", '"$user", public, "a,b"') == [
            "$user",
            "public",
            "a,b",
        ]
        assert setting_values("statement_timeout", "5min") == ["5min"]


class TestRestoreArguments:
    def test_one_job_restores_in_one_transaction(self) -> None:
        """Verify a single-job restore is all or nothing and keeps owners."""
        argv = restore_argv("pg_restore", "/b/x.dump", "scratch")

        assert argv == [
            "pg_restore",
            "--dbname=scratch",
            "--exit-on-error",
            "--no-password",
            "--single-transaction",
            "/b/x.dump",
        ]

    def test_jobs_and_a_check_only_restore(self) -> None:
        """Ensure several jobs drop the single transaction and a check restore drops owners."""
        argv = restore_argv(
            "pg_restore", "/b/x.dir", "scratch", jobs=4, keep_owners=False
        )

        assert "--jobs=4" in argv and "--single-transaction" not in argv
        assert "--no-owner" in argv and "--no-privileges" in argv
