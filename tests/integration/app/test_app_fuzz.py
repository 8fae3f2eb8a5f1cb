"""Fuzz the running service with schemathesis, from the OpenAPI document it serves.

`reading-history serve` runs in production mode on loopback, as the restricted
database role, and schemathesis sends every operation generated requests,
valid and invalid, with a live token. Every answer must be one the document
describes (status, headers, content type and body) and none may be a 5xx.

The run is bounded: a fixed number of examples per operation, each request
with a timeout, and a time budget past which no more requests are sent, so
the whole module takes a minute or two on two cores.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from reading_history.main import create_app
from reading_history.pagination import Cursor, encode_cursor

from rh_support import (
    ServiceDatabase,
    apply_migrations,
    create_roles,
    drop_roles,
    make_settings,
    make_token,
    new_roles,
    service_database,
    start_service,
    unused_port,
    wait_until_up,
)

FUZZ_USER = 77
# Examples per operation: enough to reach every parameter's edges, and few
# enough that the eleven operations finish in about a minute.
EXAMPLES_PER_OPERATION = 300
# The whole run stops sending requests after this, however far it got, so
# that a slow machine still finishes in a few minutes.
TIME_BUDGET_SECONDS = 180


@pytest.fixture(scope="module")
def fuzz_database(pg_server) -> Iterator[ServiceDatabase]:
    """Give the module one migrated database, shared by every operation's run."""
    name = pg_server.create_database()
    roles = new_roles(name)
    create_roles(pg_server.dsn(name), roles)
    database = service_database(pg_server, name, roles)
    apply_migrations(database.owner_dsn)
    yield database
    pg_server.drop_database(name)
    drop_roles(pg_server.superuser_dsn, roles)


@pytest.fixture(scope="module")
def fuzzed_service(
    fuzz_database: ServiceDatabase, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Run `reading-history serve` in production mode; yield its base URL."""
    port = unused_port()
    log = tmp_path_factory.mktemp("fuzz") / "service.log"
    with log.open("w") as log_file:
        process = start_service(
            fuzz_database.app_url,
            port=port,
            output=log_file,
            environment="production",
            # The document is what schemathesis reads; production hides it.
            expose_api_docs="true",
            # One token sends every request: the limit is tested elsewhere.
            rate_limit_per_minute="1000000",
            rate_limit_burst="100000",
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base_url, process)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert_no_unexpected_error_was_logged(log)


def assert_no_unexpected_error_was_logged(log: Path) -> None:
    # The service logs unexpected errors; the run must have had none.
    text = log.read_text()
    assert '"unexpected error"' not in text, text[-4000:]


@pytest.fixture(scope="module")
def fuzz_deadline() -> float:
    return time.monotonic() + TIME_BUDGET_SECONDS


@pytest.fixture(scope="module")
def fuzz_headers(fuzz_database: ServiceDatabase) -> dict[str, str]:
    token = make_token(fuzz_database.app_dsn, FUZZ_USER, "fuzzer").token
    return {"Authorization": f"Bearer {token}"}


def served_document() -> dict[str, Any]:
    """Return the OpenAPI document the service serves, built the same way."""
    settings = make_settings(
        "postgresql://u:pw@db.invalid/rh",
        environment="production",
        expose_api_docs=True,
    )
    return create_app(settings).openapi()


# A cursor is opaque: only one the service made is valid, so generated text
# could never be. The listing is fuzzed from a real one; cursors themselves
# are tested in test_app_pagination and test_app_history.
VALID_CURSOR = encode_cursor(
    Cursor(read_at=datetime(2999, 1, 1, tzinfo=UTC), entry_id=1)
)

schema = schemathesis.openapi.from_dict(served_document())
schema.config.update(
    parameters={
        # Other users' ids are a 404 whatever else the request holds (see
        # test_app_security); the token's own reaches the code behind each route.
        "path.user_id": FUZZ_USER,
        "query.cursor": VALID_CURSOR,
    }
)
# Query parameters the API does not know are ignored, as HTTP APIs commonly
# do, rather than refused: the fuzzer is not to count them as wrongly taken.
schema.config.generation.update(allow_extra_parameters=False)


def test_the_fuzzed_document_is_the_one_served(fuzzed_service: str) -> None:
    """Verify what is fuzzed below is exactly what the running service publishes."""
    served = httpx.get(f"{fuzzed_service}/openapi.json", timeout=5)

    assert served.json() == served_document()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_every_answer_matches_the_document_and_none_is_a_server_error(
    case: schemathesis.Case,
    fuzzed_service: str,
    fuzz_headers: dict[str, str],
    fuzz_deadline: float,
) -> None:
    """Verify generated requests never get a 5xx or an undocumented answer."""
    if time.monotonic() > fuzz_deadline:
        return
    case.call_and_validate(base_url=fuzzed_service, headers=fuzz_headers, timeout=10)
