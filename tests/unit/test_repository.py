"""Check the repository as a whole: playbooks, inventories, vaults, style and layout.

The slow checks call Ansible's and yamllint's command-line tools. They all start
together, in parallel, the first time a test needs one of them, so the file takes
about as long as its slowest command.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.parsing.vault import VaultLib, VaultSecret

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
VAULT_PASSWORD_FILE = REPO / "tests" / "fixtures" / "example-vault-password"
PLAYBOOKS = sorted(path.name for path in (REPO / "playbooks").glob("*.yml"))
INVENTORIES = ["lab", "staging", "production"]
VAULTED_INVENTORIES = ["staging", "production"]
MODULES = sorted(path.stem for path in (REPO / "library").glob("*.py"))
ROLES = sorted(path.name for path in (REPO / "roles").iterdir() if path.is_dir())
ROLE_FILES = [
    "meta/main.yml",
    "meta/argument_specs.yml",
    "defaults/main.yml",
    "molecule/default/molecule.yml",
]
VAULT_REFERENCE = re.compile(r"^\{\{\s*vault_\w+\s*\}\}$")
# Written as a pattern so this file does not match itself.
LOCAL_PATH = re.compile(r"/(?:work|root|home)/")
TIMEOUT = 300


def ansible_env() -> dict[str, str]:
    """Environment for Ansible's tools: the repository's settings, no colours."""
    return dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a tool from the virtualenv at the top of the repository."""
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        cwd=REPO,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def syntax_check(inventory: str, playbooks: list[str]) -> list[str]:
    return [
        "ansible-playbook", "--syntax-check",
        "-i", f"inventories/{inventory}",
        "--vault-password-file", str(VAULT_PASSWORD_FILE.relative_to(REPO)),
        *(f"playbooks/{name}" for name in playbooks),
    ]  # fmt: skip


def inventory_graph(inventory: str) -> list[str]:
    return [
        "ansible-inventory", "--graph",
        "-i", f"inventories/{inventory}",
        "--vault-password-file", str(VAULT_PASSWORD_FILE.relative_to(REPO)),
    ]  # fmt: skip


def slow_commands() -> dict[str, list[str]]:
    """Every slow command of this file, by the name the tests ask for it with."""
    commands = {f"syntax {name}": syntax_check(name, PLAYBOOKS) for name in INVENTORIES}
    commands |= {f"graph {name}": inventory_graph(name) for name in VAULTED_INVENTORIES}
    commands |= {
        f"doc {name}": ["ansible-doc", "-t", "module", name] for name in MODULES
    }
    commands["yamllint"] = ["yamllint", "-s", "."]
    return commands


