"""Verify the nginx load balancer spreads requests over the app hosts and skips a dead one."""

import time

import pytest
import testinfra

BACKENDS = ("molecule-lb-app1", "molecule-lb-app2")
SITE = "/etc/nginx/sites-available/reading-history.conf"


def through_lb(host, count, host_header=None):
    """Send count requests through the load balancer; return (status, body) pairs."""
    header = f"-H 'Host: {host_header}' " if host_header else ""
    answers = []
    for _ in range(count):
        result = host.run(
            f"curl -s -m 10 {header}-w '\\n%{{http_code}}' http://127.0.0.1:80/"
        )
        assert result.rc == 0, result.stderr
        body, _, status = result.stdout.rpartition("\n")
        answers.append((status.strip(), body.strip()))
    return answers


@pytest.fixture
def first_backend_stopped():
    """Stop the first backend's service for one test, then bring it back."""
    backend = testinfra.get_host(f"podman://{BACKENDS[0]}")
    backend.run_test("systemctl stop molecule-backend.service")
    yield BACKENDS[0]
    backend.run_test("systemctl start molecule-backend.service")
    for _ in range(20):
        if backend.run("curl -sf http://127.0.0.1:8000/").rc == 0:
            break
        time.sleep(0.5)


def test_nginx_runs_and_starts_at_boot(host):
    """Ensure nginx is up and enabled."""
    service = host.service("nginx")
    assert service.is_running
    assert service.is_enabled


def test_configuration_passes_nginx_test(host):
    """Verify the configuration nginx runs with, the site included, is valid."""
    result = host.run("nginx -t")
    assert result.rc == 0, result.stderr


def test_site_is_enabled_and_lists_every_backend(host):
    """Ensure the enabled site is the role's file and names both app hosts."""
    link = host.file("/etc/nginx/sites-enabled/reading-history.conf")
    assert link.is_symlink
    assert link.linked_to == SITE
    site = host.file(SITE)
    assert site.user == "root"
    assert site.mode == 0o644
    for backend in BACKENDS:
        assert f"server {backend}:8000 " in site.content_string


def test_default_site_is_disabled(host):
    """Verify no request, whatever its Host, lands on the packaged welcome page."""
    assert not host.file("/etc/nginx/sites-enabled/default").exists
    for status, body in through_lb(host, 2, host_header="unknown.example"):
        assert status == "200"
        assert body in BACKENDS


def test_requests_reach_both_backends(host):
    """Ensure requests through the load balancer are spread over both app hosts."""
    answers = through_lb(host, 10)
    assert {status for status, _ in answers} == {"200"}
    assert {body for _, body in answers} == set(BACKENDS)


def test_stopped_backend_costs_no_request(host, first_backend_stopped):
    """Verify every request succeeds on the other host while one host is down."""
    log = host.file("/var/log/nginx/error.log")
    log_size = log.size if log.exists else 0

    answers = through_lb(host, 10)

    assert answers == [("200", BACKENDS[1])] * 10
    # The stopped host was tried and refused, so the requests above were retried.
    address = host.check_output(f"getent hosts {first_backend_stopped}").split()[0]
    new_log = host.check_output(f"tail -c +{log_size + 1} /var/log/nginx/error.log")
    assert "Connection refused) while connecting to upstream" in new_log
    assert f'upstream: "http://{address}:8000/"' in new_log
