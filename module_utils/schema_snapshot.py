# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Describe a database schema as plain data, and list how two descriptions differ.

tools/schema-snapshot writes the description of the schema a release's migrations make
(the expected schema); the pg_schema module reads the live one the same way and
compares. A description is JSON-ready and ordered, so the same schema always gives the
same bytes:

    {"format": 1, "schema": "public", "version": 4,
     "tables": {"<table>": {
        "columns": {"<name>": {"type", "nullable", "default", "identity", "generated"}},
        "constraints": {"<name>": {"type", "definition"}},
        "indexes": {"<name>": {"definition", "valid"}}}}}

The automation's history tables are left out: their shape belongs to pg_migrate, not
to the app.
"""

from __future__ import annotations

from typing import Any

from ansible.module_utils.schema_history import HISTORY_TABLES

FORMAT = 1

CONSTRAINT_TYPES = {
    "c": "check",
    "f": "foreign key",
    "p": "primary key",
    "u": "unique",
    "t": "trigger",
    "x": "exclusion",
}
IDENTITY = {"a": "always", "d": "by default"}
GENERATED = {"s": "stored"}

# Kinds of difference that only add to what the expected schema describes.
EXTRA_KINDS = {"extra_table", "extra_column", "extra_constraint", "extra_index"}

# Every query reads the ordinary and partitioned tables of one schema, minus the
# automation's own; %(schema)s and %(skip)s are bound, never spliced in.
FROM_TABLES = " FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace"
IN_SCOPE = " n.nspname = %(schema)s AND t.relkind IN ('r', 'p') AND NOT (t.relname = ANY(%(skip)s))"


class SchemaFileError(Exception):
    """An expected-schema description that cannot be used."""


def read_schema(conn: Any, schema: str = "public") -> dict[str, dict[str, Any]]:
    """Return the tables of schema, each with its columns, constraints and indexes."""
    bound = {"schema": schema, "skip": list(HISTORY_TABLES)}
    names = conn.execute(f"SELECT t.relname{FROM_TABLES} WHERE{IN_SCOPE}", bound)
    tables: dict[str, dict[str, Any]] = {
        name: {"columns": {}, "constraints": {}, "indexes": {}} for (name,) in names
    }

    columns = conn.execute(
        "SELECT t.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,"
        " pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated"
        f"{FROM_TABLES} JOIN pg_attribute a ON a.attrelid = t.oid"
        " LEFT JOIN pg_attrdef d ON d.adrelid = t.oid AND d.adnum = a.attnum"
        f" WHERE{IN_SCOPE} AND a.attnum > 0 AND NOT a.attisdropped",
        bound,
    )
    for table, name, kind, not_null, default, identity, generated in columns:
        tables[table]["columns"][name] = {
            "type": kind,
            "nullable": not not_null,
            # A generated column keeps its expression where a default would be.
            "default": None if generated else default,
            "identity": IDENTITY.get(identity),
            "generated": default if generated else None,
        }

    constraints = conn.execute(
        "SELECT t.relname, c.conname, c.contype, pg_get_constraintdef(c.oid)"
        f"{FROM_TABLES} JOIN pg_constraint c ON c.conrelid = t.oid WHERE{IN_SCOPE}",
        bound,
    )
    for table, name, kind, definition in constraints:
        tables[table]["constraints"][name] = {
            "type": CONSTRAINT_TYPES.get(kind, kind),
            "definition": definition,
        }

    indexes = conn.execute(
        "SELECT t.relname, i.relname, pg_get_indexdef(x.indexrelid), x.indisvalid"
        f"{FROM_TABLES} JOIN pg_index x ON x.indrelid = t.oid"
        f" JOIN pg_class i ON i.oid = x.indexrelid WHERE{IN_SCOPE}",
        bound,
    )
    for table, name, definition, valid in indexes:
        tables[table]["indexes"][name] = {"definition": definition, "valid": valid}
    return sort_tables(tables)


def sort_tables(tables: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Order tables and their parts by name, so equal schemas give equal data."""
    return {
        table: {part: dict(sorted(items.items())) for part, items in sorted(parts.items())}
        for table, parts in sorted(tables.items())
    }


def describe(conn: Any, version: int | None, schema: str = "public") -> dict[str, Any]:
    """The whole description: format, schema, version and tables."""
    return {
        "format": FORMAT,
        "schema": schema,
        "version": version,
        "tables": read_schema(conn, schema),
    }


def check_description(data: Any) -> list[str]:
    """Name what makes data unusable as an expected schema; [] when it is fine."""
    if not isinstance(data, dict):
        return ["it is not a JSON object"]
    problems = []
    if data.get("format") != FORMAT:
        problems.append(f"its format is {data.get('format')!r}, this module reads {FORMAT}")
    if not isinstance(data.get("schema"), str) or not data.get("schema"):
        problems.append("it names no schema")
    if not isinstance(data.get("version"), int) or isinstance(data.get("version"), bool):
        problems.append("its version is not a number")
    tables = data.get("tables")
    if not isinstance(tables, dict):
        problems.append("it has no tables object")
        return problems
    for name, table in sorted(tables.items()):
        if not isinstance(table, dict) or not all(
            isinstance(table.get(part), dict) for part in ("columns", "constraints", "indexes")
        ):
            problems.append(f"table {name} lacks columns, constraints or indexes")
    return problems


