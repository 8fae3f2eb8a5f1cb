"""Verify the nginx load balancer: TLS, redirect, rate limit, maintenance and drains.

The tests that need another run of the role run molecule/default/entry.yml with
ansible-playbook against the scenario's inventory, and put back what they changed.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import testinfra

BACKENDS = ("molecule-lb-app1", "molecule-lb-app2")
SITE = "/etc/nginx/sites-available/reading-history.conf"
UPSTREAM = "/etc/nginx/reading-history/upstream.conf"
CERTIFICATE = "/etc/nginx/reading-history/server.crt"
PRIVATE_KEY = "/etc/nginx/reading-history/server.key"
STATE = "/var/lib/reading-history-lb"
ENTRY = Path(__file__).resolve().parents[1] / "entry.yml"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
# curl through the load balancer over HTTPS, trusting its certificate, with the
# status on a line of its own after the body.
HTTPS = f"curl -s -m 10 --cacert {CERTIFICATE} -w '\\n%{{http_code}}'"


def run_role(tmp_path, entry, check=False, **variables):
    """Run one entry point of the role on the load balancer; return the run."""
    settings = tmp_path / f"{entry}-{time.monotonic_ns()}.json"
    settings.write_text(json.dumps({"entry": entry, **variables}))
    command = [str(ANSIBLE_PLAYBOOK), "-i", os.environ["MOLECULE_INVENTORY_FILE"],
               str(ENTRY), "-e", f"@{settings}"] + (["--check"] if check else [])  # fmt: skip
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False,
        env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0"),
    )  # fmt: skip


def changes(run):
    """Return how many tasks changed something in a run that succeeded."""
    assert run.returncode == 0, run.stdout + run.stderr
    return int(
        re.search(r"molecule-lb\s*:\s*ok=\d+\s+changed=(\d+)", run.stdout).group(1)
    )


def said(run):
    """Return what a run printed, with line breaks and indents as single spaces."""
    return " ".join((run.stdout + run.stderr).split())


def split(result):
    body, _, status = result.stdout.rpartition("\n")
    return status.strip(), body.strip()


def through_lb(host, count, host_header=None, url="https://localhost/"):
    """Send count requests through the load balancer; return (status, body) pairs."""
    header = f"-H 'Host: {host_header}' " if host_header else ""
    answers = []
    for _ in range(count):
        result = host.run(f"{HTTPS} {header}{url}")
        assert result.rc == 0, result.stderr
        answers.append(split(result))
    return answers


def checksums(host, *paths):
    return {path: host.file(path).sha256sum for path in paths}


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


@pytest.fixture
def app_host():
    """An app host, as a client the maintenance page is not lifted for."""
    return testinfra.get_host(f"podman://{BACKENDS[0]}")


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
    """Ensure the enabled site is the role's file and its upstream names both app hosts."""
    link = host.file("/etc/nginx/sites-enabled/reading-history.conf")
    assert link.is_symlink
    assert link.linked_to == SITE
    site = host.file(SITE)
    assert site.user == "root"
    assert site.mode == 0o644
    assert f"include {UPSTREAM};" in site.content_string
    upstream = host.file(UPSTREAM).content_string
    for backend in BACKENDS:
        assert f"server {backend}:8000 max_fails=1" in upstream


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


@pytest.mark.parametrize(
    "url", ["https://molecule-lb/", "https://localhost/", "https://127.0.0.1/"]
)
def test_certificate_covers_each_name(host, url):
    """Ensure a client trusting the certificate accepts it under every name asked for."""
    result = host.run(f"{HTTPS} --resolve molecule-lb:443:127.0.0.1 {url}")
    assert result.rc == 0, result.stderr
    status, body = split(result)
    assert status == "200"
    assert body in BACKENDS


def test_certificate_names_nothing_else(host):
    """Verify the subjectAltName holds exactly the inventory name, localhost and 127.0.0.1."""
    san = host.check_output(
        f"openssl x509 -in {CERTIFICATE} -noout -ext subjectAltName"
    )
    entries = {entry.strip() for entry in san.splitlines()[1].split(",")}
    assert entries == {"DNS:molecule-lb", "DNS:localhost", "IP Address:127.0.0.1"}


