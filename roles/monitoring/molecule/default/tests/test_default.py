"""Verify Prometheus scrapes every target, loads the rules and alerts reach Alertmanager."""

import json
import time
from pathlib import Path

import pytest
import yaml

TARGET = "molecule-mon-target"
RULES = Path(__file__).resolve().parents[3] / "files" / "reading-history.rules.yml"
ALERTS = [
    rule["alert"]
    for group in yaml.safe_load(RULES.read_text())["groups"]
    for rule in group["rules"]
]


def api(host, url):
    """GET a JSON API on the monitoring host and return its decoded answer."""
    result = host.run("curl -sf -m 10 %s", url)
    assert result.rc == 0, f"{url}: {result.stderr}"
    return json.loads(result.stdout)


def wait_for(probe, seconds=90):
    """Call probe until it returns something true, and return that."""
    deadline = time.monotonic() + seconds
    while True:
        found = probe()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(2)


def prometheus_alerts(host):
    return api(host, "http://127.0.0.1:9090/api/v1/alerts")["data"]["alerts"]


def alert_in_prometheus(host, name, state):
    def probe():
        return [
            alert for alert in prometheus_alerts(host)
            if alert["labels"]["alertname"] == name and alert["state"] == state
        ]  # fmt: skip

    return wait_for(probe)


def alert_in_alertmanager(host, name):
    def probe():
        alerts = api(host, "http://127.0.0.1:9093/api/v2/alerts")
        return [alert for alert in alerts if alert["labels"]["alertname"] == name]

    return wait_for(probe)


@pytest.mark.parametrize("service", ["prometheus", "prometheus-alertmanager"])
def test_services_run_and_start_at_boot(host, service):
    """Ensure Prometheus and Alertmanager are up and enabled."""
    assert host.service(service).is_running
    assert host.service(service).is_enabled


@pytest.mark.parametrize("port", [9090, 9093])
def test_services_listen_on_their_ports(host, port):
    """Verify both listen on every address, where the lab publishes them."""
    assert host.socket(f"tcp://0.0.0.0:{port}").is_listening or host.socket(
        f"tcp://:::{port}"
    ).is_listening


def test_configurations_pass_their_own_checks(host):
    """Ensure the files in place are valid for promtool and amtool."""
    for command in (
        "promtool check config /etc/prometheus/prometheus.yml",
        "promtool check rules /etc/prometheus/rules/reading-history.rules.yml",
        "amtool check-config /etc/prometheus/alertmanager.yml",
    ):
        result = host.run(command)
        assert result.rc == 0, f"{command}: {result.stdout}{result.stderr}"


def test_rules_in_place_are_the_tested_ones(host):
    """Verify the host runs exactly the rules file the promtool tests cover."""
    deployed = host.file("/etc/prometheus/rules/reading-history.rules.yml")
    assert deployed.content_string == RULES.read_text()


def test_alertmanager_configuration_is_private(host):
    """Ensure the file that may hold the SMTP password is closed to other accounts."""
    config = host.file("/etc/prometheus/alertmanager.yml")
    assert config.user == "root"
    assert config.group == "prometheus"
    assert config.mode == 0o640


def test_default_receivers_send_nothing_anywhere(host):
    """Verify the default receivers carry no address: no alert leaves the machine."""
    config = yaml.safe_load(host.file("/etc/prometheus/alertmanager.yml").content_string)
    assert config["receivers"]
    for receiver in config["receivers"]:
        assert set(receiver) == {"name"}, receiver


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ("severity=P1 team=backend", "oncall-pager"),
        ("severity=P1 team=database", "dba-pager"),
        ("severity=P2 team=backend", "backend-team"),
        ("severity=P2 team=database", "database-team"),
        ("severity=P2 team=operations", "operations-team"),
    ],
)
def test_alerts_are_routed_by_severity_and_team(host, labels, receiver):
    """Ensure P1 pages (the DBA for the database) and P2 notifies the alert's team."""
    result = host.run(
        f"amtool config routes test --config.file=/etc/prometheus/alertmanager.yml {labels}"
    )
    assert result.rc == 0, result.stderr
    assert result.stdout.strip() == receiver


def test_every_target_is_scraped(host):
    """Verify the service, both node exporters, PostgreSQL and the two servers are up."""
    expected = {
        ("reading_history", TARGET),
        ("node", TARGET),
        ("node", "molecule-mon-server"),
        ("postgres", TARGET),
        ("prometheus", "molecule-mon-server"),
        ("alertmanager", "molecule-mon-server"),
    }

    def healthy():
        targets = api(host, "http://127.0.0.1:9090/api/v1/targets")["data"]["activeTargets"]
        up = {(t["labels"]["job"], t["labels"]["host"]) for t in targets if t["health"] == "up"}
        return up if up == expected else None

    assert wait_for(healthy) == expected


def test_every_alert_rule_is_loaded(host):
    """Ensure Prometheus loaded all the checklist's alerts from the rules file."""
    groups = api(host, "http://127.0.0.1:9090/api/v1/rules")["data"]["groups"]
    loaded = sorted(rule["name"] for group in groups for rule in group["rules"])
    assert loaded == sorted(ALERTS)
    assert len(ALERTS) == 9


def test_error_rate_pages_on_call(host):
    """Verify 10% failed requests fire the P1 alert and Alertmanager pages on-call."""
    [alert] = alert_in_prometheus(host, "ReadingHistoryErrorRateHigh", "firing")
    assert alert["labels"]["host"] == TARGET
    assert alert["labels"]["severity"] == "P1"
    assert TARGET in alert["annotations"]["summary"]

    [received] = alert_in_alertmanager(host, "ReadingHistoryErrorRateHigh")
    assert [r["name"] for r in received["receivers"]] == ["oncall-pager"]
    assert received["labels"]["environment"] == "lab"


def test_rollback_trigger_waits_five_minutes(host):
    """Ensure the rollback trigger is pending, not firing, and says what it is."""
    [alert] = alert_in_prometheus(host, "ReadingHistoryErrorRateRollback", "pending")
    assert alert["labels"]["rollback_trigger"] == "true"


def test_slow_exports_notify_the_database_team(host):
    """Verify slow CSV exports fire the P2 alert, routed to the database team."""
    [alert] = alert_in_prometheus(host, "ReadingHistoryExportSlow", "firing")
    assert alert["labels"]["format"] == "csv"
    [received] = alert_in_alertmanager(host, "ReadingHistoryExportSlow")
    assert [r["name"] for r in received["receivers"]] == ["database-team"]


def test_failed_preference_updates_notify_the_backend_team(host):
    """Verify more than 10 failed updates in the hour reach the backend team."""
    [received] = alert_in_alertmanager(host, "ReadingHistoryPreferenceUpdatesFailing")
    assert [r["name"] for r in received["receivers"]] == ["backend-team"]


def test_database_connections_alert_is_pending(host):
    """Ensure 90 of 100 connections start the 2 minute wait of the DBA's page."""
    [alert] = alert_in_prometheus(host, "PostgresConnectionsHigh", "pending")
    assert alert["labels"]["host"] == TARGET
    assert alert["labels"]["team"] == "database"
