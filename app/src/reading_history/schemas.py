"""What the API accepts and returns."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
    field_validator,
)

# PostgreSQL's bigint and integer, so that no id or number overflows a column.
BIGINT_MAX = 2**63 - 1
# The largest id the API takes or gives: beyond it, clients that hold JSON
# numbers as doubles (JavaScript among them) silently change the id.
ID_MAX = 2**53 - 1
INTEGER_MAX = 2**31 - 1
CATEGORY_MAX_LENGTH = 64
EXCLUDED_CATEGORIES_MAX = 100
# A hundred years: longer would overflow date arithmetic and means "forever" anyway.
RETENTION_DAYS_MAX = 36500

ExportFormat = Literal["json", "csv"]
# The start of an RFC 3339 date-time, as OpenAPI's format: date-time means.
DATE_TIME_START = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]")


def check_json_number(value: object) -> object:
    """Refuse true and "5", which lax validation would take for the numbers 1 and 5.

    Integral numbers written as 5.0 stay allowed, as in JSON Schema.
    """
    if isinstance(value, bool | str):
        raise ValueError("must be a number")
    return value


def check_date_time_text(value: object) -> object:
    """Refuse instants not written as RFC 3339 text, such as a bare 1714564800."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not DATE_TIME_START.match(value):
        raise ValueError("must be a date-time such as 2024-05-01T12:00:00Z")
    return value


# Checked after the bounds are attached, so the schema shows them as
# minimum and maximum.
JSON_NUMBER = BeforeValidator(check_json_number)
DatabaseId = Annotated[int, Field(ge=1, le=ID_MAX), JSON_NUMBER]
DateTimeText = Annotated[AwareDatetime, BeforeValidator(check_date_time_text)]


# Text with something besides spaces and control characters, and no NUL, which
# PostgreSQL cannot store. The pattern tells OpenAPI clients what the check
# below enforces with clearer messages; both use the same characters.
STORABLE_TEXT_PATTERN = r"^[^\x00]*[^\x00-\x20\x7f][^\x00]*$"
VISIBLE_CHARACTER = re.compile(r"[^\x00-\x20\x7f]")


def check_storable_text(value: object) -> object:
    """Refuse text PostgreSQL cannot store, or that is only blanks.

    Runs before type checks, so anything but text is left for them to refuse.
    """
    if not isinstance(value, str):
        return value
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    if not VISIBLE_CHARACTER.search(value):
        raise ValueError("must not be blank")
    return value


