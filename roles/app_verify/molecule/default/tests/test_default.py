"""Verify what app_verify's smoke tests leave behind: a changed choice, no history."""

import json

import pytest
import testinfra

SMOKE_USER = 9000000000000001
USER_URL = f"http://127.0.0.1:8000/api/v1/users/{SMOKE_USER}"


CLI = (
    "systemd-run --quiet --wait --pipe --collect "
    "--property=EnvironmentFile=/opt/reading-history/current/reading-history.env "
    "--property=User=reading-history /opt/reading-history/current/bin/reading-history"
)


@pytest.fixture(scope="module")
def token(host):
    """Make a token of the tests' own for the smoke user, revoked afterwards."""
    made = host.check_output(f"{CLI} tokens create --user-id {SMOKE_USER} --name check")
    yield made.strip()
    host.run(f"{CLI} tokens revoke --user-id {SMOKE_USER} --name check")


@pytest.fixture
def database():
    """Return the database host, where the server is administered as postgres."""
    return testinfra.get_host("podman://molecule-verify-db")


def get_json(host, url, token):
    """Return the JSON body of a GET that must succeed."""
    return json.loads(
        host.check_output("curl -sf -H %s %s", f"Authorization: Bearer {token}", url)
    )


def test_smoke_user_history_is_empty_again(host, token):
    """Ensure the smoke test deleted every read it recorded."""
    page = get_json(host, f"{USER_URL}/history", token)
    assert page["data"] == []
    assert page["next_cursor"] is None


def test_smoke_user_preferences_were_updated(host, token):
    """Verify the smoke test's change of export format was stored."""
    preferences = get_json(host, f"{USER_URL}/preferences", token)
    assert preferences["user_id"] == SMOKE_USER
    assert preferences["default_export_format"] == "csv"
    # Defaults that were never stored have no update time.
    assert preferences["updated_at"] is not None


def test_smoke_test_wrote_a_read_before_deleting_it(database):
    """Ensure the history really was written: its id sequence has been used."""
    used = database.check_output(
        "runuser -u postgres -- psql -d reading_history -Atc %s",
        "SELECT is_called FROM reading_history_id_seq",
    )
    assert used == "t"
    left = database.check_output(
        "runuser -u postgres -- psql -d reading_history -Atc %s",
        f"SELECT count(*) FROM reading_history WHERE user_id = {SMOKE_USER}",
    )
    assert left == "0"


def test_smoke_token_was_revoked(database):
    """Ensure the token the smoke tests made for themselves no longer works."""
    live = database.check_output(
        "runuser -u postgres -- psql -d reading_history -Atc %s",
        "SELECT count(*) FROM api_tokens "
        f"WHERE user_id = {SMOKE_USER} AND name LIKE 'smoke-%' AND revoked_at IS NULL",
    )
    assert live == "0"
