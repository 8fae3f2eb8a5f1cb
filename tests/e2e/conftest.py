"""Fixtures of the end-to-end tests: the lab, and a way to run the playbooks on it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
LAB_URL = "http://127.0.0.1:8080"
APP_HOSTS = ("app1", "app2")
# The deployment records of this test session, apart from the operators' own log.
DEPLOYMENT_LOG = Path(tempfile.mkdtemp(prefix="e2e-deployments-")) / "log.jsonl"


@dataclass
class PlaybookRun:
    returncode: int
    output: str

    def plays(self) -> list[dict]:
        """Return the plays of a run made with the JSON callback."""
        start = self.output.index("{")
        document, _ = json.JSONDecoder().raw_decode(self.output[start:])
        return document["plays"]


def lab_environment() -> dict[str, str]:
    return dict(
        os.environ,
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        CONTAINERS_CONF=str(REPO / ".lab" / "containers.conf"),
        ANSIBLE_FORCE_COLOR="0",
        READING_HISTORY_DEPLOYMENT_LOG=str(DEPLOYMENT_LOG),
        READING_HISTORY_OPERATOR="e2e-tests",
    )


def deployment_records() -> list[dict]:
    """Return the records the playbooks of this session wrote, oldest first."""
    if not DEPLOYMENT_LOG.exists():
        return []
    return [json.loads(line) for line in DEPLOYMENT_LOG.read_text().splitlines()]


def run_playbook(name: str, *extra: str, as_json: bool = False) -> PlaybookRun:
    """Run a playbook against the lab and return its exit code and output."""
    env = lab_environment()
    if as_json:
        # Only the phase report may print beside the JSON, and only after it.
        env.update(
            ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
            ANSIBLE_CALLBACKS_ENABLED="phase_report",
        )
    completed = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", "inventories/lab",
         f"playbooks/{name}", *extra],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    return PlaybookRun(completed.returncode, completed.stdout + completed.stderr)


def host_health(host: str) -> dict:
    """Ask one app host directly, from inside its container, which release it runs."""
    completed = subprocess.run(
        ["podman", "exec", f"lab-{host}", "curl", "-sf", "http://127.0.0.1:8000/health"],
        env=lab_environment(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(completed.stdout)


def create_token(user_id: int) -> str:
    """Make an API token for a user with the installed release's own command."""
    completed = subprocess.run(
        ["podman", "exec", "lab-app1", "systemd-run", "--quiet", "--wait", "--pipe",
         "--collect",
         "--property=EnvironmentFile=/opt/reading-history/current/reading-history.env",
         "--property=User=reading-history",
         "/opt/reading-history/current/bin/reading-history", "tokens", "create",
         "--user-id", str(user_id), "--name", f"e2e-{uuid.uuid4().hex[:8]}"],
        env=lab_environment(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return completed.stdout.strip()


def releases_serving() -> set[str]:
    return {host_health(host)["release"] for host in APP_HOSTS}


@pytest.fixture(scope="session")
def lab() -> Iterator[str]:
    """Start the lab and provision its servers; yield the load balancer's address."""
    for playbook in ("lab.yml", "provision.yml"):
        run = run_playbook(playbook)
        assert run.returncode == 0, run.output[-3000:]
    yield LAB_URL


@pytest.fixture(scope="session")
def first_release(lab: str) -> str:
    """Deploy the repository's app and return the release it installed."""
    run = run_playbook("deploy.yml")
    assert run.returncode == 0, run.output[-5000:]
    return requests.get(f"{lab}/health", timeout=5).json()["release"]


@pytest.fixture
def app_variant(tmp_path: Path):
    """Copy the app and change it, giving a different release of the same version."""

    def make(extra_code: str) -> Path:
        source = tmp_path / "app"
        shutil.copytree(
            REPO / "app", source, ignore=shutil.ignore_patterns("dist", "*.egg-info")
        )
        package_init = source / "src" / "reading_history" / "__init__.py"
        package_init.write_text(package_init.read_text() + "\n" + extra_code + "\n")
        return source

    return make


@dataclass
class Traffic:
    """What the clients of a steady stream of requests saw."""

    statuses: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + len(self.errors)

    def failures(self) -> list[str]:
        """Describe every request that did not succeed."""
        bad = [f"{count} x {status}" for status, count in self.statuses.items()
               if status != 201]
        return bad + self.errors


@contextmanager
def steady_writes(per_second: float = 8) -> Iterator[Traffic]:
    """Record reads through the load balancer at a steady rate while the block runs.

    POSTs, because nginx cannot safely send one again to another host: a write that
    reaches a host as it stops is lost unless the release drains the host first.
    """
    user = uuid.uuid4().int % 1_000_000_000
    headers = {"Authorization": f"Bearer {create_token(user)}"}
    traffic = Traffic()
    stop = threading.Event()

    def send() -> None:
        with requests.Session() as session:
            while not stop.wait(1 / per_second):
                try:
                    answer = session.post(
                        f"{LAB_URL}/api/v1/users/{user}/history",
                        json={"article_id": traffic.sent + 1, "feed_id": 1},
                        headers=headers, timeout=10,
                    )  # fmt: skip
                    traffic.statuses[answer.status_code] += 1
                except requests.RequestException as error:
                    traffic.errors.append(f"{type(error).__name__}: {error}")

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        yield traffic
    finally:
        stop.set()
        sender.join(timeout=15)