def test_private_key_is_root_only(host):
    """Ensure the private key is readable by root alone."""
    key = host.file(PRIVATE_KEY)
    assert key.user == "root"
    assert key.group == "root"
    assert key.mode == 0o600
    assert host.file(CERTIFICATE).mode == 0o644


@pytest.mark.parametrize("version", ["tls1_2", "tls1_3"])
def test_tls_12_and_13_are_accepted(host, version):
    """Verify TLS 1.2 and 1.3 clients complete the handshake."""
    result = host.run(f"openssl s_client -connect 127.0.0.1:443 -{version} </dev/null")
    assert result.rc == 0, result.stderr
    expected = "TLSv1.2" if version == "tls1_2" else "TLSv1.3"
    assert f"New, {expected}, Cipher is " in result.stdout


@pytest.mark.parametrize("version", ["tls1", "tls1_1"])
def test_older_tls_is_refused_by_protocol(host, version):
    """Ensure nginx refuses TLS below 1.2 because of its protocol list.

    The client lowers its own security level so that it offers the old protocol;
    OpenSSL's defaults alone would end such a handshake with an internal error
    alert, the protocol list with a protocol version alert.
    """
    result = host.run(
        f"openssl s_client -connect 127.0.0.1:443 -{version} "
        "-cipher 'DEFAULT:@SECLEVEL=0' </dev/null"
    )
    assert result.rc != 0
    assert "alert protocol version" in result.stderr + result.stdout


def test_http_redirects_to_https_with_hsts(host):
    """Verify port 80 answers 301 to the same address over HTTPS, which sends HSTS."""
    answer = host.check_output(
        "curl -s -o /dev/null -w '%{http_code} %{redirect_url}' "
        "'http://127.0.0.1/api/v1/health?probe=1'"
    )
    assert answer == "301 https://127.0.0.1/api/v1/health?probe=1"
    headers = host.check_output(
        f"curl -s -D - -o /dev/null --cacert {CERTIFICATE} https://localhost/"
    )
    assert re.search(r"(?im)^strict-transport-security: max-age=31536000\s*$", headers)


def fingerprint(host):
    return host.check_output(
        f"openssl x509 -in {CERTIFICATE} -noout -fingerprint -sha256"
    )


def test_self_signed_certificate_is_made_again_for_new_names(host, tmp_path):
    """Verify a change of names makes a new certificate, covering the new names."""
    before = fingerprint(host)
    names = ["molecule-lb", "localhost", "127.0.0.1", "lb.molecule.test"]
    try:
        assert changes(run_role(tmp_path, "main", nginx_lb_tls_names=names)) > 0
        assert fingerprint(host) != before
        result = host.run(
            f"{HTTPS} --resolve lb.molecule.test:443:127.0.0.1 https://lb.molecule.test/"
        )
        assert result.rc == 0, result.stderr
    finally:
        assert changes(run_role(tmp_path, "main")) > 0
    san = host.check_output(
        f"openssl x509 -in {CERTIFICATE} -noout -ext subjectAltName"
    )
    assert "lb.molecule.test" not in san


def test_http_keeps_serving_without_redirect(host, tmp_path):
    """Ensure nginx_lb_http_redirect=false keeps port 80 proxying, without HSTS.

    The same run asks for a renewal margin longer than a new certificate lasts, so
    the certificate, due for renewal, is made again.
    """
    before = fingerprint(host)
    try:
        run = run_role(
            tmp_path, "main", nginx_lb_http_redirect=False, nginx_lb_tls_renew_days=400
        )
        assert changes(run) > 0
        answers = through_lb(host, 4, url="http://127.0.0.1/")
        assert {status for status, _ in answers} == {"200"}
        assert {body for _, body in answers} == set(BACKENDS)
        headers = host.check_output(
            f"curl -s -D - -o /dev/null --cacert {CERTIFICATE} https://localhost/"
        )
        assert "strict-transport-security" not in headers.lower()
        assert fingerprint(host) != before
    finally:
        assert changes(run_role(tmp_path, "main")) > 0
    assert (
        host.check_output("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1/")
        == "301"
    )


