"""What the API accepts and returns."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    field_validator,
)

# PostgreSQL's bigint and integer, so that no id or number overflows a column.
BIGINT_MAX = 2**63 - 1
INTEGER_MAX = 2**31 - 1
CATEGORY_MAX_LENGTH = 64
EXCLUDED_CATEGORIES_MAX = 100
# A hundred years: longer would overflow date arithmetic and means "forever" anyway.
RETENTION_DAYS_MAX = 36500

ExportFormat = Literal["json", "csv"]
DatabaseId = Annotated[int, Field(ge=1, le=BIGINT_MAX)]


def check_storable_text(value: str) -> str:
    """Refuse text PostgreSQL cannot store, or that is only blanks."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    if not value.strip():
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
    StringConstraints(min_length=1, max_length=CATEGORY_MAX_LENGTH),
    AfterValidator(check_storable_text),
]
ExcludedCategories = Annotated[
    list[Category],
    Field(max_length=EXCLUDED_CATEGORIES_MAX),
    AfterValidator(without_duplicates),
]
RetentionDays = Annotated[int, Field(ge=1, le=RETENTION_DAYS_MAX)]
ReadAt = Annotated[AwareDatetime, AfterValidator(as_utc)]


class HistoryEntryCreate(BaseModel):
    """A read to record."""

    model_config = ConfigDict(extra="forbid")

    article_id: DatabaseId
    feed_id: DatabaseId
    category: Category | None = None
    read_at: ReadAt | None = Field(
        default=None, description="When the article was read; now when left out."
    )
    duration_seconds: Annotated[int, Field(ge=0, le=INTEGER_MAX)] | None = None
    scroll_depth: Annotated[int, Field(ge=0, le=100)] | None = Field(
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


class PreferencesUpdate(BaseModel):
    """Only the preferences to change."""

    model_config = ConfigDict(extra="forbid")

    tracking_enabled: StrictBool | None = None
    retention_days: RetentionDays | None = None
    excluded_categories: ExcludedCategories | None = None
    default_export_format: ExportFormat | None = None

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
        return cls(user_id=user_id, **chosen.model_dump())


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
