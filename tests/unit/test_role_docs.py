"""Check the generated role READMEs, tools/role-docs itself, and each role's specs.

The READMEs must be what tools/role-docs writes today, and --check must notice any
drift. Each role's defaults/main.yml and the main entry point of its
meta/argument_specs.yml must describe the same variables.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "role-docs"
ROLES = sorted(path.name for path in (REPO / "roles").iterdir() if path.is_dir())
# The role with an entry point besides main, so every section is exercised.
SAMPLE_ROLE = "app_release"


def load_tool() -> ModuleType:
    """Import tools/role-docs, a script without a .py suffix, as a module."""
    loader = SourceFileLoader("role_docs", str(TOOL))
    spec = importlib.util.spec_from_loader("role_docs", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["role_docs"] = module
    loader.exec_module(module)
    return module


role_docs = load_tool()


def run_tool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def main_options(role: str) -> dict[str, dict[str, Any]]:
    specs = load_yaml(REPO / "roles" / role / "meta" / "argument_specs.yml")
    options = specs["argument_specs"]["main"].get("options") or {}
    return {name: option or {} for name, option in options.items()}


def public_defaults(role: str) -> dict[str, Any]:
    defaults = load_yaml(REPO / "roles" / role / "defaults" / "main.yml") or {}
    return {
        name: value for name, value in defaults.items() if not name.startswith("__")
    }


def rendered(role: str) -> str:
    return role_docs.render(role_docs.load_role(REPO / "roles" / role))


def test_readmes_are_up_to_date() -> None:
    """Ensure every role's README is what tools/role-docs writes from its sources."""
    completed = run_tool("--check")
    assert completed.returncode == 0, completed.stderr


@pytest.fixture
def role_copy(tmp_path: Path) -> Path:
    """A copy of one role, beside the playbooks, with a freshly written README."""
    shutil.copytree(REPO / "roles" / SAMPLE_ROLE, tmp_path / "roles" / SAMPLE_ROLE)
    shutil.copytree(REPO / "playbooks", tmp_path / "playbooks")
    (tmp_path / "roles" / SAMPLE_ROLE / "README.md").unlink(missing_ok=True)
    written = run_tool("--roles-dir", "roles", cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert run_tool("--check", "--roles-dir", "roles", cwd=tmp_path).returncode == 0
    return tmp_path / "roles" / SAMPLE_ROLE


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


EDITS: dict[str, tuple[Callable[[Path], None], str]] = {
    "readme-by-hand": (
        lambda role: edit(role / "README.md", "## Requirements", "## Needs"),
        "stale",
    ),
    "default-changed": (
        lambda role: edit(
            role / "defaults" / "main.yml",
            "app_release_keep: 3",
            "app_release_keep: 4",
        ),
        "stale",
    ),
    "spec-changed": (
        lambda role: edit(
            role / "meta" / "argument_specs.yml",
            "System account the service runs as.",
            "Account the service runs under.",
        ),
        "stale",
    ),
    "readme-deleted": (lambda role: (role / "README.md").unlink(), "missing"),
}


@pytest.mark.parametrize("change", EDITS)
def test_check_names_a_readme_out_of_date(role_copy: Path, change: str) -> None:
    """Verify --check fails, names the README and leaves it alone once it drifts."""
    apply, problem = EDITS[change]
    apply(role_copy)
    readme = role_copy / "README.md"
    before = readme.read_bytes() if readme.exists() else None

    completed = run_tool("--check", "--roles-dir", "roles", cwd=role_copy.parent.parent)

    assert completed.returncode == 1
    assert f"{problem} roles/{SAMPLE_ROLE}/README.md" in completed.stderr
    assert (readme.read_bytes() if readme.exists() else None) == before


def test_writing_brings_a_readme_up_to_date(role_copy: Path) -> None:
    """Verify a run without --check writes the change, after which --check passes."""
    edit(
        role_copy / "defaults" / "main.yml",
        "app_release_keep: 3",
        "app_release_keep: 7",
    )
    tree = role_copy.parent.parent

    assert run_tool("--roles-dir", "roles", cwd=tree).returncode == 0

    assert run_tool("--check", "--roles-dir", "roles", cwd=tree).returncode == 0
    assert "app_release_keep: 7" in (role_copy / "README.md").read_text()


@pytest.mark.parametrize("role", ROLES)
def test_readme_says_it_is_generated(role: str) -> None:
    """Ensure the first line tells readers the README is generated, not written."""
    first = rendered(role).split("\n", 1)[0]
    assert "tools/role-docs" in first
    assert "meta/argument_specs.yml" in first
    assert "Do not edit by hand" in first


def section(text: str, title: str) -> str:
    """Return the body of a `## title` section of a README."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no '## {title}' section"
    return match.group(1)


@pytest.mark.parametrize("role", ROLES)
def test_readme_has_a_subsection_per_variable(role: str) -> None:
    """Ensure every option and every default has its own subsection, nothing more."""
    body = section(rendered(role), "Role Variables")
    documented = re.findall(r"^### `(\w+)`$", body, re.M)
    assert sorted(documented) == sorted(
        set(main_options(role)) | set(public_defaults(role))
    )


@pytest.mark.parametrize("role", ROLES)
def test_readme_shows_each_default_as_written(role: str) -> None:
    """Verify each variable's YAML block holds just its value in defaults/main.yml."""
    body = section(rendered(role), "Role Variables")
    for name, value in public_defaults(role).items():
        block = re.search(rf"^### `{name}`\n\n```yaml\n(.*?)^```$", body, re.M | re.S)
        assert block, f"{name} has no YAML block"
        assert yaml.safe_load(block.group(1)) == {name: value}


@pytest.mark.parametrize("role", ROLES)
def test_readme_lists_entry_points_besides_main(role: str) -> None:
    """Ensure every entry point other than main is documented with how to call it."""
    specs = load_yaml(REPO / "roles" / role / "meta" / "argument_specs.yml")
    others = [name for name in specs["argument_specs"] if name != "main"]
    text = rendered(role)
    for entry in others:
        body = section(text, "Entry Points")
        assert f"### `{entry}`" in body
        assert f"tasks_from: {entry}" in body
    assert ("## Entry Points" in text) == bool(others)


def example_play(role: str) -> list[dict[str, Any]]:
    body = section(rendered(role), "Example Playbook")
    block = re.search(r"^```yaml\n(.*?)^```$", body, re.M | re.S)
    assert block, "no YAML block in the example"
    return yaml.safe_load(block.group(1))


@pytest.mark.parametrize("role", ROLES)
def test_example_play_sets_every_required_variable(role: str) -> None:
    """Ensure the example applies the role with each required variable set."""
    [play] = example_play(role)
    [entry] = play["roles"]
    required = [
        name for name, spec in main_options(role).items() if spec.get("required")
    ]
    assert entry["role"] == role
    assert sorted(entry.get("vars", {})) == sorted(required)


def test_example_plays_pass_syntax_check(tmp_path: Path) -> None:
    """Verify every example play is a playbook Ansible accepts, roles resolved."""
    paths = []
    for role in ROLES:
        path = tmp_path / f"{role}.yml"
        path.write_text(yaml.safe_dump(example_play(role)), encoding="utf-8")
        paths.append(str(path))
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_ROLES_PATH=str(REPO / "roles"),
        ANSIBLE_NOCOLOR="1",
    )
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "--syntax-check"]
        + ["-i", "localhost,", *paths],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


