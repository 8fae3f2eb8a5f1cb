# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Name this run of ansible-playbook, or tell whether another run is still going."""

from __future__ import annotations

DOCUMENTATION = r"""
name: controller_run
short_description: Name this run of ansible-playbook on the controller
description:
  - Without terms, returns this run as a dict, C(run_id), C(controller) (host name),
    C(pid) of the ansible-playbook process, C(pid_started) (its start, in clock ticks
    since boot, which tells it from a later process given the same id) and C(operator)
    (E(READING_HISTORY_OPERATOR), or the login name).
  - With a dict from an earlier run as its term, returns whether that run may still be
    going; C(false) only when it ran on this controller and its process is gone.
options:
  _terms:
    description: Optionally, one run as this lookup returned it before.
    type: list
"""

EXAMPLES = r"""
- name: Name this run
  ansible.builtin.set_fact:
    run: "{{ lookup('controller_run') }}"

- name: Tell whether the run holding a lock is still going
  ansible.builtin.debug:
    msg: "{{ lookup('controller_run', holder) }}"
"""

RETURN = r"""
_raw:
  description: This run, or whether the run given may still be going.
  type: raw
"""

import getpass
import os
import socket
from pathlib import Path

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def started_ticks(pid: int) -> int | None:
    """Return when a process started, in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces; the fields after its closing parenthesis do not.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def playbook_pid() -> int:
    """Return the ansible-playbook process: lookups run in one of its worker forks."""
    pid = os.getpid()
    for _ in range(4):
        if "ansible-playbook" in command_line(pid):
            return pid
        parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        pid = int(parent)
    return os.getppid()


def this_run() -> dict:
    pid = playbook_pid()
    controller = socket.gethostname()
    started = started_ticks(pid)
    return {
        "run_id": f"{controller}-{pid}-{started}",
        "controller": controller,
        "pid": pid,
        "pid_started": started,
        "operator": os.environ.get("READING_HISTORY_OPERATOR") or getpass.getuser(),
    }


def may_be_running(run: dict) -> bool:
    if run.get("controller") != socket.gethostname():
        # Another machine's processes cannot be seen from here.
        return True
    pid = run.get("pid")
    return isinstance(pid, int) and started_ticks(pid) == run.get("pid_started")


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if not terms:
            return [this_run()]
        if len(terms) != 1 or not isinstance(terms[0], dict):
            raise AnsibleLookupError("controller_run takes no term, or one run as a dict")
        return [may_be_running(terms[0])]
