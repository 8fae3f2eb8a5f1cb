# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Name the phase and the host where an operation stopped, and record every operation."""

from __future__ import annotations

DOCUMENTATION = r"""
name: phase_report
type: aggregate
short_description: Say which phase of an operation failed, and record each operation
description:
  - Plays are named C(phase | what they do). When a task fails, this callback remembers
    the phase, the host and the task, and prints them last, after the play recap, so
    an operator at the end of a long run reads at once where it stopped. Of several
    failures, the last is reported, which is the one a rescue ends with.
  - Prints one line per phase with its duration when the run succeeds.
  - For every playbook of the repository's C(playbooks/) folder, appends one JSON line
    to the deployment log, failed runs included; the record
    holds the operation, inventory, operator, controller, the repository's commit,
    start and end times in UTC, the outcome and where it failed, every phase with its
    start and end, per-host counts, what the release, backup, migration and restore
    tasks reported, and the custom stats the roles set (approvals, for instance).
requirements:
  - enabled in ansible.cfg through C(callbacks_enabled)
options:
  log_path:
    description:
      - File the records are appended to, one JSON object a line. A relative path is
        taken from the top of the repository. Empty writes no record.
    type: str
    default: .deployments/log.jsonl
    ini:
      - section: callback_phase_report
        key: log_path
    env:
      - name: READING_HISTORY_DEPLOYMENT_LOG
  operator:
    description:
      - Who runs the operation, as the record names them. Empty takes the login name
        of the account running Ansible.
    type: str
    default: ""
    env:
      - name: READING_HISTORY_OPERATOR
"""

import datetime
import getpass
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ansible import context
from ansible.plugins.callback import CallbackBase

REPOSITORY = Path(__file__).resolve().parent.parent
OPERATION_PLAYBOOKS = REPOSITORY / "playbooks"

# What the repository's own modules report that belongs in the record, by module.
RECORDED_RESULTS = {
    "pg_backup": ("dest", "size", "sha256", "verified", "schema_version"),
    "pg_migrate": ("applied", "reverted", "current_version", "target_version", "accepted"),
    "pg_restore": ("database", "archive", "previous_database", "schema_version"),
    "pg_readonly": ("previous", "read_only"),
    "deploy_lock": ("holder", "previous"),
    "prometheus_gate": ("gates", "rounds", "elapsed"),
    "release_window": ("in_window", "local_time", "window", "overridden", "override_reason"),
}


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@dataclass
class Failure:
    phase: str
    host: str
    task: str
    message: str


@dataclass
class PhaseClock:
    started: dict[str, float] = field(default_factory=dict)
    finished: dict[str, float] = field(default_factory=dict)
    started_at: dict[str, str] = field(default_factory=dict)
    finished_at: dict[str, str] = field(default_factory=dict)

    def start(self, phase: str) -> None:
        if phase not in self.started:
            self.started[phase] = time.monotonic()
            self.started_at[phase] = utc_now()

    def stop(self, phase: str) -> None:
        self.finished[phase] = time.monotonic()
        self.finished_at[phase] = utc_now()

    def durations(self) -> list[tuple[str, float]]:
        return [
            (phase, self.finished.get(phase, begin) - begin)
            for phase, begin in self.started.items()
        ]

    def phases(self) -> list[dict[str, Any]]:
        return [
            {
                "name": phase,
                "started_at": self.started_at[phase],
                "ended_at": self.finished_at.get(phase),
                "seconds": round(seconds, 1),
            }
            for phase, seconds in self.durations()
        ]


def repository_commit() -> str | None:
    """Return the commit of the automation that ran, with a mark if files were changed."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPOSITORY), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(REPOSITORY), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+changes" if dirty else commit


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "phase_report"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._phase = ""
        self._clock = PhaseClock()
        self._failure: Failure | None = None
        self._playbook: Path | None = None
        self._started_at = utc_now()
        self._reported: dict[str, dict[str, dict[str, Any]]] = {}

    # Following the run ------------------------------------------------------

    def v2_playbook_on_start(self, playbook) -> None:
        self._playbook = Path(playbook._file_name).resolve()
        self._started_at = utc_now()

    def v2_playbook_on_play_start(self, play) -> None:
        if self._phase:
            self._clock.stop(self._phase)
        self._phase = play.get_name().split("|")[0].strip()
        self._clock.start(self._phase)

    def v2_runner_on_ok(self, result) -> None:
        module = result._task.action.rsplit(".", 1)[-1]
        keys = RECORDED_RESULTS.get(module)
        if keys is None or result._result.get("skipped"):
            return
        reported = {key: result._result[key] for key in keys if key in result._result}
        reported["changed"] = bool(result._result.get("changed"))
        self._reported.setdefault(module, {})[result._host.get_name()] = reported

    def v2_runner_on_failed(self, result, ignore_errors: bool = False) -> None:
        # The last failure wins: when a role rescues a failure and then fails on
        # purpose, its own message is the one that explains what happened.
        if ignore_errors:
            return
        self._failure = Failure(
            phase=self._phase,
            host=result._host.get_name(),
            task=result._task.get_name(),
            message=str(result._result.get("msg", "")).strip(),
        )

    def v2_runner_on_unreachable(self, result) -> None:
        self.v2_runner_on_failed(result)

    # The end ----------------------------------------------------------------

    def v2_playbook_on_stats(self, stats) -> None:
        if self._phase:
            self._clock.stop(self._phase)

        if self._failure is None:
            phases = ", ".join(
                f"{phase} {seconds:.0f}s" for phase, seconds in self._clock.durations()
            )
            self._display.display(f"PHASES DONE: {phases}", color="green")
        else:
            failure = self._failure
            self._display.display(
                f"FAILED in phase '{failure.phase}' on host {failure.host}, "
                f"task '{failure.task}': {failure.message}",
                color="red",
                stderr=True,
            )

        self._write_record(stats)

    def _is_operation(self) -> bool:
        return self._playbook is not None and self._playbook.parent == OPERATION_PLAYBOOKS

    def _log_file(self) -> Path | None:
        configured = self.get_option("log_path")
        if not configured:
            return None
        path = Path(os.path.expanduser(configured))
        return path if path.is_absolute() else REPOSITORY / path

    def _record(self, stats) -> dict[str, Any]:
        hosts = {
            host: {
                name: count
                for name, count in stats.summarize(host).items()
                if name in ("ok", "changed", "failures", "unreachable", "rescued")
            }
            for host in sorted(stats.processed)
        }
        failure = self._failure
        return {
            "operation": self._playbook.stem,
            "started_at": self._started_at,
            "ended_at": utc_now(),
            "outcome": "failed" if failure else "succeeded",
            "failure": failure.__dict__ if failure else None,
            "check_mode": bool(context.CLIARGS.get("check")),
            "inventory": list(context.CLIARGS.get("inventory") or []),
            "limit": context.CLIARGS.get("subset"),
            "operator": self.get_option("operator") or getpass.getuser(),
            "controller": socket.gethostname(),
            "automation_commit": repository_commit(),
            "phases": self._clock.phases(),
            "hosts": hosts,
            "reported": self._reported,
            # What the roles set with set_stats: "_run" for the whole run, else by host.
            "stats": stats.custom,
        }

    def _write_record(self, stats) -> None:
        log_file = self._log_file()
        if log_file is None or not self._is_operation():
            return
        record = self._record(stats)
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with log_file.open("a", encoding="utf-8") as log:
                log.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        except OSError as error:
            self._display.warning(f"could not write the deployment record to {log_file}: {error}")
            return
        self._display.display(f"RECORDED in {log_file}: {record['operation']} {record['outcome']}")
