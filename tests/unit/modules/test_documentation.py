"""Check that each module's documentation agrees with the options it really takes."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import http_health
import deploy_lock
import pg_backup
import pg_backup_retention
import pg_migrate
import pg_readonly
import pg_restore
import pg_schema
import pg_state
import prometheus_gate
import pytest
import release_window
import tls_certificate
import yaml
from ansible.module_utils import basic
from module_harness import REPO_ROOT

MODULES = [
    pg_state,
    pg_backup,
    pg_backup_retention,
    pg_restore,
    pg_migrate,
    pg_readonly,
    pg_schema,
    http_health,
    release_window,
    deploy_lock,
    prometheus_gate,
    tls_certificate,
]
FRAGMENT_PATH = REPO_ROOT / "doc_fragments" / "pg_connection.py"
RETURN_KEYS = ("description", "returned", "type", "sample")


class SpecCaptured(Exception):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__("argument spec captured")
        self.spec = spec


def argument_spec_of(module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Run main() until it builds its AnsibleModule, and keep the spec it passed."""

    def capture(self, argument_spec, **kwargs):
        raise SpecCaptured(argument_spec)

    monkeypatch.setattr(basic.AnsibleModule, "__init__", capture)
    with pytest.raises(SpecCaptured) as captured:
        module.main()
    return captured.value.spec


def documented_options(module: ModuleType) -> dict[str, dict]:
    """Return the module's options, with those of its documentation fragment."""
    documentation = yaml.safe_load(module.DOCUMENTATION)
    options = dict(documentation.get("options") or {})
    if "pg_connection" in documentation.get("extends_documentation_fragment", []):
        namespace: dict[str, Any] = {}
        exec(FRAGMENT_PATH.read_text(), namespace)
        fragment = yaml.safe_load(namespace["ModuleDocFragment"].DOCUMENTATION)
        options.update(fragment["options"])
    return options


@pytest.mark.parametrize("module", MODULES, ids=lambda module: module.__name__)
def test_documented_options_match_the_argument_spec(
    module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ensure names, types, defaults, choices and required flags agree with the docs."""
    spec = argument_spec_of(module, monkeypatch)
    documented = documented_options(module)

    assert sorted(documented) == sorted(spec)
    for name, option in spec.items():
        doc = documented[name]
        assert doc.get("type") == option.get("type"), name
        assert doc.get("default") == option.get("default"), name
        assert doc.get("choices") == option.get("choices"), name
        assert doc.get("elements") == option.get("elements"), name
        assert bool(doc.get("required")) == bool(option.get("required")), name
        assert doc.get("description"), name


@pytest.mark.parametrize("module", MODULES, ids=lambda module: module.__name__)
def test_every_return_value_is_fully_described(module: ModuleType) -> None:
    """Verify each RETURN key has a description, a condition, a type and a sample."""
    returned = yaml.safe_load(module.RETURN)

    for key, value in returned.items():
        missing = [field for field in RETURN_KEYS if field not in value]
        assert not missing, f"{key} lacks {missing}"


@pytest.mark.parametrize("module", MODULES, ids=lambda module: module.__name__)
def test_examples_are_named_tasks_of_the_module(module: ModuleType) -> None:
    """Ensure every example task has a name and some example calls the module."""
    tasks = yaml.safe_load(module.EXAMPLES)
    name = module.__name__

    assert all(task.get("name") for task in tasks)
    assert any(name in task for task in tasks)
    assert any("register" in task for task in tasks if name in task)


def test_every_module_in_library_is_checked() -> None:
    """Ensure a module added to library/ cannot escape these documentation checks."""
    in_library = {path.stem for path in (REPO_ROOT / "library").glob("*.py")}

    assert in_library == {module.__name__ for module in MODULES}
