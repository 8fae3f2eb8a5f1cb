"""The load balancer in front of the lab: TLS, and the maintenance page."""

from __future__ import annotations

import subprocess

import requests
from conftest import REPO, lab_environment, run_playbook

LAB_CERTIFICATE = REPO / ".lab" / "lb-certificate.pem"


def from_inside_the_lab(path: str) -> tuple[int, dict[str, str], str]:
    """Ask the load balancer from app1, a client the maintenance page does not let by."""
    completed = subprocess.run(
        ["podman", "exec", "lab-app1", "curl", "-s", "-i", f"http://lb1{path}"],
        env=lab_environment(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    head, _, body = completed.stdout.replace("\r\n", "\n").partition("\n\n")
    status_line, *header_lines = head.split("\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, body


def test_https_answers_with_the_certificate_provision_copied(lab, first_release):
    """Verify the service answers over TLS with the certificate the controller trusts."""
    answer = requests.get(
        "https://localhost:8443/health", verify=str(LAB_CERTIFICATE), timeout=5
    )

    assert answer.status_code == 200
    assert answer.json()["release"] == first_release


def test_maintenance_page_turns_clients_away_but_lets_operators_by(lab, first_release):
    """Ensure the page goes up and down without a reload, and operators pass it."""
    up = run_playbook("maintenance.yml", "-e", "maintenance=on")
    assert up.returncode == 0, up.output[-3000:]
    try:
        status, headers, body = from_inside_the_lab("/health")
        assert status == 503
        assert int(headers["retry-after"]) > 0
        assert "maintenance" in body.lower()
        # This machine is allowed through, so a release can be checked behind it.
        assert requests.get(f"{lab}/health", timeout=5).status_code == 200
    finally:
        down = run_playbook("maintenance.yml", "-e", "maintenance=off")
    assert down.returncode == 0, down.output[-3000:]

    status, _, body = from_inside_the_lab("/health")
    assert status == 200
    assert first_release in body


def test_maintenance_needs_to_be_told_on_or_off(lab):
    """Verify the playbook refuses to guess, before touching the load balancer."""
    run = run_playbook("maintenance.yml")

    assert run.returncode != 0
    assert "maintenance=on or -e maintenance=off" in run.output
