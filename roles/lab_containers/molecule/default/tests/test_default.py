"""Verify a lab host made by lab_containers boots systemd and sits on its network."""


def test_systemd_is_pid_one_and_running(host):
    """Ensure the container booted systemd, which the roles' services need."""
    assert host.process.get(pid=1).comm == "systemd"
    state = host.run("systemctl is-system-running")
    assert state.stdout.strip() in ("running", "degraded")


def test_hostname_is_the_inventory_name(host):
    """Verify the host name inside is the inventory name, not the container name."""
    assert host.check_output("hostname") == "probe"


def test_services_the_roles_own_start_disabled(host):
    """Ensure PostgreSQL and nginx wait for their roles instead of starting alone."""
    assert not host.service("nginx").is_enabled
    assert not host.service("postgresql").is_enabled


def test_python_and_psycopg_are_baked_in(host):
    """Verify modules can run with no package mirror reachable from the lab."""
    assert host.run("python3 -c 'import psycopg'").rc == 0


def test_network_is_internal(host):
    """Ensure the lab network leads nowhere: there is no default route out."""
    assert "default" not in host.check_output("ip route")
