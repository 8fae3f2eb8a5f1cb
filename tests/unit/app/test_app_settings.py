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


def test_new_settings_have_safe_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Verify CORS is off, docs are hidden and one worker serves, unless configured."""
    monkeypatch.setenv("READING_HISTORY_DATABASE_URL", GOOD_URL)

    settings = load_settings()

    assert settings.cors_origin_list == []
    assert settings.api_docs_enabled is False
    assert settings.workers == 1
    assert (settings.rate_limit_per_minute, settings.rate_limit_burst) == (600, 100)


def test_operational_settings_are_read_from_their_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Verify each new variable reaches its setting."""
    variables = {
        "DATABASE_URL": GOOD_URL,
        "WORKERS": "4",
        "CORS_ORIGINS": "https://reader.example, http://localhost:3000",
        "RATE_LIMIT_PER_MINUTE": "120",
        "RATE_LIMIT_BURST": "20",
        "EXPOSE_API_DOCS": "true",
    }
    for name, value in variables.items():
        monkeypatch.setenv(f"READING_HISTORY_{name}", value)

    settings = load_settings()

    assert settings.workers == 4
    assert settings.cors_origin_list == [
        "https://reader.example",
        "http://localhost:3000",
    ]
    assert (settings.rate_limit_per_minute, settings.rate_limit_burst) == (120, 20)
    assert settings.api_docs_enabled is True


@pytest.mark.parametrize(
    ("environment", "expected"),
    [("production", False), ("staging", False), ("lab", True), ("development", True)],
)
def test_api_docs_follow_the_environment_by_default(
    environment: str, expected: bool
) -> None:
    """Verify debugging aids are on only outside production and staging."""
    settings = Settings(database_url=GOOD_URL, environment=environment)

    assert settings.api_docs_enabled is expected


@pytest.mark.parametrize(
    "origins",
    [
        "*",
        "reader.example",
        "https://reader.example/",
        "https://reader.example/app",
        "ftp://reader.example",
        "https://reader.example:99999",
        "https://ok.example,https://user@bad.example",
    ],
)
def test_a_cors_origin_that_is_not_an_origin_is_refused(
    monkeypatch: pytest.MonkeyPatch, origins: str
) -> None:
    """Ensure wildcards, paths and typos in CORS origins stop the start."""
    message = settings_error(monkeypatch, DATABASE_URL=GOOD_URL, CORS_ORIGINS=origins)

    assert "READING_HISTORY_CORS_ORIGINS" in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORKERS", "0"),
        ("RATE_LIMIT_PER_MINUTE", "0"),
        ("RATE_LIMIT_BURST", "-1"),
        ("EXPOSE_API_DOCS", "maybe"),
    ],
)
def test_invalid_operational_value_is_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """Ensure an impossible worker count, limit or switch names its variable."""
    message = settings_error(monkeypatch, DATABASE_URL=GOOD_URL, **{name: value})

    assert f"READING_HISTORY_{name}" in message


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://reader@db/rh", "has no password"),
        ("postgresql://reader:@db/rh", "has no password"),
        ("postgresql://reader:changeme@db/rh", "placeholder"),
        ("postgresql://reader:CHANGE-ME@db/rh", "placeholder"),
        ("postgresql://reader:password@db/rh", "placeholder"),
        ("postgresql://reader:Password123@db/rh", "placeholder"),
        ("postgresql://reader:example-secret@db/rh", "placeholder"),
        ("postgresql://reader:secret@db/rh", "placeholder"),
        ("postgresql://reader:***@db/rh", "placeholder"),
        ("postgresql://reader:123456@db/rh", "placeholder"),
        ("postgresql://reader@db/rh?password=changeme", "placeholder"),
    ],
)
@pytest.mark.parametrize("environment", ["production", "staging"])
def test_a_missing_or_placeholder_password_stops_production(
    monkeypatch: pytest.MonkeyPatch, url: str, problem: str, environment: str
) -> None:
    """Ensure production and staging never start with a stand-in secret."""
    message = settings_error(monkeypatch, DATABASE_URL=url, ENVIRONMENT=environment)

    assert "READING_HISTORY_DATABASE_URL" in message
    assert problem in message
    assert environment in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://reader:changeme@db/rh",
        "postgresql://reader@db/rh",
    ],
)
def test_placeholders_are_allowed_in_the_lab(url: str) -> None:
    """Verify throwaway environments may use throwaway passwords."""
    for environment in ("lab", "development"):
        assert Settings(database_url=url, environment=environment).port == 8000


@pytest.mark.parametrize(
    "url",
    [
        GOOD_URL,
        "postgresql:///reading_history?host=/run/postgresql",
        "postgresql://reader:correct-horse-battery-staple@db/rh",
    ],
)
def test_real_passwords_and_socket_logins_pass_in_production(url: str) -> None:
    """Verify the check refuses stand-ins only, and peer logins over a socket pass."""
    assert Settings(database_url=url, environment="production").database_url
