"""Unit tests of pg_schema and the schema descriptions it compares; no database."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pg_schema
import pytest
import yaml
from ansible.module_utils.schema_snapshot import (
    FORMAT,
    check_description,
    compare_schema,
    compatible,
)
from module_harness import ModuleFail, run_module
from test_documentation import argument_spec_of, documented_options


def column(kind: str = "bigint", nullable: bool = False, default=None) -> dict:
    return {
        "type": kind,
        "nullable": nullable,
        "default": default,
        "identity": None,
        "generated": None,
    }


TABLES = {
    "feeds": {
        "columns": {"id": column(), "url": column("text", True)},
        "constraints": {
            "feeds_pkey": {"type": "primary key", "definition": "PRIMARY KEY (id)"}
        },
        "indexes": {
            "feeds_pkey": {
                "definition": "CREATE UNIQUE INDEX feeds_pkey ON public.feeds USING btree (id)",
                "valid": True,
            },
            "feeds_url_idx": {
                "definition": "CREATE INDEX feeds_url_idx ON public.feeds USING btree (url)",
                "valid": True,
            },
        },
    }
}


def live() -> dict:
    return copy.deepcopy(TABLES)


def kinds(differences: list[dict]) -> list[tuple[str, str, str | None]]:
    return [(d["kind"], d["table"], d["name"]) for d in differences]


class TestCompare:
    def test_identical_schemas_have_no_difference(self) -> None:
        """Ensure a schema compared with itself is a match."""
        assert compare_schema(TABLES, live()) == []

    def test_type_nullability_and_default_are_each_compared(self) -> None:
        """Verify each column property that differs is its own difference."""
        found = live()
        found["feeds"]["columns"]["id"] = column("integer", True, "0")

        differences = compare_schema(TABLES, found)

        assert kinds(differences) == [
            ("column_type", "feeds", "id"),
            ("column_nullable", "feeds", "id"),
            ("column_default", "feeds", "id"),
        ]
        assert (
            differences[0]["message"] == "column feeds.id is integer, expected bigint"
        )
        assert differences[1]["message"] == (
            "column feeds.id is nullable, expected NOT NULL"
        )
        assert (differences[0]["expected"], differences[0]["found"]) == (
            "bigint",
            "integer",
        )

    def test_missing_and_extra_things_are_named(self) -> None:
        """Ensure what is missing and what is extra are told apart at every level."""
        found = live()
        del found["feeds"]["columns"]["url"]
        del found["feeds"]["indexes"]["feeds_url_idx"]
        found["feeds"]["constraints"]["feeds_url_check"] = {
            "type": "check",
            "definition": "CHECK ((url <> ''::text))",
        }
        found["sources"] = {"columns": {}, "constraints": {}, "indexes": {}}
        expected = copy.deepcopy(TABLES)
        expected["users"] = {"columns": {}, "constraints": {}, "indexes": {}}

        assert kinds(compare_schema(expected, found)) == [
            ("missing_column", "feeds", "url"),
            ("extra_constraint", "feeds", "feeds_url_check"),
            ("missing_index", "feeds", "feeds_url_idx"),
            ("extra_table", "sources", None),
            ("missing_table", "users", None),
        ]

    def test_invalid_index_is_a_difference_even_when_defined_alike(self) -> None:
        """Verify an index left INVALID by an interrupted build is reported as such."""
        found = live()
        found["feeds"]["indexes"]["feeds_url_idx"]["valid"] = False

        [difference] = compare_schema(TABLES, found)

        assert (difference["kind"], difference["name"]) == (
            "invalid_index",
            "feeds_url_idx",
        )
        assert "INVALID" in difference["message"]

    def test_changed_definitions_are_reported(self) -> None:
        """Ensure a constraint or index defined otherwise under the same name is found."""
        found = live()
        found["feeds"]["indexes"]["feeds_url_idx"]["definition"] = (
            "CREATE INDEX feeds_url_idx ON public.feeds USING hash (url)"
        )
        found["feeds"]["constraints"]["feeds_pkey"]["definition"] = "PRIMARY KEY (url)"

        assert kinds(compare_schema(TABLES, found)) == [
            ("constraint_definition", "feeds", "feeds_pkey"),
            ("index_definition", "feeds", "feeds_url_idx"),
        ]


class TestCompatible:
    def test_additions_the_app_would_not_notice_are_compatible(self) -> None:
        """Verify extra tables, indexes and nullable columns keep old code working."""
        found = live()
        found["feeds"]["columns"]["title"] = column("text", True)
        found["feeds"]["columns"]["rank"] = column("integer", False, "0")
        found["feeds"]["indexes"]["feeds_title_idx"] = {
            "definition": "x",
            "valid": True,
        }
        found["sources"] = {"columns": {}, "constraints": {}, "indexes": {}}

        assert compatible(compare_schema(TABLES, found))

    def test_not_null_column_without_default_is_not(self) -> None:
        """Ensure a column the app's inserts cannot fill makes the schema incompatible."""
        found = live()
        found["feeds"]["columns"]["owner"] = column("bigint", False)

        assert not compatible(compare_schema(TABLES, found))

    def test_anything_missing_or_changed_is_not(self) -> None:
        """Verify a missing column is never compatible."""
        found = live()
        del found["feeds"]["columns"]["url"]

        assert not compatible(compare_schema(TABLES, found))


