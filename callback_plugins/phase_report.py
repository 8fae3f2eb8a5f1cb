# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Name the phase and the host where an operation stopped."""

from __future__ import annotations

DOCUMENTATION = r"""
name: phase_report
type: aggregate
short_description: Say which phase of an operation failed, and on which host
description:
  - Plays are named C(phase | what they do). When a task fails, this callback remembers
    the phase, the host and the task, and prints them last, after the play recap, so
    an operator at the end of a long run reads at once where it stopped. Of several
    failures, the last is reported, which is the one a rescue ends with.
  - Prints one line per phase with its duration when the run succeeds.
requirements:
  - enabled in ansible.cfg through C(callbacks_enabled)
"""

import time
from dataclasses import dataclass, field

from ansible.plugins.callback import CallbackBase


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

    def start(self, phase: str) -> None:
        self.started.setdefault(phase, time.monotonic())

    def stop(self, phase: str) -> None:
        self.finished[phase] = time.monotonic()

    def durations(self) -> list[tuple[str, float]]:
        return [
            (phase, self.finished.get(phase, begin) - begin)
            for phase, begin in self.started.items()
        ]


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

    def v2_playbook_on_play_start(self, play) -> None:
        if self._phase:
            self._clock.stop(self._phase)
        self._phase = play.get_name().split("|")[0].strip()
        self._clock.start(self._phase)

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

    def v2_playbook_on_stats(self, stats) -> None:
        if self._phase:
            self._clock.stop(self._phase)

        if self._failure is None:
            phases = ", ".join(
                f"{phase} {seconds:.0f}s" for phase, seconds in self._clock.durations()
            )
            self._display.display(f"PHASES DONE: {phases}", color="green")
            return

        failure = self._failure
        self._display.display(
            f"FAILED in phase '{failure.phase}' on host {failure.host}, "
            f"task '{failure.task}': {failure.message}",
            color="red",
            stderr=True,
        )