@pytest.fixture(scope="module")
def slow() -> Iterator[dict[str, Future[subprocess.CompletedProcess[str]]]]:
    """Start every slow command at once; each test waits only for its own."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield {key: pool.submit(run, argv) for key, argv in slow_commands().items()}


def output_of(completed: subprocess.CompletedProcess[str]) -> str:
    return f"{' '.join(completed.args)}\n{completed.stdout}\n{completed.stderr}"


@pytest.mark.parametrize("playbook", PLAYBOOKS)
@pytest.mark.parametrize("inventory", INVENTORIES)
def test_playbook_passes_syntax_check(
    slow: dict[str, Future[subprocess.CompletedProcess[str]]],
    inventory: str,
    playbook: str,
) -> None:
    """Verify each playbook parses against each inventory, vaults included."""
    completed = slow[f"syntax {inventory}"].result()
    if completed.returncode != 0:
        # The run of every playbook at once failed: name the ones to blame.
        completed = run(syntax_check(inventory, [playbook]))
    assert completed.returncode == 0, output_of(completed)


def parse_graph(text: str) -> dict[str, set[str]]:
    """Map each group of `ansible-inventory --graph` to its hosts, nested included."""
    groups: dict[str, set[str]] = {}
    stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        depth = line.find("|--")
        name = line.strip().rsplit("|--", 1)[-1].rstrip(":")
        if not name:
            continue
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if name.startswith("@"):
            stack.append((depth, name[1:]))
            groups.setdefault(name[1:], set())
        else:
            for _, group in stack:
                groups[group].add(name)
    return groups


@pytest.mark.parametrize("inventory", VAULTED_INVENTORIES)
def test_inventory_has_hosts_in_every_group(
    slow: dict[str, Future[subprocess.CompletedProcess[str]]], inventory: str
) -> None:
    """Ensure the inventory puts hosts in db, app and lb, as the playbooks need."""
    completed = slow[f"graph {inventory}"].result()
    assert completed.returncode == 0, output_of(completed)
    groups = parse_graph(completed.stdout)
    empty = [group for group in ("db", "app", "lb") if not groups.get(group)]
    assert not empty, f"groups without hosts: {empty}\n{completed.stdout}"


def test_production_has_at_least_two_app_hosts(
    slow: dict[str, Future[subprocess.CompletedProcess[str]]],
) -> None:
    """Ensure production keeps serving while one app host is being released."""
    completed = slow["graph production"].result()
    assert completed.returncode == 0, output_of(completed)
    app_hosts = parse_graph(completed.stdout).get("app", set())
    assert len(app_hosts) >= 2, completed.stdout


def test_graph_parser_reads_nested_groups() -> None:
    """Verify the graph parser gives each group its own hosts and its children's."""
    graph = (
        "@all:\n  |--@ungrouped:\n  |--@lab:\n  |  |--@app:\n  |  |  |--app1\n"
        "  |  |  |--app2\n  |  |--@db:\n  |  |  |--db1\n"
    )
    groups = parse_graph(graph)
    assert groups["app"] == {"app1", "app2"}
    assert groups["db"] == {"db1"}
    assert groups["lab"] == {"app1", "app2", "db1"}
    assert groups["ungrouped"] == set()


def vault_path(inventory: str) -> Path:
    return REPO / "inventories" / inventory / "group_vars" / "all" / "vault.yml"


def decrypted_vault(inventory: str) -> dict[str, Any]:
    secret = VaultSecret(VAULT_PASSWORD_FILE.read_bytes().strip())
    vault = VaultLib([("default", secret)])
    return yaml.safe_load(vault.decrypt(vault_path(inventory).read_bytes())) or {}


def plain_vars_files(inventory: Path) -> list[Path]:
    """Every group_vars and host_vars file of an inventory, vault files aside."""
    files = [
        path
        for folder in ("group_vars", "host_vars")
        for pattern in ("**/*.yml", "**/*.yaml", "*.yml", "*.yaml")
        for path in (inventory / folder).glob(pattern)
        if path.is_file() and path.stem != "vault"
    ]
    return sorted(set(files))


@pytest.mark.parametrize("inventory", VAULTED_INVENTORIES)
def test_vault_file_is_encrypted(inventory: str) -> None:
    """Ensure the vault of a shared environment is never committed in clear."""
    first_line = vault_path(inventory).read_text(encoding="utf-8").split("\n", 1)[0]
    assert first_line.startswith("$ANSIBLE_VAULT;"), f"{inventory} vault is plain text"


@pytest.mark.parametrize("inventory", VAULTED_INVENTORIES)
def test_every_vault_variable_is_used(inventory: str) -> None:
    """Verify each vault_* secret is referenced by the inventory's plain group_vars."""
    secrets = [name for name in decrypted_vault(inventory) if name.startswith("vault_")]
    text = "\n".join(
        path.read_text(encoding="utf-8")
        for path in plain_vars_files(REPO / "inventories" / inventory)
    )
    unused = [name for name in secrets if not re.search(rf"\b{name}\b", text)]
    assert not unused, f"vault variables no group_vars file refers to: {unused}"


def literal_passwords(data: Any, path: str = "") -> list[str]:
    """List the keys ending in 'password' whose value is not a vault reference."""
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            where = f"{path}.{key}" if path else str(key)
            if str(key).lower().endswith("password") and not (
                isinstance(value, str) and VAULT_REFERENCE.match(value.strip())
            ):
                found.append(where)
            found += literal_passwords(value, where)
    elif isinstance(data, list):
        for index, item in enumerate(data):
            found += literal_passwords(item, f"{path}[{index}]")
    return found


