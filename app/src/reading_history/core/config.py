"""Settings read from the environment and checked before the service starts."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "READING_HISTORY_"
API_V1_PREFIX = "/api/v1"

DATABASE_URL_SCHEMES = frozenset({"postgresql", "postgres"})
CORS_ORIGIN_SCHEMES = frozenset({"http", "https"})

Environment = Literal["production", "staging", "lab", "development"]
# Where a real secret is required and debugging aids are off unless asked for.
GUARDED_ENVIRONMENTS = frozenset({"production", "staging"})
LogLevel = Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"]

# Passwords that only ever stand in for a real one: compared lower-case with
# anything but letters and digits removed, and with trailing digits ignored.
PLACEHOLDER_PASSWORDS = frozenset(
    {
        "admin",
        "changeme",
        "changethis",
        "default",
        "dummy",
        "example",
        "insecure",
        "pass",
        "passw0rd",
        "passwd",
        "password",
        "placeholder",
        "postgres",
        "secret",
        "test",
        "todo",
        "xxx",
    }
)
PLACEHOLDER_PREFIXES = ("changeme", "example", "placeholder", "replaceme")


class SettingsError(ValueError):
    """The environment does not describe a usable configuration."""


class Settings(BaseSettings):
    """Everything the service reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        extra="forbid",
        frozen=True,
    )

    # A secret, so that printing the settings never shows the password.
    database_url: SecretStr
    environment: Environment = "production"
    release: str = Field(default="unknown", min_length=1, max_length=200)
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8000, ge=1, le=65535)
    pool_min_size: int = Field(default=1, ge=0, le=100)
    pool_max_size: int = Field(default=10, ge=1, le=100)
    log_level: LogLevel = "INFO"
    # Processes `serve` starts; each has its own pool and its own rate limits.
    workers: int = Field(default=1, ge=1, le=64)
    # Comma-separated origins a browser may call the API from; none by default.
    cors_origins: str = ""
    # Requests one token may make per minute in one process, and at once.
    rate_limit_per_minute: int = Field(default=600, ge=1, le=1_000_000)
    rate_limit_burst: int = Field(default=100, ge=1, le=100_000)
    # /docs, /redoc and /openapi.json; unset shows them outside production and
    # staging only.
    expose_api_docs: bool | None = None

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr) -> SecretStr:
        check_database_url(value.get_secret_value())
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_cors_origins(cls, value: str) -> str:
        for origin in split_origins(value):
            check_cors_origin(origin)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_pool_sizes(self) -> Settings:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"{env_name('pool_min_size')} ({self.pool_min_size}) must not be "
                f"greater than {env_name('pool_max_size')} ({self.pool_max_size})"
            )
        return self

    @model_validator(mode="after")
    def _check_secret_is_real(self) -> Settings:
        if self.environment not in GUARDED_ENVIRONMENTS:
            return self

        problem = password_problem(self.database_url.get_secret_value())
        if problem:
            raise ValueError(
                f"{env_name('database_url')} {problem}, which is refused when "
                f"{env_name('environment')} is {self.environment}"
            )
        return self

    @property
    def redacted_database_url(self) -> str:
        """Return the database URL with its password hidden, fit for logs."""
        return redact_database_url(self.database_url.get_secret_value())

    @property
    def cors_origin_list(self) -> list[str]:
        return split_origins(self.cors_origins)

    @property
    def api_docs_enabled(self) -> bool:
        if self.expose_api_docs is not None:
            return self.expose_api_docs
        return self.environment not in GUARDED_ENVIRONMENTS


def env_name(field: str) -> str:
    """Return the environment variable that sets a field."""
    return f"{ENV_PREFIX}{field.upper()}"


