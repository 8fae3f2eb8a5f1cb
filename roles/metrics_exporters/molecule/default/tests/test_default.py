"""Verify the node exporter on every host and the PostgreSQL exporter on the db host."""

import pytest
import testinfra

APP_HOST = "molecule-exp-app"
MONITOR = ("reading_history_monitor", "molecule-monitor-a7c41e90d2")
PASSWORD_FILE = "/etc/prometheus/postgres_exporter.password"


@pytest.fixture
def app_host():
    return testinfra.get_host(f"podman://{APP_HOST}")


def scrape(host, url):
    """Fetch a metrics page the way Prometheus would, from the given host."""
    result = host.run("curl -sf -m 10 %s", url)
    assert result.rc == 0, result.stderr
    return result.stdout


def sample(text, name):
    """Return the value of the first sample of a metric, or None when there is none."""
    for line in text.splitlines():
        if line.startswith(f"{name} ") or line.startswith(f"{name}{{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def psql_as_monitor(host, sql, database="postgres"):
    return host.run(
        "PGPASSWORD=%s psql -h 127.0.0.1 -U %s -d %s -Atc %s",
        MONITOR[1], MONITOR[0], database, sql,
    )  # fmt: skip


def test_node_exporter_runs_on_every_host(host, app_host):
    """Ensure each host runs the node exporter, enabled for the next boot too."""
    for each in (host, app_host):
        service = each.service("prometheus-node-exporter")
        assert service.is_running
        assert service.is_enabled
        assert each.socket("tcp://0.0.0.0:9100").is_listening


def test_node_exporter_is_scraped_across_the_network(host):
    """Verify another host reads CPU and memory figures the host alerts rely on."""
    text = scrape(host, f"http://{APP_HOST}:9100/metrics")
    assert 'node_cpu_seconds_total{cpu="0",mode="idle"}' in text
    assert sample(text, "node_memory_MemAvailable_bytes") > 0
    assert sample(text, "node_memory_MemTotal_bytes") > 0


def test_postgres_exporter_runs_only_on_the_db_host(host, app_host):
    """Ensure the db host runs the PostgreSQL exporter and the app host does not."""
    service = host.service("prometheus-postgres-exporter")
    assert service.is_running
    assert service.is_enabled
    assert not app_host.service("prometheus-postgres-exporter").is_running


def test_postgres_exporter_reaches_the_server(host):
    """Verify the exporter logs in and reports the figures of the connections alert."""
    text = scrape(host, "http://127.0.0.1:9187/metrics")
    assert sample(text, "pg_up") == 1
    assert sample(text, "pg_settings_max_connections") == 100
    assert 'pg_stat_database_numbackends{datid=' in text


def test_login_role_may_only_monitor(host):
    """Ensure the exporter's role is in pg_monitor and holds no other power."""
    result = psql_as_monitor(
        host,
        "SELECT rolsuper, rolcreatedb, rolcreaterole, "
        "pg_has_role(current_user, 'pg_monitor', 'member') "
        "FROM pg_roles WHERE rolname = current_user",
    )
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == "f|f|f|t"


def test_login_role_cannot_open_the_service_database(host):
    """Verify monitoring gives no way into the service's own data."""
    result = psql_as_monitor(host, "SELECT 1", database="reading_history")
    assert result.rc != 0
    assert "permission denied" in result.stderr


def test_password_is_only_in_its_file(host):
    """Ensure the password is readable by root and prometheus only, and nowhere else."""
    secret = host.file(PASSWORD_FILE)
    assert secret.user == "root"
    assert secret.group == "prometheus"
    assert secret.mode == 0o640
    assert secret.content_string == MONITOR[1]
    settings = host.file("/etc/default/prometheus-postgres-exporter")
    assert MONITOR[1] not in settings.content_string
    assert f"DATA_SOURCE_PASS_FILE=\"{PASSWORD_FILE}\"" in settings.content_string
    command_lines = host.check_output("ps -eo args")
    assert MONITOR[1] not in command_lines
