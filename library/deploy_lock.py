#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: deploy_lock
short_description: Take or give back the lock that lets one operation at a time change an environment
description:
  - "A lock file on one host of the environment names the run holding it: its id, the
    operation, the operator, the controller and the process there, and when it began."
  - With O(state=acquired), the file is created in one step, so of two runs starting at
    once only one gets it; the other fails with a message naming the holder. Taking it
    again in the run that holds it changes nothing.
  - A lock left by a run that ended without giving it back (a failed deploy) is taken
    over only when O(take_over) names that run's id; the caller decides that the run is
    gone. The holder replaced is returned.
  - With O(state=released), the file is removed if this run holds it.
options:
  path:
    description: Lock file.
    type: path
    default: /var/lib/reading-history/deploy.lock
  state:
    description: Whether this run should hold the lock or give it back.
    type: str
    choices: [acquired, released]
    default: acquired
  holder:
    description:
      - Who takes the lock. C(run_id) is required and identifies the run; the other
        keys (operation, operator, controller, pid, started_at) are kept to tell others
        who holds it.
    type: dict
    required: true
  take_over:
    description:
      - Id of a run whose lock may be replaced, because it is known to have ended.
      - Nothing else is taken over; a lock held by another run still fails.
    type: str
    default: ""
  take_over_hint:
    description:
      - What the operator should do to take over a lock, added to the message that
        names its holder.
    type: str
    default: name its run in take_over
attributes:
  check_mode:
    support: full
    details: Reports whether the lock would be taken, taken over or given back; the file is not touched.
  diff_mode:
    support: none
    details: The holder and the previous holder are returned instead.
notes:
  - The folder of O(path) is created when missing, readable by its owner only.
author:
  - Reading history release team
"""

EXAMPLES = r"""
- name: Take the deploy lock on the first database host
  deploy_lock:
    holder:
      run_id: "{{ run.run_id }}"
      operation: deploy
      operator: "{{ run.operator }}"
      controller: "{{ run.controller }}"
  delegate_to: "{{ groups['db'][0] }}"
  register: lock

- name: Give the deploy lock back
  deploy_lock:
    state: released
    holder:
      run_id: "{{ run.run_id }}"
"""

RETURN = r"""
holder:
  description: Who holds the lock after the module ran; empty when nobody does.
  returned: always
  type: dict
  sample: {"run_id": "vm-4711-1733281200", "operation": "deploy", "operator": "ana"}
previous:
  description: The holder whose lock was taken over, or found by another run on release.
  returned: when there was one
  type: dict
  sample: {"run_id": "vm-4502-1733270000", "operation": "deploy"}
"""

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager, nullcontext
from typing import Any

from ansible.module_utils.basic import AnsibleModule


class LockError(Exception):
    """The lock could not be read or written; the message names the file."""


@contextmanager
def guard(path: str):
    """Hold an exclusive flock beside the lock, so read-compare-write is one step."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, mode=0o700, exist_ok=True)
    with open(f"{path}.guard", "a") as guard_file:
        fcntl.flock(guard_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(guard_file, fcntl.LOCK_UN)


def read_holder(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as lock_file:
            holder = json.load(lock_file)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise LockError(f"cannot read lock file '{path}': {error}") from None
    except ValueError as error:
        raise LockError(
            f"cannot read lock file '{path}' ({error}): it is not a lock this module "
            "wrote; remove it by hand after checking no operation is running"
        ) from None
    if not isinstance(holder, dict) or "run_id" not in holder:
        raise LockError(f"lock file '{path}' names no run; remove it by hand after checking")
    return holder


def write_holder(path: str, holder: dict[str, Any]) -> None:
    """Write the whole file under another name, then move it into place."""
    folder = os.path.dirname(path) or "."
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=".deploy-lock-")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as lock_file:
            json.dump(holder, lock_file, sort_keys=True)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except OSError as error:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise LockError(f"cannot write lock file '{path}': {error}") from None


def describe(holder: dict[str, Any]) -> str:
    parts = [f"run {holder['run_id']}"]
    for key, label in (("operation", "running"), ("operator", "by"),
                       ("controller", "from"), ("started_at", "since")):  # fmt: skip
        if holder.get(key):
            parts.append(f"{label} {holder[key]}")
    return " ".join(parts)


def acquire(module: AnsibleModule, path: str, holder: dict[str, Any], take_over: str):
    """Take the lock if it is free, ours, or held by the run named to take over."""
    current = read_holder(path)
    if current is not None and current["run_id"] == holder["run_id"]:
        module.exit_json(changed=False, holder=current, msg="this run already holds the lock")

    if current is not None and current["run_id"] != take_over:
        module.fail_json(
            msg=f"the deploy lock '{path}' is held by {describe(current)}. Wait for it to "
            "end; if it ended without giving the lock back, check that, then "
            f"{module.params['take_over_hint']}.",
            holder=current,
        )

    if not module.check_mode:
        write_holder(path, holder)
    verb = "took over the lock from " + describe(current) if current else "took the lock"
    result = dict(changed=True, holder=holder, msg=verb)
    if current is not None:
        result["previous"] = current
    module.exit_json(**result)


def release(module: AnsibleModule, path: str, holder: dict[str, Any]):
    current = read_holder(path)
    if current is None:
        module.exit_json(changed=False, holder={}, msg="nobody holds the lock")
    if current["run_id"] != holder["run_id"]:
        module.warn(f"the deploy lock is held by {describe(current)}, not this run: left alone")
        module.exit_json(changed=False, holder=current, previous=current, msg="lock left alone")
    if not module.check_mode:
        try:
            os.unlink(path)
        except OSError as error:
            raise LockError(f"cannot remove lock file '{path}': {error}") from None
    module.exit_json(changed=True, holder={}, msg="gave the lock back")


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/var/lib/reading-history/deploy.lock"),
            state=dict(type="str", choices=["acquired", "released"], default="acquired"),
            holder=dict(type="dict", required=True),
            take_over=dict(type="str", default=""),
            take_over_hint=dict(type="str", default="name its run in take_over"),
        ),
        supports_check_mode=True,
    )
    path = module.params["path"]
    holder = module.params["holder"]
    if not str(holder.get("run_id") or "").strip():
        module.fail_json(msg="holder.run_id must name the run taking the lock")

    try:
        # Check mode only reads, so it needs no guard and creates no folder.
        with guard(path) if not module.check_mode else nullcontext():
            if module.params["state"] == "acquired":
                acquire(module, path, holder, module.params["take_over"])
            else:
                release(module, path, holder)
    except (LockError, OSError) as error:
        module.fail_json(msg=f"deploy lock '{path}': {error}")


if __name__ == "__main__":
    main()
