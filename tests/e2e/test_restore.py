"""Roll the database back on the lab: restore the backup a release took, on purpose.

Runs after test_deploy.py on the same lab (file order): the service is deployed.
"""

from __future__ import annotations

import json
import uuid

import requests
from conftest import create_token, run_playbook


def record_reads(lab: str, user: int, headers: dict, articles: range) -> None:
    for article in articles:
        answer = requests.post(
            f"{lab}/api/v1/users/{user}/history",
            json={"article_id": article, "feed_id": 1, "category": "e2e"},
            headers=headers, timeout=5,
        )  # fmt: skip
        assert answer.status_code == 201, answer.text


def exported_articles(lab: str, user: int, headers: dict) -> set[int]:
    answer = requests.get(
        f"{lab}/api/v1/users/{user}/history/export",
        params={"format": "json"}, headers=headers, timeout=10,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    return {entry["article_id"] for entry in json.loads(answer.text)}


def test_restore_brings_back_every_row_written_before_the_backup(first_release, lab):
    """Verify a restore keeps all rows of its backup and only those, and the app works."""
    user = uuid.uuid4().int % 1_000_000_000
    headers = {"Authorization": f"Bearer {create_token(user)}"}
    record_reads(lab, user, headers, range(1, 26))

    backup = run_playbook("backup.yml")
    assert backup.returncode == 0, backup.output[-5000:]
    record_reads(lab, user, headers, range(100, 105))

    refused = run_playbook("restore.yml", "-e", "db_restore_confirm=wrong_name")
    assert refused.returncode != 0
    assert "Refusing to replace database reading_history" in refused.output
    assert exported_articles(lab, user, headers) == set(range(1, 26)) | set(
        range(100, 105)
    )

    restore = run_playbook("restore.yml", "-e", "db_restore_confirm=reading_history")
    assert restore.returncode == 0, restore.output[-5000:]

    assert exported_articles(lab, user, headers) == set(range(1, 26))
    health = requests.get(f"{lab}/api/v1/health/db", timeout=5)
    assert health.status_code == 200, health.text