def as_utc(value: datetime) -> datetime:
    """Store instants in UTC, refusing those that would fall outside years 1-9999."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is outside the years 1 to 9999 once in UTC") from None


def without_duplicates(categories: list[str]) -> list[str]:
    """Keep the first spelling of each category, since they match regardless of case."""
    seen: set[str] = set()
    unique: list[str] = []
    for category in categories:
        if category.casefold() not in seen:
            seen.add(category.casefold())
            unique.append(category)
    return unique


Category = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=CATEGORY_MAX_LENGTH, pattern=STORABLE_TEXT_PATTERN
    ),
    BeforeValidator(check_storable_text),
]
ExcludedCategories = Annotated[
    list[Category],
    Field(max_length=EXCLUDED_CATEGORIES_MAX),
    AfterValidator(without_duplicates),
]
RetentionDays = Annotated[int, Field(ge=1, le=RETENTION_DAYS_MAX), JSON_NUMBER]
Seconds = Annotated[int, Field(ge=0, le=INTEGER_MAX), JSON_NUMBER]
Percent = Annotated[int, Field(ge=0, le=100), JSON_NUMBER]
ReadAt = Annotated[DateTimeText, AfterValidator(as_utc)]
DeleteHistory = Annotated[
    StrictBool,
    Field(
        description=(
            "Also forget every stored read. Nothing stored is forgotten otherwise, "
            "not even when tracking is turned off."
        )
    ),
]


class HistoryEntryCreate(BaseModel):
    """A read to record."""

    model_config = ConfigDict(extra="forbid")

    article_id: DatabaseId
    feed_id: DatabaseId
    category: Category | None = None
    read_at: ReadAt | None = Field(
        default=None, description="When the article was read; now when left out."
    )
    duration_seconds: Seconds | None = None
    scroll_depth: Percent | None = Field(
        default=None, description="How far down the article the user got, in percent."
    )


class HistoryEntryPublic(BaseModel):
    """A recorded read."""

    entry_id: int
    article_id: int
    feed_id: int
    category: str | None
    read_at: datetime
    duration_seconds: int | None
    scroll_depth: int | None


# The order of columns in every export, CSV and JSON alike.
EXPORT_COLUMNS: tuple[str, ...] = tuple(HistoryEntryPublic.model_fields)


class HistoryPage(BaseModel):
    """One page of history, newest first."""

    data: list[HistoryEntryPublic]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class NotRecordedReason(StrEnum):
    TRACKING_DISABLED = "tracking_disabled"
    CATEGORY_EXCLUDED = "category_excluded"
    OLDER_THAN_RETENTION = "older_than_retention"


class NotRecorded(BaseModel):
    """Why a read was not recorded."""

    recorded: Literal[False] = False
    reason: NotRecordedReason


class HistoryDeleted(BaseModel):
    """How many reads were forgotten."""

    deleted: int


class PreferencesReplace(BaseModel):
    """Every preference at once; the ones left out go back to their defaults."""

    model_config = ConfigDict(extra="forbid")

    tracking_enabled: StrictBool = True
    retention_days: RetentionDays | None = Field(
        default=None, description="Forget reads older than this; null keeps them."
    )
    excluded_categories: ExcludedCategories = Field(
        default_factory=list,
        description="Categories never recorded, compared without regard to case.",
    )
    default_export_format: ExportFormat = "json"
    delete_history: DeleteHistory = False


def documented_without_null(annotation: Any) -> WithJsonSchema:
    """Describe a field or parameter that may be left out, but is never null."""
    return WithJsonSchema(TypeAdapter(annotation).json_schema())


def _without_default(schema: dict[str, Any]) -> None:
    # Left out means unchanged; a default of null would suggest sending null.
    schema.pop("default", None)


LEFT_OUT = Field(default=None, json_schema_extra=_without_default)


class PreferencesUpdate(BaseModel):
    """Only the preferences to change."""

    model_config = ConfigDict(extra="forbid")

    tracking_enabled: Annotated[
        StrictBool | None, documented_without_null(StrictBool)
    ] = LEFT_OUT
    retention_days: RetentionDays | None = None
    excluded_categories: Annotated[
        ExcludedCategories | None, documented_without_null(ExcludedCategories)
    ] = LEFT_OUT
    default_export_format: Annotated[
        ExportFormat | None, documented_without_null(ExportFormat)
    ] = LEFT_OUT
    delete_history: DeleteHistory = False

    @field_validator("tracking_enabled", "excluded_categories", "default_export_format")
    @classmethod
    def _refuse_null(cls, value: object) -> object:
        # Only retention_days has a meaning for null ("keep everything").
        if value is None:
            raise ValueError("must not be null")
        return value


class PreferencesPublic(BaseModel):
    """A user's privacy choices."""

    user_id: int
    tracking_enabled: bool
    retention_days: int | None
    excluded_categories: list[str]
    default_export_format: ExportFormat
    updated_at: datetime | None = Field(
        default=None, description="Null while the user has only the defaults."
    )

    @classmethod
    def defaults(cls, user_id: int) -> PreferencesPublic:
        """Return what a user who never chose anything gets."""
        chosen = PreferencesReplace()
        return cls(user_id=user_id, **chosen.model_dump(exclude={"delete_history"}))


class ErrorDetail(BaseModel):
    """Why a request was refused."""

    detail: str


class SchemaVersion(BaseModel):
    found: int | None
    expected: int


class HealthPublic(BaseModel):
    status: Literal["ok"]
    version: str
    release: str


class DatabaseHealthPublic(BaseModel):
    status: Literal["ok", "unhealthy"]
    reason: str | None = None
    schema_version: SchemaVersion
    pool: dict[str, int]
