"""Verify what app_verify's smoke tests leave behind: a changed choice, no history."""

import json

import pytest
import testinfra

SMOKE_USER = 9000000000000001
USER_URL = f"http://127.0.0.1:8000/api/v1/users/{SMOKE_USER}"


@pytest.fixture
def database():
    """Return the database host, where the server is administered as postgres."""
    return testinfra.get_host("podman://molecule-verify-db")


def get_json(host, url):
    """Return the JSON body of a GET that must succeed."""
    return json.loads(host.check_output("curl -sf %s", url))


def test_smoke_user_history_is_empty_again(host):
    """Ensure the smoke test deleted every read it recorded."""
    page = get_json(host, f"{USER_URL}/history")
    assert page["data"] == []
    assert page["next_cursor"] is None


def test_smoke_user_preferences_were_updated(host):
    """Verify the smoke test's change of export format was stored."""
    preferences = get_json(host, f"{USER_URL}/preferences")
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