class TestDescriptionFile:
    def valid(self) -> dict:
        return {"format": FORMAT, "schema": "public", "version": 4, "tables": TABLES}

    def test_a_snapshot_is_accepted(self) -> None:
        """Ensure a description as the tool writes it passes the checks."""
        assert check_description(self.valid()) == []

    @pytest.mark.parametrize(
        ("change", "problem"),
        [
            ({"format": 2}, "its format is 2"),
            ({"version": "4"}, "its version is not a number"),
            ({"version": True}, "its version is not a number"),
            ({"schema": ""}, "it names no schema"),
            ({"tables": []}, "it has no tables object"),
            ({"tables": {"t": {"columns": {}}}}, "table t lacks"),
        ],
    )
    def test_unusable_descriptions_are_named(self, change: dict, problem: str) -> None:
        """Verify each defect of a description is said plainly."""
        problems = check_description({**self.valid(), **change})

        assert any(problem in text for text in problems), problems

    @pytest.fixture
    def no_connection(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def refuse(*args, **kwargs):
            raise AssertionError("the module connected before reading its file")

        monkeypatch.setattr(pg_schema, "connect", refuse)

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            (None, "cannot read it"),
            ("{not json", "it is not JSON"),
            (json.dumps({"format": 9}), "its format is 9"),
        ],
    )
    def test_module_fails_on_a_bad_file_before_connecting(
        self, tmp_path: Path, no_connection: None, content: str | None, message: str
    ) -> None:
        """Ensure the file is judged first, and its path and problem named."""
        path = tmp_path / "expected_schema.json"
        if content is not None:
            path.write_text(content)

        with pytest.raises(ModuleFail) as failed:
            run_module(pg_schema, {"database": "rh", "expected": str(path)})

        assert str(path) in failed.value.result["msg"]
        assert message in failed.value.result["msg"]

    def test_bad_statement_timeout_is_refused(
        self, tmp_path: Path, no_connection
    ) -> None:
        """Verify statement_timeout must be a duration."""
        with pytest.raises(ModuleFail, match="statement_timeout 'soon'"):
            run_module(
                pg_schema,
                {
                    "database": "rh",
                    "expected": str(tmp_path),
                    "statement_timeout": "soon",
                },
            )


def test_failure_message_lists_the_first_differences_and_counts_the_rest() -> None:
    """Ensure a long list is cut in the message but complete in the result."""
    differences = [
        {"kind": "missing_table", "message": f"table t{number} is missing"}
        for number in range(13)
    ]
    result = {"differences": differences, "expected_version": 4, "database_version": 4}

    message = pg_schema.failure_message("rh", result)

    assert "13 differences" in message
    assert "table t9 is missing" in message and "table t10" not in message
    assert message.endswith("; and 3 more")


def test_documentation_matches_the_argument_spec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ensure each option's documented type, default and choices are the real ones."""
    spec = argument_spec_of(pg_schema, monkeypatch)
    documented = documented_options(pg_schema)

    assert sorted(documented) == sorted(spec)
    for name, option in spec.items():
        for key in ("type", "default", "choices", "elements"):
            assert documented[name].get(key) == option.get(key), (name, key)
        assert bool(documented[name].get("required")) == bool(option.get("required"))


def test_every_return_value_and_example_is_complete() -> None:
    """Verify RETURN entries are fully described and examples are named module calls."""
    for key, value in yaml.safe_load(pg_schema.RETURN).items():
        assert {"description", "returned", "type", "sample"} <= set(value), key
    tasks = yaml.safe_load(pg_schema.EXAMPLES)
    assert all(task.get("name") for task in tasks)
    assert any("register" in task for task in tasks if "pg_schema" in task)