def test_rate_limit_answers_429_after_the_burst():
    """Verify a client over rate and burst gets 429 with Retry-After and a JSON reason."""
    # The second app host is a client no other test sends requests from.
    client = testinfra.get_host(f"podman://{BACKENDS[1]}")
    # curl fetches the 70 addresses of the range one after the other, on one
    # connection, keeping each answer with its headers.
    statuses = client.check_output(
        "rm -rf /srv/burst && curl -sk -i --create-dirs -o '/srv/burst/#1' "
        "-w '%{http_code}\\n' 'https://molecule-lb/?n=[1-70]'"
    ).split()
    assert len(statuses) == 70
    # 40 on top of the rate; the rate adds at most a couple within the run.
    assert statuses[:40] == ["200"] * 40
    assert statuses.count("429") >= 20
    limited = len(statuses) - statuses[::-1].index("429")
    answer = client.file(f"/srv/burst/{limited}").content_string
    head, _, body = answer.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.1 429")
    assert re.search(r"(?im)^retry-after: 1$", head)
    assert re.search(r"(?im)^content-type: application/json$", head)
    assert json.loads(body)["reason"] == "rate_limited"


def test_maintenance_page(host, app_host, tmp_path):
    """Ensure maintenance shows the page to clients but lets 127.0.0.1 through.

    Putting it up twice changes nothing the second time, main leaves it up, and
    taking it down brings the app back.
    """
    message = "Back at 03:00 <UTC> & sooner if we can."
    flag = host.file(f"{STATE}/maintenance")
    try:
        assert changes(run_role(tmp_path, "maintenance", nginx_lb_maintenance=True,
                                nginx_lb_maintenance_message=message)) > 0  # fmt: skip
        for method in ("GET", "POST"):
            answer = app_host.check_output(
                f"curl -sk -X {method} -D - https://molecule-lb/api/v1/health"
            ).replace("\r\n", "\n")
            head, _, body = answer.partition("\n\n")
            assert head.startswith("HTTP/1.1 503"), head
            assert re.search(r"(?im)^retry-after: 300$", head)
            assert re.search(r"(?im)^content-type: text/html", head)
            assert "Back at 03:00 &lt;UTC&gt; &amp; sooner if we can." in body
        # Operators on the load balancer itself still reach the app.
        assert {status for status, _ in through_lb(host, 4)} == {"200"}

        assert changes(run_role(tmp_path, "maintenance", nginx_lb_maintenance=True,
                                nginx_lb_maintenance_message=message)) == 0  # fmt: skip
        run_role(tmp_path, "main").check_returncode()
        assert flag.exists
        assert (
            app_host.check_output(
                "curl -sk -o /dev/null -w '%{http_code}' https://molecule-lb/"
            )
            == "503"
        )
    finally:
        off = run_role(tmp_path, "maintenance", nginx_lb_maintenance=False)
    assert changes(off) > 0
    assert "Maintenance is now off" in said(off)
    assert not flag.exists
    assert app_host.check_output("curl -sk https://molecule-lb/") in BACKENDS
    assert changes(run_role(tmp_path, "maintenance", nginx_lb_maintenance=False)) == 0


