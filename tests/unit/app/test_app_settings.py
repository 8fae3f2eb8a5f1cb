"""Tests for reading the service's settings from the environment."""

from __future__ import annotations

import os

import pytest

from reading_history.core.config import (
    Settings,
    SettingsError,
    load_settings,
    redact_database_url,
)

GOOD_URL = "postgresql://reader:s3cret-pass@db.internal:5432/reading_history"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Start each test with no READING_HISTORY_* variable at all."""
    for name in list(os.environ):
        if name.upper().startswith("READING_HISTORY_"):
            monkeypatch.delenv(name)
    return monkeypatch


def settings_error(monkeypatch: pytest.MonkeyPatch, **variables: str) -> str:
    for name, value in variables.items():
        monkeypatch.setenv(f"READING_HISTORY_{name}", value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    return str(caught.value)


def test_defaults_apply_when_only_the_url_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Verify every optional setting has the documented default."""
    monkeypatch.setenv("READING_HISTORY_DATABASE_URL", GOOD_URL)

    settings = load_settings()

    assert settings.database_url.get_secret_value() == GOOD_URL
    assert settings.environment == "production"
    assert settings.release == "unknown"
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.pool_min_size <= settings.pool_max_size
    assert settings.log_level == "INFO"


def test_every_setting_is_read_from_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Verify each documented variable reaches its setting."""
    variables = {
        "DATABASE_URL": GOOD_URL,
        "ENVIRONMENT": "lab",
        "RELEASE": "2024.05.01-3",
        "HOST": "0.0.0.0",
        "PORT": "8123",
        "POOL_MIN_SIZE": "2",
        "POOL_MAX_SIZE": "7",
        "LOG_LEVEL": "debug",
    }
    for name, value in variables.items():
        monkeypatch.setenv(f"READING_HISTORY_{name}", value)

    settings = load_settings()

    assert (settings.environment, settings.release) == ("lab", "2024.05.01-3")
    assert (settings.host, settings.port) == ("0.0.0.0", 8123)
    assert (settings.pool_min_size, settings.pool_max_size) == (2, 7)
    assert settings.log_level == "DEBUG"


def test_missing_database_url_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ensure a missing database URL stops the start with its variable's name."""
    message = settings_error(monkeypatch)

    assert "READING_HISTORY_DATABASE_URL is required" in message


def test_empty_database_url_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ensure an empty variable is not taken as a URL."""
    message = settings_error(monkeypatch, DATABASE_URL="")

    assert "READING_HISTORY_DATABASE_URL is required" in message


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://reader:s3cret-pass@db/reading", "postgresql://"),
        ("http://reader:s3cret-pass@db/reading", "postgresql://"),
        ("reader:s3cret-pass@db/reading", "postgresql://"),
        ("postgresql://reader:s3cret-pass@db:notaport/reading", "port"),
        ("postgresql://reader:s3cret-pass@db:99999/reading", "port"),
        ("postgresql://reader:s3cret-pass@/reading", "host"),
        ("postgresql://reader:s3cret-pass@db", "database"),
        ("postgresql://reader:s3cret-pass@db/reading?bogus_option=1", "libpq"),
    ],
)
def test_malformed_database_url_is_named_without_its_password(
    monkeypatch: pytest.MonkeyPatch, url: str, problem: str
) -> None:
    """Ensure a malformed URL is refused, named, and its password never shown."""
    message = settings_error(monkeypatch, DATABASE_URL=url)

    assert "READING_HISTORY_DATABASE_URL" in message
    assert problem in message
    assert "s3cret-pass" not in message


def test_unix_socket_url_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Verify a URL giving the socket folder as a host= option is valid."""
    url = "postgresql:///reading_history?host=/run/postgresql"
    monkeypatch.setenv("READING_HISTORY_DATABASE_URL", url)

    assert load_settings().database_url.get_secret_value() == url


def test_unknown_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ensure a misspelt setting stops the start instead of being ignored."""
    message = settings_error(
        monkeypatch, DATABASE_URL=GOOD_URL, POOL_MAXSIZE="5", LOGLEVEL="info"
    )

    assert "READING_HISTORY_POOL_MAXSIZE" in message
    assert "READING_HISTORY_LOGLEVEL" in message
    assert "unknown setting" in message


def test_unrelated_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Verify only the service's own prefix is checked for unknown names."""
    monkeypatch.setenv("READING_HISTORY_DATABASE_URL", GOOD_URL)
    monkeypatch.setenv("READING_HISTORYX", "1")
    monkeypatch.setenv("DATABASE_URL", "not a url")

    assert load_settings().port == 8000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ENVIRONMENT", "prod"),
        ("PORT", "0"),
        ("PORT", "http"),
        ("POOL_MAX_SIZE", "0"),
        ("POOL_MIN_SIZE", "-1"),
        ("LOG_LEVEL", "chatty"),
    ],
)
def test_invalid_value_is_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """Ensure an out-of-range or unknown value names the variable holding it."""
    message = settings_error(monkeypatch, DATABASE_URL=GOOD_URL, **{name: value})

    assert f"READING_HISTORY_{name}" in message


def test_pool_minimum_above_maximum_names_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ensure a pool that could never be satisfied is refused, naming both sizes."""
    message = settings_error(
        monkeypatch, DATABASE_URL=GOOD_URL, POOL_MIN_SIZE="8", POOL_MAX_SIZE="4"
    )

    assert "READING_HISTORY_POOL_MIN_SIZE" in message
    assert "READING_HISTORY_POOL_MAX_SIZE" in message


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Verify an operator sees all bad settings in one start, not one per try."""
    message = settings_error(monkeypatch, PORT="0", ENVIRONMENT="prod")

    assert "READING_HISTORY_DATABASE_URL" in message
    assert "READING_HISTORY_PORT" in message
    assert "READING_HISTORY_ENVIRONMENT" in message


def test_printing_settings_hides_the_password() -> None:
    """Ensure the settings' repr, as a log line would show it, has no password."""
    settings = Settings(database_url=GOOD_URL)

    assert "s3cret-pass" not in repr(settings)
    assert "s3cret-pass" not in str(settings.model_dump())
    assert "s3cret-pass" not in settings.redacted_database_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://reader:s3cret-pass@db:5432/rh",
            "postgresql://reader:***@db:5432/rh",
        ),
        (
            "postgresql://reader@db/rh?password=s3cret-pass&sslmode=require",
            "postgresql://reader@db/rh?password=***&sslmode=require",
        ),
        ("postgresql://reader@db/rh", "postgresql://reader@db/rh"),
    ],
)
def test_redacted_url_keeps_all_but_the_password(url: str, expected: str) -> None:
    """Verify the logged URL still says where the service connects, not how."""
    assert redact_database_url(url) == expected