def difference(
    kind: str, table: str, name: str | None, expected: Any, found: Any, message: str
) -> dict[str, Any]:
    return {
        "kind": kind,
        "table": table,
        "name": name,
        "expected": expected,
        "found": found,
        "message": message,
    }


def compare_columns(table: str, expected: dict, found: dict) -> list[dict[str, Any]]:
    out = []
    for name in sorted(expected.keys() | found.keys()):
        want, have = expected.get(name), found.get(name)
        where = f"column {table}.{name}"
        if have is None:
            out.append(difference("missing_column", table, name, want, None, f"{where} is missing"))
        elif want is None:
            out.append(
                difference("extra_column", table, name, None, have, f"{where} is not expected")
            )
        else:
            if want["type"] != have["type"]:
                out.append(
                    difference(
                        "column_type",
                        table,
                        name,
                        want["type"],
                        have["type"],
                        f"{where} is {have['type']}, expected {want['type']}",
                    )
                )
            if want["nullable"] != have["nullable"]:
                found_as, wanted_as = (
                    ("nullable", "NOT NULL") if have["nullable"] else ("NOT NULL", "nullable")
                )
                out.append(
                    difference(
                        "column_nullable",
                        table,
                        name,
                        want["nullable"],
                        have["nullable"],
                        f"{where} is {found_as}, expected {wanted_as}",
                    )
                )
            for part in ("default", "identity", "generated"):
                if want.get(part) != have.get(part):
                    out.append(
                        difference(
                            f"column_{part}",
                            table,
                            name,
                            want.get(part),
                            have.get(part),
                            f"{where} has {part} {have.get(part)!r}, expected {want.get(part)!r}",
                        )
                    )
    return out


def compare_named(
    table: str, what: str, expected: dict, found: dict, same: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Compare constraints or indexes by name; same lists the fields that must agree."""
    out = []
    for name in sorted(expected.keys() | found.keys()):
        want, have = expected.get(name), found.get(name)
        where = f"{what} {name} on {table}"
        if have is None:
            out.append(
                difference(f"missing_{what}", table, name, want, None, f"{where} is missing")
            )
        elif want is None:
            out.append(
                difference(f"extra_{what}", table, name, None, have, f"{where} is not expected")
            )
        elif any(want.get(part) != have.get(part) for part in same):
            out.append(
                difference(
                    f"{what}_definition",
                    table,
                    name,
                    want,
                    have,
                    f"{where} is defined as {have.get('definition')!r}, "
                    f"expected {want.get('definition')!r}",
                )
            )
    return out


def invalid_indexes(table: str, found: dict) -> list[dict[str, Any]]:
    # An interrupted CREATE INDEX CONCURRENTLY leaves its index behind, not valid.
    return [
        difference(
            "invalid_index",
            table,
            name,
            True,
            False,
            f"index {name} on {table} is INVALID (an interrupted concurrent build); "
            "drop it and build it again",
        )
        for name, index in sorted(found.items())
        if not index.get("valid", True)
    ]


def compare_schema(expected: dict[str, Any], found: dict[str, Any]) -> list[dict[str, Any]]:
    """Every difference between two table maps, in a stable order."""
    out = []
    for table in sorted(expected.keys() | found.keys()):
        want, have = expected.get(table), found.get(table)
        if have is None:
            out.append(
                difference("missing_table", table, None, True, None, f"table {table} is missing")
            )
            continue
        if want is None:
            out.append(
                difference("extra_table", table, None, None, True, f"table {table} is not expected")
            )
            out.extend(invalid_indexes(table, have["indexes"]))
            continue
        out.extend(compare_columns(table, want["columns"], have["columns"]))
        out.extend(
            compare_named(
                table,
                "constraint",
                want["constraints"],
                have["constraints"],
                ("type", "definition"),
            )
        )
        # A valid and an invalid index of the same definition are told by invalid_index.
        out.extend(compare_named(table, "index", want["indexes"], have["indexes"], ("definition",)))
        out.extend(invalid_indexes(table, have["indexes"]))
    return out


def breaks_old_writes(item: dict[str, Any]) -> bool:
    """An extra column the app does not know of, that its inserts cannot leave out."""
    column = item["found"] or {}
    return (
        item["kind"] == "extra_column"
        and not column.get("nullable", True)
        and column.get("default") is None
        and column.get("identity") is None
        and column.get("generated") is None
    )


def compatible(differences: list[dict[str, Any]]) -> bool:
    """True when all that is expected is there as expected, extras aside.

    An extra column that is NOT NULL without a default counts against it, since the
    app's inserts would fail; extra constraints are not judged.
    """
    return all(item["kind"] in EXTRA_KINDS and not breaks_old_writes(item) for item in differences)
