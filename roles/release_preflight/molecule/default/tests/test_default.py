"""Run the preflight the way the playbooks do and check that each check refuses.

Each test writes an inventory of its own (localhost in the groups the operations
need) and runs a one-play playbook applying the role with the settings under test.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[5]
BIN = REPO / ".venv" / "bin"
APP_VERSION = re.search(
    r'(?m)^version\s*=\s*"([^"]+)"', (REPO / "app" / "pyproject.toml").read_text()
).group(1)
APPROVED = {"version": APP_VERSION, "product_owner": "Ana Lima", "dba": "Chen Wei"}
PLAYBOOK = """
- name: preflight | Probe
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  roles:
    - role: release_preflight
"""
HOSTS = """
all:
  hosts:
    localhost:
      ansible_connection: local
  children:
    db: {hosts: {localhost: {}}}
    app: {hosts: {localhost: {}}}
    lb: {hosts: {localhost: {}}}
"""


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    folder = tmp_path / "inventory"
    (folder / "group_vars" / "all").mkdir(parents=True)
    (folder / "hosts.yml").write_text(HOSTS)
    return folder


def preflight(tmp_path: Path, inventory: Path, **settings) -> subprocess.CompletedProcess:
    playbook = tmp_path / "probe.yml"
    playbook.write_text(PLAYBOOK)
    settings.setdefault("release_preflight_app_source", str(REPO / "app"))
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook),
         "-e", json.dumps(settings)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
                 ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0"),
    )  # fmt: skip


def closed_window() -> dict:
    """A window open on every day but today and tomorrow, in UTC: closed now."""
    today = datetime.datetime.now(datetime.UTC).weekday()
    names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    days = [name for number, name in enumerate(names) if number not in (today, (today + 1) % 7)]
    return {"days": days, "start": "00:00", "end": "23:59", "timezone": "UTC"}


def test_deploy_without_an_approval_is_refused_naming_it(tmp_path, inventory):
    """Ensure a missing approval stops a deploy, naming the role that did not approve."""
    run = preflight(
        tmp_path, inventory,
        release_preflight_operation="deploy",
        release_preflight_approvals_required=["product_owner", "tech_lead", "dba"],
        release_preflight_approvals=APPROVED,
    )  # fmt: skip

    assert run.returncode != 0
    assert f"release {APP_VERSION} lacks the approval of tech_lead" in run.stdout


def test_approvals_of_another_version_are_refused(tmp_path, inventory):
    """Verify approvals count only for the version about to be built."""
    run = preflight(
        tmp_path, inventory,
        release_preflight_operation="deploy",
        release_preflight_approvals_required=["product_owner"],
        release_preflight_approvals={**APPROVED, "version": "0.9.0"},
    )  # fmt: skip

    assert run.returncode != 0
    assert "approvals given are for version '0.9.0'" in run.stdout
    assert f"the release about to be built is {APP_VERSION}" in run.stdout


def test_every_approval_given_passes(tmp_path, inventory):
    """Ensure a deploy with all its approvals for this version goes ahead."""
    run = preflight(
        tmp_path, inventory,
        release_preflight_operation="deploy",
        release_preflight_approvals_required=["product_owner", "dba"],
        release_preflight_approvals=APPROVED,
    )  # fmt: skip

    assert run.returncode == 0, run.stdout[-2000:]


def test_deploy_outside_the_window_is_refused(tmp_path, inventory):
    """Verify the window stops a deploy and says when it opens next."""
    run = preflight(
        tmp_path, inventory,
        release_preflight_operation="deploy",
        release_preflight_window=closed_window(),
    )  # fmt: skip

    assert run.returncode != 0
    assert "outside the deployment window" in run.stdout
    assert "the next one opens" in run.stdout


def test_a_reason_takes_a_deploy_through_a_closed_window(tmp_path, inventory):
    """Ensure an override reason lets the deploy go ahead, with a warning."""
    run = preflight(
        tmp_path, inventory,
        release_preflight_operation="deploy",
        release_preflight_window=closed_window(),
        release_preflight_window_override="fix for a data leak",
    )  # fmt: skip

    assert run.returncode == 0, run.stdout[-2000:]
    assert "going ahead because: fix for a data leak" in run.stdout + run.stderr


def test_rollback_is_held_by_neither_approvals_nor_window(tmp_path, inventory):
    """Verify the way back from trouble is never blocked by the release gates."""
    run = preflight(
        tmp_path, inventory,
        release_preflight_operation="rollback",
        release_preflight_approvals_required=["product_owner"],
        release_preflight_window=closed_window(),
    )  # fmt: skip

    assert run.returncode == 0, run.stdout[-2000:]


def test_vault_file_in_plain_text_is_refused(tmp_path, inventory):
    """Ensure a vault file left unencrypted stops the run, named, its content unshown."""
    vault = inventory / "group_vars" / "all" / "vault.yml"
    vault.write_text("vault_db_password: plain-text-secret-1f3a\n")

    run = preflight(tmp_path, inventory, release_preflight_require_encrypted_vault=True)

    assert run.returncode != 0
    assert f"vault files in plain text: {vault}" in run.stdout
    assert "plain-text-secret-1f3a" not in run.stdout + run.stderr


def test_empty_secret_is_named_and_not_shown(tmp_path, inventory):
    """Verify a required secret without a value is named; a set one is never printed."""
    (inventory / "group_vars" / "all" / "secrets.yml").write_text(
        "vault_app_password: set-secret-8c2d\nvault_admin_password: ''\n"
    )

    run = preflight(
        tmp_path, inventory,
        release_preflight_required_secrets=["vault_app_password", "vault_admin_password",
                                            "vault_never_defined"],
    )  # fmt: skip

    assert run.returncode != 0
    assert "secrets without a value: vault_admin_password, vault_never_defined" in run.stdout
    assert "set-secret-8c2d" not in run.stdout + run.stderr