def check_database_url(url: str) -> None:
    """Raise ValueError, without repeating the URL, unless it is a PostgreSQL URL."""
    parts = urlsplit(url)
    if parts.scheme not in DATABASE_URL_SCHEMES:
        raise ValueError("must be a URL starting with postgresql://")

    try:
        _ = parts.port
    except ValueError:
        raise ValueError("has a port that is not a number from 1 to 65535") from None

    if not parts.hostname and "host=" not in parts.query:
        raise ValueError("must name the database host")
    if not parts.path.strip("/"):
        raise ValueError("must name the database, as in postgresql://host/dbname")

    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise ValueError("is not a connection URL that libpq accepts") from None


def password_problem(url: str) -> str | None:
    """Say what is wrong with the URL's password for a real deployment, if anything.

    A URL for a Unix socket may go without one: the server then knows the
    client by its system account instead.
    """
    options = conninfo_to_dict(url)
    password = options.get("password")
    if password is None:
        host = str(options.get("host") or "")
        if not host or host.startswith("/"):
            return None
        return "has no password"
    if not str(password):
        return "has an empty password"
    if is_placeholder(str(password)):
        return "has a placeholder password"
    return None


def is_placeholder(password: str) -> bool:
    """Tell whether a password is one that only stands in for a real secret."""
    plain = re.sub(r"[^a-z0-9]", "", password.casefold())
    word = plain.rstrip("0123456789")
    # Nothing left: only symbols ("***") or only digits ("123456").
    return (
        not word
        or word in PLACEHOLDER_PASSWORDS
        or plain.startswith(PLACEHOLDER_PREFIXES)
    )


def split_origins(value: str) -> list[str]:
    return [origin.strip() for origin in value.split(",") if origin.strip()]


def check_cors_origin(origin: str) -> None:
    """Raise ValueError unless the origin is scheme://host[:port], nothing more."""
    parts = urlsplit(origin)
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"has {origin!r}, whose port is not valid") from None

    if parts.scheme not in CORS_ORIGIN_SCHEMES or not parts.hostname:
        raise ValueError(
            f"has {origin!r}, which is not an origin such as https://app.example"
        )
    if parts.path or parts.query or parts.fragment or parts.username:
        raise ValueError(
            f"has {origin!r}: an origin has no path, query or user, not even '/'"
        )


def redact_database_url(url: str) -> str:
    """Hide the password of a connection URL, whether in its user part or query."""
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")

    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "password" for key, _ in query):
        hidden = [(key, "***" if key == "password" else value) for key, value in query]
        parts = parts._replace(query=urlencode(hidden, safe="*/"))
    return parts.geturl()


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """Return the READING_HISTORY_* variables that name no setting."""
    known = {env_name(field) for field in Settings.model_fields}
    return sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known
    )


def load_settings() -> Settings:
    """Read the settings from the environment, or raise SettingsError naming why."""
    unknown = unknown_variables(os.environ)
    if unknown:
        raise SettingsError(
            f"unknown setting {', '.join(unknown)}: the service reads only "
            f"{', '.join(sorted(env_name(field) for field in Settings.model_fields))}"
        )

    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(describe_errors(error)) from None


def describe_errors(error: ValidationError) -> str:
    """Turn a validation error into one line per bad setting, without the values."""
    problems = [_describe(detail) for detail in error.errors(include_input=False)]
    return "invalid settings: " + "; ".join(problems)


def _describe(detail: Mapping[str, object]) -> str:
    location = detail.get("loc") or ()
    message = str(detail.get("msg", "is invalid")).removeprefix("Value error, ")
    if not isinstance(location, tuple) or not location:
        return message

    name = env_name(str(location[0]))
    if detail.get("type") == "missing":
        return f"{name} is required"
    if detail.get("type") == "extra_forbidden":
        return f"{name} is not a known setting"
    return f"{name} {message}" if _reads_on(message) else f"{name}: {message}"


def _reads_on(message: str) -> bool:
    """Tell whether a message continues a sentence whose subject is the variable."""
    return message.startswith(("must ", "has ", "is "))