def test_drain_and_undrain(host, tmp_path):
    """Verify a drained backend gets no request, stays drained through main, and comes back.

    Draining the other one too, the last one left, is refused without a change.
    """
    first, second = BACKENDS
    try:
        drained = run_role(tmp_path, "drain", nginx_lb_backend=first)
        assert changes(drained) > 0
        assert f"{first} is drained: the requests it was serving ended within" in said(
            drained
        )
        assert f"server {first}:8000 down;" in host.file(UPSTREAM).content_string
        assert host.file(f"{STATE}/drained/{first}").exists
        # The old workers are gone, so nothing still holds a request to it.
        assert "shutting down" not in host.check_output("ps -eo args")
        assert through_lb(host, 10) == [("200", second)] * 10

        assert changes(run_role(tmp_path, "main")) == 0
        assert through_lb(host, 6) == [("200", second)] * 6

        before = checksums(host, UPSTREAM, SITE)
        refused = run_role(tmp_path, "drain", nginx_lb_backend=second)
        assert refused.returncode != 0
        assert (
            f"refusing to drain {second}: it is the last backend not drained"
            in said(refused)
        )
        assert checksums(host, UPSTREAM, SITE) == before
        assert not host.file(f"{STATE}/drained/{second}").exists
    finally:
        undrained = run_role(tmp_path, "undrain", nginx_lb_backend=first)
    assert changes(undrained) > 0
    assert f"{first} gets requests again" in said(undrained)
    assert not host.file(f"{STATE}/drained/{first}").exists
    assert {body for _, body in through_lb(host, 10)} == set(BACKENDS)


def test_drain_in_check_mode_changes_nothing(host, tmp_path):
    """Ensure --check reports the drain it would make and makes none."""
    before = checksums(host, UPSTREAM)
    run = run_role(tmp_path, "drain", check=True, nginx_lb_backend=BACKENDS[0])
    assert changes(run) > 0
    assert f"Check mode: {BACKENDS[0]} would be drained" in said(run)
    assert checksums(host, UPSTREAM) == before
    assert not host.file(f"{STATE}/drained/{BACKENDS[0]}").exists
    assert {body for _, body in through_lb(host, 6)} == set(BACKENDS)


def test_drain_of_an_unknown_backend_is_refused(tmp_path):
    """Verify a backend name the load balancer does not have is refused, naming the choices."""
    run = run_role(tmp_path, "drain", nginx_lb_backend="molecule-lb-app9")
    assert run.returncode != 0
    assert "molecule-lb-app9 is not a backend of this load balancer" in said(run)


@pytest.fixture
def other_key(host):
    """A private key that belongs to no certificate the load balancer has."""
    path = "/srv/molecule-other.key"
    host.run_test(
        f"openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {path}"
    )
    yield host.file(path).content_string
    host.run_test(f"rm -f {path}")


def test_key_not_matching_the_certificate_is_refused(host, tmp_path, other_key):
    """Ensure a key of another certificate is refused, naming why, before any change."""
    watched = (UPSTREAM, SITE, CERTIFICATE, PRIVATE_KEY)
    before = checksums(host, *watched)
    run = run_role(tmp_path, "main", nginx_lb_tls_certificate=host.file(CERTIFICATE).content_string,
                   nginx_lb_tls_private_key=other_key)  # fmt: skip
    assert run.returncode != 0
    assert "nginx_lb_tls_private_key does not match nginx_lb_tls_certificate" in said(
        run
    )
    assert re.search(r"changed=0\s", run.stdout)
    assert checksums(host, *watched) == before
    # The key stays out of the output.
    assert other_key.splitlines()[1] not in run.stdout + run.stderr


def test_certificate_without_key_is_refused(host, tmp_path):
    """Verify a certificate given without its key is refused before any change."""
    run = run_role(
        tmp_path, "main", nginx_lb_tls_certificate=host.file(CERTIFICATE).content_string
    )
    assert run.returncode != 0
    assert (
        "nginx_lb_tls_certificate is set but nginx_lb_tls_private_key is empty"
        in said(run)
    )
    assert re.search(r"changed=0\s", run.stdout)


def test_configuration_nginx_refuses_is_put_back(host, tmp_path):
    """Ensure a site nginx -t rejects is replaced by the previous one, and nginx keeps serving."""
    before = checksums(host, UPSTREAM, SITE)
    run = run_role(tmp_path, "main", nginx_lb_maintenance_allow=["not-a-network"])
    assert run.returncode != 0
    assert (
        "nginx refused the new configuration, so the previous files were put back"
        in said(run)
    )
    assert checksums(host, UPSTREAM, SITE) == before
    assert host.run("nginx -t").rc == 0
    assert not host.run(f"ls {SITE}.*").stdout.strip()
    assert {status for status, _ in through_lb(host, 2)} == {"200"}
