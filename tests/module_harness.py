"""Run the repository's custom Ansible modules from tests.

Ansible finds ``ansible.module_utils.<name>`` in the repository's module_utils folder
through ansible.cfg; tests get the same by adding that folder to the package's path.

Two ways to run a module:

* ``run_module`` calls its ``main()`` in this process with ``exit_json`` and
  ``fail_json`` turned into exceptions, for unit tests that patch what they need.
* ``run_module_process`` runs the module file in a child Python, with its arguments
  in a JSON file as Ansible hands them over, and returns the JSON it prints, after
  Ansible's own masking of secrets. Running this file as a script is what the
  child does.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

REPO_ROOT = Path(__file__).resolve().parent.parent
LIBRARY = REPO_ROOT / "library"
MODULE_UTILS = REPO_ROOT / "module_utils"


def install_module_paths() -> None:
    """Make the repository's modules and module_utils importable, once."""
    import ansible.module_utils

    if str(MODULE_UTILS) not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(str(MODULE_UTILS))
    if str(LIBRARY) not in sys.path:
        sys.path.insert(0, str(LIBRARY))


class ModuleExit(Exception):
    """Raised in place of exit_json; carries the result."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result.get("msg", "module exited"))
        self.result = result


class ModuleFail(Exception):
    """Raised in place of fail_json; carries the result."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result.get("msg", "module failed"))
        self.result = result


def _exit_json(self: Any, **kwargs: Any) -> None:
    kwargs.setdefault("changed", False)
    raise ModuleExit(kwargs)


def _fail_json(self: Any, msg: str, **kwargs: Any) -> None:
    kwargs["failed"] = True
    kwargs["msg"] = msg
    raise ModuleFail(kwargs)


def run_module(
    module: ModuleType, args: dict[str, Any], check_mode: bool = False
) -> dict:
    """Run module.main() in-process; return the exit result or raise ModuleFail."""
    from ansible.module_utils import basic
    from ansible.module_utils.testing import patch_module_args

    arguments = {**args, "_ansible_check_mode": check_mode}
    with (
        patch_module_args(arguments),
        mock.patch.object(basic.AnsibleModule, "exit_json", _exit_json),
        mock.patch.object(basic.AnsibleModule, "fail_json", _fail_json),
    ):
        try:
            module.main()
        except ModuleExit as done:
            return done.result
    raise AssertionError(
        f"{module.__name__}.main() returned without exit_json or fail_json"
    )


def run_module_process(
    name: str,
    args: dict[str, Any],
    check_mode: bool = False,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], str]:
    """Run library/<name>.py in a child Python; return (rc, result, raw stdout).

    The raw stdout is returned too so tests can check that no secret was printed.
    """
    child = start_module_process(name, args, check_mode, env)
    stdout, stderr = child.communicate(timeout=timeout)
    return finish_module_process(child, stdout, stderr)


def start_module_process(
    name: str,
    args: dict[str, Any],
    check_mode: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start a module in a child Python and leave it running (for concurrency tests).

    The arguments go in a file named on the command line, as Ansible hands them over.
    MODULE_PYTHON picks another interpreter, for example one with an older psycopg.
    """
    payload = {"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check_mode}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as stream:
        json.dump(payload, stream)
    child = subprocess.Popen(
        [os.environ.get("MODULE_PYTHON", sys.executable), __file__, name, stream.name],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    child.args_file = stream.name
    return child


def finish_module_process(
    child: subprocess.Popen, stdout: str | None = None, stderr: str | None = None
) -> tuple[int, dict[str, Any], str]:
    if stdout is None:
        stdout, stderr = child.communicate(timeout=120)
    os.unlink(child.args_file)
    try:
        result = json.loads(stdout)
    except ValueError as error:
        raise AssertionError(
            f"module printed no JSON: {stdout!r} {stderr!r}"
        ) from error
    return child.returncode, result, stdout


def main() -> None:
    """Child side: run one module as Ansible would, its arguments in the named file."""
    install_module_paths()
    name, args_file = sys.argv[1:3]
    module_path = str(LIBRARY / f"{name}.py")
    sys.argv = [module_path, args_file]
    runpy.run_path(module_path, run_name="__main__")


if __name__ == "__main__":
    main()
