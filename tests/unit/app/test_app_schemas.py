"""Tests for what the API accepts, and for the privacy decision on a read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from reading_history.crud import reason_not_to_record
from reading_history.schemas import (
    EXPORT_COLUMNS,
    HistoryEntryCreate,
    NotRecordedReason,
    PreferencesPublic,
    PreferencesReplace,
    PreferencesUpdate,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def error_fields(error: ValidationError) -> set[str]:
    return {str(detail["loc"][0]) for detail in error.errors()}


def test_read_at_is_stored_in_utc() -> None:
    """Verify an instant sent with an offset is kept as the same instant in UTC."""
    tokyo = timezone(timedelta(hours=9))

    entry = HistoryEntryCreate(
        article_id=1, feed_id=2, read_at=datetime(2024, 5, 1, 21, 0, tzinfo=tokyo)
    )

    assert entry.read_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert entry.read_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("article_id", 0),
        ("article_id", 2**63),
        ("feed_id", -1),
        ("category", ""),
        ("category", "   "),
        ("category", "x" * 65),
        ("category", "nul\x00byte"),
        ("category", "lone \ud800 surrogate"),
        ("read_at", "2024-05-01T12:00:00"),
        ("read_at", "9999-12-31T23:00:00-05:00"),
        ("duration_seconds", -1),
        ("duration_seconds", 2**31),
        ("scroll_depth", 101),
        ("scroll_depth", 50.5),
        ("notes", "not a field"),
    ],
)
def test_bad_read_is_refused_by_field(field: str, value: object) -> None:
    """Ensure each out-of-range value is refused before it can reach a column."""
    payload = {"article_id": 1, "feed_id": 2, field: value}

    with pytest.raises(ValidationError) as caught:
        HistoryEntryCreate.model_validate(payload)

    assert error_fields(caught.value) == {field}


def test_excluded_categories_drop_case_duplicates_keeping_the_first() -> None:
    """Verify categories that match each other are stored once, as first written."""
    preferences = PreferencesReplace(excluded_categories=["Sport", "sport", "News"])

    assert preferences.excluded_categories == ["Sport", "News"]


@pytest.mark.parametrize(
    "payload",
    [
        {"retention_days": 0},
        {"retention_days": -3},
        {"retention_days": 36501},
        {"default_export_format": "xml"},
        {"excluded_categories": [""]},
        {"excluded_categories": ["x" * 65]},
        {"excluded_categories": [f"c{n}" for n in range(101)]},
        {"excluded_categories": "sport"},
        {"tracking_enabled": "yes"},
        {"tracking_enabled": 1},
        {"colour": "blue"},
    ],
)
def test_bad_preferences_are_refused(payload: dict[str, object]) -> None:
    """Ensure invalid privacy choices are refused whether replaced or patched."""
    with pytest.raises(ValidationError):
        PreferencesReplace.model_validate(payload)
    with pytest.raises(ValidationError):
        PreferencesUpdate.model_validate(payload)


@pytest.mark.parametrize(
    "field", ["tracking_enabled", "excluded_categories", "default_export_format"]
)
def test_patch_refuses_null_where_null_means_nothing(field: str) -> None:
    """Ensure null cannot blank a preference that has no 'unset' meaning."""
    with pytest.raises(ValidationError) as caught:
        PreferencesUpdate.model_validate({field: None})

    assert error_fields(caught.value) == {field}


def test_patch_accepts_null_retention_as_keep_everything() -> None:
    """Verify null retention is a real change: it is kept among the set fields."""
    changes = PreferencesUpdate.model_validate({"retention_days": None})

    assert changes.model_dump(exclude_unset=True) == {"retention_days": None}


def test_defaults_are_tracking_on_forever_json() -> None:
    """Verify a user who chose nothing is tracked, keeps all, exports JSON."""
    defaults = PreferencesPublic.defaults(7)

    assert defaults.model_dump() == {
        "user_id": 7,
        "tracking_enabled": True,
        "retention_days": None,
        "excluded_categories": [],
        "default_export_format": "json",
        "updated_at": None,
    }


def test_export_columns_are_stable() -> None:
    """Ensure the export's column order, which users' scripts rely on, stays put."""
    assert EXPORT_COLUMNS == (
        "entry_id",
        "article_id",
        "feed_id",
        "category",
        "read_at",
        "duration_seconds",
        "scroll_depth",
    )


def choices(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "tracking_enabled": True,
        "retention_days": None,
        "excluded_categories": [],
        "now": NOW,
    }
    return base | overrides


@pytest.mark.parametrize(
    ("user_choices", "category", "read_at", "reason"),
    [
        (choices(), "Sport", NOW, None),
        (choices(), None, NOW - timedelta(days=3650), None),
        (choices(tracking_enabled=False), None, NOW, "tracking_disabled"),
        (choices(excluded_categories=["Sport"]), "sPORT", NOW, "category_excluded"),
        (choices(excluded_categories=["Sport"]), "Sports", NOW, None),
        (choices(excluded_categories=["Sport"]), None, NOW, None),
        (
            choices(retention_days=30),
            None,
            NOW - timedelta(days=30, seconds=1),
            "older_than_retention",
        ),
        (choices(retention_days=30), None, NOW - timedelta(days=29), None),
        (
            choices(tracking_enabled=False, excluded_categories=["Sport"]),
            "Sport",
            NOW,
            "tracking_disabled",
        ),
    ],
)
def test_privacy_choices_decide_whether_a_read_is_recorded(
    user_choices: dict[str, object],
    category: str | None,
    read_at: datetime,
    reason: str | None,
) -> None:
    """Verify tracking, excluded categories and retention each stop a read."""
    decided = reason_not_to_record(
        choices=user_choices, category=category, read_at=read_at
    )

    assert decided == (NotRecordedReason(reason) if reason else None)