DEFAULTS_SAMPLE = """\
---
# Where things go.
sample_dir: /srv/sample
sample_mode: "0640"
# Seconds to wait.
sample_wait: 5

# Extra settings.
sample_settings: {}
#  KEY: value

sample_items:
  - one

  # Kept for the old hosts.
  - two
"""


def test_defaults_keep_comments_with_their_variable() -> None:
    """Verify comments above a variable, trailing examples and lists stay together."""
    entries = role_docs.parse_defaults(DEFAULTS_SAMPLE)

    assert list(entries) == [
        "sample_dir",
        "sample_mode",
        "sample_wait",
        "sample_settings",
        "sample_items",
    ]
    assert entries["sample_dir"].comment == ["# Where things go."]
    assert entries["sample_mode"].comment == []
    assert entries["sample_dir"].lines == ["sample_dir: /srv/sample"]
    assert entries["sample_wait"].comment == ["# Seconds to wait."]
    assert entries["sample_settings"].lines == ["sample_settings: {}", "#  KEY: value"]
    assert entries["sample_items"].lines == [
        "sample_items:",
        "  - one",
        "",
        "  # Kept for the old hosts.",
        "  - two",
    ]


@pytest.mark.parametrize("role", ROLES)
def test_every_default_is_in_the_argument_specs(role: str) -> None:
    """Ensure each public variable in defaults/main.yml is a documented main option."""
    undocumented = sorted(set(public_defaults(role)) - set(main_options(role)))
    assert not undocumented, (
        f"roles/{role}/defaults/main.yml sets variables that "
        f"meta/argument_specs.yml (main) does not describe: {undocumented}"
    )


@pytest.mark.parametrize("role", ROLES)
def test_every_option_has_a_default_or_is_required(role: str) -> None:
    """Ensure no main option is left undefined: it has a default or must be given."""
    defaults = public_defaults(role)
    unset = sorted(
        name
        for name, spec in main_options(role).items()
        if name not in defaults and not spec.get("required")
    )
    assert not unset, (
        f"roles/{role}/meta/argument_specs.yml (main) has options that are neither "
        f"in defaults/main.yml nor required: {unset}"
    )
