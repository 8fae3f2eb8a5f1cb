"""Verify a failed release check stops app_verify before its smoke tests write."""

SMOKE_USER = 9000000000000001


def query(host, sql):
    """Return the one value a query yields, read as postgres on the database host."""
    return host.check_output(
        "runuser -u postgres -- psql -d reading_history -Atc %s", sql
    )


def test_smoke_user_was_never_written(host):
    """Ensure the smoke tests did not run: no preferences row for the smoke user."""
    found = query(
        host,
        f"SELECT count(*) FROM user_reading_preferences WHERE user_id = {SMOKE_USER}",
    )
    assert found == "0"


def test_no_read_was_ever_recorded(host):
    """Verify the history's id sequence was never used."""
    assert query(host, "SELECT is_called FROM reading_history_id_seq") == "f"
