"""Integration tests of prometheus_gate against a real Prometheus on loopback.

The tests start Debian's Prometheus (installed by tools/setup) scraping a small
exporter of their own every second, with one alert rule, and run the module
against it while they change what the exporter reports.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from module_harness import run_module_process
from pgserver import free_port

PROMETHEUS = shutil.which("prometheus")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="Prometheus is installed by tools/setup"
)

HEALTHY = {"app1": 0.001, "app2": 0.002}


class Exporter:
    """Serves the error share of each host as gauges, as the test sets them."""

    def __init__(self) -> None:
        self.shares = dict(HEALTHY)
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                lines = ["# TYPE service_error_share gauge"] + [
                    f'service_error_share{{host="{host}"}} {share}'
                    for host, share in exporter.shares.items()
                ]
                body = ("\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


PROMETHEUS_CONFIG = """
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [rules.yml]
scrape_configs:
  - job_name: probe
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""

RULES = """
groups:
  - name: probe
    rules:
      - alert: ProbeErrorShareHigh
        expr: service_error_share > 0.5
        labels:
          severity: P1
"""


def wait_until_ready(url: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"Prometheus at {url} did not become ready")


def wait_for_series(url: str, query: str, count: int, seconds: float = 20) -> None:
    """Wait until Prometheus answers the query with `count` series: it has seen a change."""
    deadline = time.monotonic() + seconds
    address = f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    while time.monotonic() < deadline:
        with urllib.request.urlopen(address, timeout=2) as reply:
            if len(json.load(reply)["data"]["result"]) == count:
                return
        time.sleep(0.2)
    raise AssertionError(f"Prometheus never answered {query!r} with {count} series")


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    serving = Exporter()
    yield serving
    serving.stop()


@pytest.fixture(scope="module")
def prometheus(exporter: Exporter, tmp_path_factory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("prometheus")
    (folder / "prometheus.yml").write_text(PROMETHEUS_CONFIG.format(port=exporter.port))
    (folder / "rules.yml").write_text(RULES)
    port = free_port()
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={folder / 'prometheus.yml'}",
         f"--storage.tsdb.path={folder / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(autouse=True)
def healthy_shares(prometheus: str, exporter: Exporter) -> Iterator[None]:
    """Start every test from healthy shares that Prometheus has already scraped."""
    exporter.shares = dict(HEALTHY)
    wait_for_series(prometheus, "service_error_share < 0.01", len(HEALTHY))
    wait_for_series(prometheus, 'ALERTS{alertstate="firing"}', 0)
    yield
    exporter.shares = dict(HEALTHY)


def gate(url: str, gates: list[dict], deadline: int = 20) -> tuple[int, dict]:
    rc, result, _ = run_module_process(
        "prometheus_gate",
        {"url": url, "gates": gates, "deadline": deadline, "interval": 1, "timeout": 2},
    )
    return rc, result


SCRAPED = {"name": "the exporter is scraped", "query": 'up{job="probe"}', "min": 1}
ERROR_SHARE = {"name": "error share per host", "query": "service_error_share", "max": 0.01}
NO_P1 = {
    "name": "no P1 alert firing",
    "query": 'count(ALERTS{alertstate="firing", severity="P1"})',
    "max": 0,
    "if_empty": "pass",
}


def test_healthy_metrics_pass_every_gate(prometheus):
    """Ensure gates within their bounds pass, with the series they read returned."""
    rc, result = gate(prometheus, [SCRAPED, ERROR_SHARE, NO_P1])

    assert rc == 0, result["msg"]
    assert [outcome["passed"] for outcome in result["gates"]] == [True, True, True]
    hosts = {item["labels"]["host"] for item in result["gates"][1]["series"]}
    assert hosts == {"app1", "app2"}


def test_a_breach_fails_naming_the_series_and_value(prometheus, exporter):
    """Verify one host over the bound fails the gate, naming the host and the value."""
    exporter.shares["app2"] = 0.2
    wait_for_series(prometheus, "service_error_share > 0.1", 1)

    rc, result = gate(prometheus, [ERROR_SHARE], deadline=4)

    assert rc == 1
    assert 'error share per host: {host="app2", instance=' in result["msg"]
    assert "= 0.2 (above 0.01)" in result["msg"]
    assert "app1" not in result["msg"]


def test_the_gate_waits_for_metrics_to_recover(prometheus, exporter):
    """Ensure a breach that ends before the deadline lets the gate pass."""
    exporter.shares["app1"] = 0.3
    wait_for_series(prometheus, "service_error_share > 0.1", 1)
    threading.Timer(3, lambda: exporter.shares.update(app1=0.001)).start()

    rc, result = gate(prometheus, [ERROR_SHARE], deadline=30)

    assert rc == 0, result["msg"]
    assert result["rounds"] > 1


def test_a_firing_alert_fails_the_alert_gate(prometheus, exporter):
    """Verify an alert of the chosen severity, firing in Prometheus, holds the release."""
    exporter.shares["app1"] = 0.9
    wait_for_series(prometheus, 'ALERTS{alertstate="firing"}', 1)

    rc, result = gate(prometheus, [NO_P1], deadline=4)

    assert rc == 1
    assert "no P1 alert firing: {} = 1 (above 0)" in result["msg"]


def test_a_query_with_no_series_fails_unless_allowed(prometheus):
    """Ensure an empty answer is no pass by default, and is one when the gate says so."""
    missing = {"name": "a metric nobody exports", "query": "not_exported_anywhere", "max": 1}

    rc, result = gate(prometheus, [missing], deadline=2)
    allowed_rc, _ = gate(prometheus, [{**missing, "if_empty": "pass"}], deadline=2)

    assert rc == 1
    assert "a metric nobody exports: no data" in result["msg"]
    assert allowed_rc == 0


def test_a_malformed_query_names_prometheus_error(prometheus):
    """Verify Prometheus's own complaint about the query is shown."""
    rc, result = gate(prometheus, [{"name": "broken", "query": "sum(", "max": 1}], deadline=1)

    assert rc == 1
    assert "Prometheus refused the query (HTTP 400)" in result["msg"]


def test_an_unreachable_prometheus_is_named(tmp_path):
    """Ensure a Prometheus that does not answer fails the gates, naming the address."""
    url = f"http://127.0.0.1:{free_port()}"

    rc, result = gate(url, [SCRAPED], deadline=1)

    assert rc == 1
    assert f"metric gates at {url} still failing" in result["msg"]
    assert "Prometheus did not answer" in result["msg"]


def test_a_target_that_stops_answering_fails_the_scrape_gate(prometheus, exporter):
    """Verify a target Prometheus can no longer scrape fails the up gate.

    Runs last: it stops the exporter the other tests read.
    """
    exporter.stop()
    wait_for_series(prometheus, 'up{job="probe"} == 0', 1)

    rc, result = gate(prometheus, [SCRAPED], deadline=4)

    assert rc == 1
    assert 'the exporter is scraped: {instance="127.0.0.1:' in result["msg"]
    assert "= 0 (below 1)" in result["msg"]
