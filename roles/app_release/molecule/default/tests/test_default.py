"""Verify what app_release leaves on an app host: the release, its service, its config."""

import json

import pytest

ROOT = "/opt/reading-history"


@pytest.fixture
def current_release(host):
    """Return the folder the current link points at."""
    return host.file(f"{ROOT}/current").linked_to


def test_current_links_to_a_complete_release(host, current_release):
    """Ensure current points into releases/ at a release marked complete."""
    assert current_release.startswith(f"{ROOT}/releases/1.0.0-")
    assert host.file(f"{current_release}/.installed").exists
    assert host.file(f"{current_release}/bin/reading-history").is_file


def test_configuration_is_kept_with_the_release_and_private(host, current_release):
    """Verify the environment file lives in the release and others cannot read it."""
    config = host.file(f"{current_release}/reading-history.env")
    assert config.user == "root"
    assert config.group == "reading-history"
    assert config.mode == 0o640
    assert "READING_HISTORY_DATABASE_URL=postgresql://" in config.content_string


def test_service_runs_as_its_own_account(host):
    """Ensure the service is up, enabled, and not running as root."""
    service = host.service("reading-history")
    assert service.is_running
    assert service.is_enabled
    user = host.check_output(
        "ps -o user= -p $(systemctl show -p MainPID --value reading-history)"
    )
    assert user == "reading-history"


def test_health_reports_the_installed_release(host, current_release):
    """Verify the service answers with the release current points at."""
    health = json.loads(host.check_output("curl -sf http://127.0.0.1:8000/health"))
    assert health["status"] == "ok"
    assert health["release"] == current_release.rsplit("/", 1)[1]


def test_database_health_sees_the_migrated_schema(host):
    """Ensure the app reaches its database as the app role and finds the schema."""
    body = json.loads(host.check_output("curl -s http://127.0.0.1:8000/api/v1/health/db"))
    assert body["status"] == "ok"
    assert body["schema_version"]["found"] == body["schema_version"]["expected"]


def test_purge_of_expired_history_is_scheduled(host):
    """Ensure the retention purge runs on a timer, with the release's configuration."""
    timer = host.service("reading-history-purge.timer")
    assert timer.is_enabled
    assert timer.is_running

    run = host.run("systemctl start reading-history-purge.service")
    assert run.rc == 0, run.stderr
    journal = host.check_output("journalctl -u reading-history-purge.service -o cat")
    assert "purged" in journal
