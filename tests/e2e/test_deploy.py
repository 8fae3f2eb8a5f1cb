"""Run the release pipeline on the lab: deploy, redeploy, a failed release, rollback.

The tests share one lab and run in file order: the first deploy installs the
repository's app, later tests deploy variants of it on top.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import uuid

import requests
from conftest import (
    create_token,
    deployment_records,
    lab_environment,
    releases_serving,
    run_playbook,
    steady_writes,
)

SUBSTANTIVE_PHASES = ("release", "migrate")
DEPLOY_PHASES = ["preflight", "build", "backup", "migrate", "release", "verify", "unlock"]
LOCK_FILE = "/var/lib/reading-history/deploy.lock"


def test_deploy_serves_health_database_and_exports(lab, first_release):
    """Verify a deploy leaves the service answering through the load balancer."""
    health = requests.get(f"{lab}/health", timeout=5)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"

    database = requests.get(f"{lab}/api/v1/health/db", timeout=5)
    assert database.status_code == 200
    found = database.json()["schema_version"]
    assert found["found"] == found["expected"] > 0

    user = uuid.uuid4().int % 1_000_000_000
    auth = {"Authorization": f"Bearer {create_token(user)}"}
    read = {"article_id": 42, "feed_id": 7, "category": "science, \"space\""}
    recorded = requests.post(
        f"{lab}/api/v1/users/{user}/history", json=read, headers=auth, timeout=5
    )
    assert recorded.status_code == 201

    exported = requests.get(
        f"{lab}/api/v1/users/{user}/history/export",
        params={"format": "csv"}, headers=auth, timeout=5,
    )  # fmt: skip
    assert exported.status_code == 200
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [row["category"] for row in rows] == [read["category"]]

    assert releases_serving() == {first_release}


def lock_holder() -> dict | None:
    """Return the run holding the lab's deploy lock, or None when it is free."""
    shown = subprocess.run(
        ["podman", "exec", "lab-db1", "cat", LOCK_FILE],
        env=lab_environment(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    return json.loads(shown.stdout) if shown.returncode == 0 else None


def hold_lock_elsewhere(holder: dict) -> None:
    subprocess.run(
        ["podman", "exec", "--interactive", "lab-db1", "sh", "-c", f"cat > {LOCK_FILE}"],
        input=json.dumps(holder), env=lab_environment(), text=True, check=True,
    )  # fmt: skip


def test_lock_held_from_another_controller_stops_a_deploy(first_release):
    """Ensure a deploy started while another controller's run holds the lock stops first.

    It stops in the preflight, before any host changes, naming the holder.
    """
    elsewhere = {"run_id": "bastion-4242-7", "operation": "migrate", "operator": "chen",
                 "controller": "bastion.example.net", "pid": 4242, "pid_started": 7}
    hold_lock_elsewhere(elsewhere)
    try:
        run = run_playbook("deploy.yml")
    finally:
        subprocess.run(
            ["podman", "exec", "lab-db1", "rm", "-f", LOCK_FILE],
            env=lab_environment(), check=True,
        )  # fmt: skip

    assert run.returncode != 0
    assert "FAILED in phase 'preflight' on host db1" in run.output
    assert "held by run bastion-4242-7 running migrate by chen from bastion.example.net" in (
        run.output
    )
    assert "release_preflight_lock_break=true" in run.output
    refused = deployment_records()[-1]
    assert [phase["name"] for phase in refused["phases"]] == ["preflight"]


def test_deploy_is_recorded_with_phases_release_and_backup(first_release):
    """Verify the deployment log holds the deploy: who, phases, release, backup."""
    deploys = [record for record in deployment_records() if record["operation"] == "deploy"]
    assert deploys, "no deploy was recorded"
    record = deploys[0]

    assert record["outcome"] == "succeeded"
    assert record["failure"] is None
    assert record["operator"] == "e2e-tests"
    assert record["automation_commit"]
    assert [phase["name"] for phase in record["phases"]] == DEPLOY_PHASES
    assert all(phase["started_at"] <= phase["ended_at"] for phase in record["phases"])
    assert record["started_at"] <= record["phases"][0]["started_at"]

    assert record["stats"]["_run"]["release"] == first_release
    assert {record["stats"][host]["serving"] for host in ("app1", "app2")} == {
        first_release
    }
    backup = record["reported"]["pg_backup"]["db1"]
    assert backup["verified"] is True
    assert backup["dest"].endswith(".dump")


def test_second_deploy_changes_nothing_in_release_and_migrate(first_release):
    """Ensure deploying the same release again reports no change where it matters."""
    run = run_playbook("deploy.yml", as_json=True)
    assert run.returncode == 0, run.output[-5000:]

    changed = [
        f"{play['play']['name']} / {task['task']['name']} on {host}"
        for play in run.plays()
        if play["play"]["name"].split("|")[0].strip() in SUBSTANTIVE_PHASES
        for task in play["tasks"]
        for host, result in task["hosts"].items()
        if result.get("changed")
    ]
    assert changed == []
    assert releases_serving() == {first_release}


def deploy_release_that_never_answers(source):
    """Deploy an app that never becomes healthy, giving each host 20 s to try."""
    return run_playbook(
        "deploy.yml",
        "-e", f"app_build_source={source}",
        "-e", "app_release_health_deadline=20",
    )  # fmt: skip


def test_release_that_cannot_start_leaves_previous_serving(
    lab, first_release, app_variant
):
    """Verify a release whose app fails at import stops, names host and release."""
    broken = app_variant('raise RuntimeError("this release cannot start")')

    run = deploy_release_that_never_answers(broken)

    assert run.returncode != 0
    assert "FAILED in phase 'release' on host app1" in run.output
    assert "1.0.0-" in run.output.split("FAILED in phase 'release'")[1]
    assert "is serving again on this host" in run.output
    failed = deployment_records()[-1]
    assert failed["outcome"] == "failed"
    assert failed["failure"]["phase"] == "release"
    assert failed["failure"]["host"] == "app1"
    assert "app2" not in failed["stats"]
    # The failed run keeps the deploy lock: nobody deploys over it unseen.
    assert lock_holder()["run_id"] == failed["reported"]["deploy_lock"]["db1"]["holder"]["run_id"]
    assert releases_serving() == {first_release}
    assert requests.get(f"{lab}/health", timeout=5).json()["release"] == first_release


# Appended to the package, this makes a release that starts and accepts connections
# but answers every request with 503.
ANSWERS_ONLY_ERRORS = """
import starlette.applications as _applications
_serve = _applications.Starlette.__call__
async def _refuse(self, scope, receive, send):
    if scope["type"] != "http":
        return await _serve(self, scope, receive, send)
    await send({"type": "http.response.start", "status": 503, "headers": []})
    await send({"type": "http.response.body", "body": b""})
_applications.Starlette.__call__ = _refuse
"""


def test_release_answering_errors_never_reaches_clients(
    lab, first_release, app_variant
):
    """Ensure a drained host gets traffic again only once its release is healthy.

    Without draining, the load balancer sent writes to the failing release while
    the deploy waited for it: 69 of 645 clients got 503 in a measured run.
    """
    failing = app_variant(ANSWERS_ONLY_ERRORS)

    with steady_writes() as traffic:
        run = deploy_release_that_never_answers(failing)

    assert run.returncode != 0
    assert "FAILED in phase 'release' on host app1" in run.output
    assert "is serving again on this host" in run.output
    assert traffic.sent > 100
    assert traffic.failures() == []
    assert releases_serving() == {first_release}


# Appended to the package, this makes a release that starts and answers its health
# checks, but fails every export: the smoke tests through the load balancer catch it.
EXPORTS_FAIL = """
import starlette.applications as _applications
_serve = _applications.Starlette.__call__
async def _fail_exports(self, scope, receive, send):
    if scope["type"] == "http" and scope["path"].endswith("/export"):
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    return await _serve(self, scope, receive, send)
_applications.Starlette.__call__ = _fail_exports
"""


def test_release_failing_its_checks_is_rolled_back(lab, first_release, app_variant):
    """Ensure a release every host accepted, but the smoke tests refuse, is taken back."""
    broken_exports = app_variant(EXPORTS_FAIL)

    run = run_playbook("deploy.yml", "-e", f"app_build_source={broken_exports}")

    assert run.returncode != 0
    assert "FAILED in phase 'verify'" in run.output
    assert "app1, app2 went back to the release they served before" in run.output
    assert releases_serving() == {first_release}
    rolled_back = deployment_records()[-1]["stats"]
    assert rolled_back["app1"]["serving"] == first_release
    assert rolled_back["app1"]["rolled_back_from"] != first_release


def test_rollback_puts_previous_release_back(lab, first_release, app_variant):
    """Ensure deploy and rollback switch every host without losing a write."""
    second = app_variant("# a second release of the same version")
    left_by_failed_run = lock_holder()
    with steady_writes() as traffic:
        run = run_playbook("deploy.yml", "-e", f"app_build_source={second}")
    assert run.returncode == 0, run.output[-5000:]
    # Both hosts restarted under load, and no client saw it.
    assert traffic.sent > 100
    assert traffic.failures() == []
    # That run's process is gone, so this controller took its lock over.
    taken_over = deployment_records()[-1]["stats"]["_run"]["lock_taken_over_from"]
    assert taken_over["run_id"] == left_by_failed_run["run_id"]
    assert lock_holder() is None
    second_release = releases_serving()
    assert len(second_release) == 1
    assert second_release != {first_release}

    with steady_writes() as traffic:
        run = run_playbook("rollback.yml")
    assert run.returncode == 0, run.output[-5000:]
    assert traffic.sent > 50
    assert traffic.failures() == []
    assert releases_serving() == {first_release}
    assert requests.get(f"{lab}/api/v1/health/db", timeout=5).status_code == 200

    again = run_playbook("rollback.yml")
    assert again.returncode != 0
    assert "no previous release to roll back to" in again.output