PLAIN_VARS_FILES = [
    path.relative_to(REPO)
    for name in INVENTORIES
    for path in plain_vars_files(REPO / "inventories" / name)
]


@pytest.mark.parametrize("relative", PLAIN_VARS_FILES, ids=str)
def test_no_password_is_written_in_clear(relative: Path) -> None:
    """Ensure every password in plain group_vars comes from a vault_* variable."""
    data = yaml.safe_load((REPO / relative).read_text(encoding="utf-8"))
    found = literal_passwords(data)
    assert not found, f"{relative}: passwords not taken from a vault: {found}"


def test_password_check_tells_literals_from_references() -> None:
    """Verify the password check accepts vault references and flags anything else."""
    data = {
        "db_password": "{{ vault_db_password }}",
        "app_password": "hunter2",
        "nested": {"admin_password": "{{ admin_password_plain }}"},
        "users": [{"password": None}],
    }
    found = literal_passwords(data)
    assert found == ["app_password", "nested.admin_password", "users[0].password"]


def test_yamllint_passes(
    slow: dict[str, Future[subprocess.CompletedProcess[str]]],
) -> None:
    """Ensure every YAML file follows .yamllint, warnings included."""
    completed = slow["yamllint"].result()
    assert completed.returncode == 0, output_of(completed)


@pytest.mark.parametrize("module", MODULES)
def test_module_documentation_renders(
    slow: dict[str, Future[subprocess.CompletedProcess[str]]], module: str
) -> None:
    """Verify ansible-doc renders each module's documentation with no complaint."""
    completed = slow[f"doc {module}"].result()
    assert completed.returncode == 0, output_of(completed)
    assert "WARNING" not in completed.stderr, output_of(completed)
    assert "ERROR" not in completed.stderr, output_of(completed)
    assert completed.stdout.startswith(f"> MODULE {module} "), output_of(completed)


@pytest.mark.parametrize("role", ROLES)
def test_role_has_the_standard_files(role: str) -> None:
    """Ensure each role has metadata, argument specs, defaults and a scenario."""
    missing = [
        name for name in ROLE_FILES if not (REPO / "roles" / role / name).is_file()
    ]
    assert not missing, f"roles/{role} lacks {', '.join(missing)}"


def repository_files() -> list[Path]:
    """Tracked files, and new ones git does not ignore, that are still on disk."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    paths = (REPO / name for name in sorted(set(listed.split("\0"))) if name)
    return [path for path in paths if path.is_file()]


def local_paths_in(path: Path) -> list[str]:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return []
    text = data.decode("utf-8", errors="replace")
    return [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for number, line in enumerate(text.splitlines(), start=1)
        if LOCAL_PATH.search(line)
    ]


def test_no_file_names_a_local_folder() -> None:
    """Ensure no file in git names a home or work folder of one machine."""
    found = [hit for path in repository_files() for hit in local_paths_in(path)]
    assert not found, "absolute local paths:\n" + "\n".join(found)


def openssl(*argv: str, stdin: str | None = None) -> str:
    completed = subprocess.run(
        ["openssl", *argv], input=stdin, capture_output=True, text=True, check=True
    )
    return completed.stdout


@pytest.mark.parametrize("inventory", VAULTED_INVENTORIES)
def test_load_balancer_key_and_certificate_are_a_pair(inventory: str) -> None:
    """Ensure an environment's TLS key in the vault belongs to its certificate file."""
    folder = REPO / "inventories" / inventory
    lb_vars = yaml.safe_load((folder / "group_vars/lb/nginx_lb.yml").read_text())
    server_name = lb_vars["nginx_lb_server_name"]
    certificate = folder / "files" / "tls" / f"{server_name}.crt"
    private_key = decrypted_vault(inventory)["vault_nginx_lb_tls_private_key"]

    from_certificate = openssl("x509", "-in", str(certificate), "-noout", "-pubkey")
    from_key = openssl("pkey", "-pubout", stdin=private_key)

    assert from_certificate == from_key
    covers = openssl("x509", "-in", str(certificate), "-noout", "-checkhost", server_name)
    assert "does match" in covers
