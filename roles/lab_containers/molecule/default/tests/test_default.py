"""Verify a lab host made by lab_containers boots systemd and sits on its network."""

import pytest
import testinfra


def test_systemd_is_pid_one_and_running(host):
    """Ensure the container booted systemd, which the roles' services need."""
    assert host.process.get(pid=1).comm == "systemd"
    state = host.run("systemctl is-system-running")
    assert state.stdout.strip() in ("running", "degraded")


def test_hostname_is_the_inventory_name(host):
    """Verify the host name inside is the inventory name, not the container name."""
    assert host.check_output("hostname") == "probe"


@pytest.mark.parametrize(
    "service",
    [
        "nginx",
        "postgresql",
        "prometheus",
        "prometheus-alertmanager",
        "prometheus-node-exporter",
        "prometheus-postgres-exporter",
    ],
)
def test_services_the_roles_own_start_disabled(host, service):
    """Ensure packaged services wait for their roles instead of starting alone."""
    assert host.run(f"systemctl cat {service}.service").rc == 0
    assert not host.service(service).is_enabled
    assert not host.service(service).is_running


def test_python_and_psycopg_are_baked_in(host):
    """Verify modules can run with no package mirror reachable from the lab."""
    assert host.run("python3 -c 'import psycopg'").rc == 0


def test_network_is_internal(host):
    """Ensure the lab network leads nowhere: there is no default route out."""
    assert "default" not in host.check_output("ip route")


def test_container_from_another_image_is_made_again():
    """Ensure a host left on an image of another name now runs the role's image."""
    controller = testinfra.get_host("local://")
    image = controller.check_output(
        "podman container inspect --format '{{.ImageName}}' molecule-lab-stale"
    )
    assert image == "localhost/reading-history-lab:bookworm-3"
    state = controller.run(
        "podman exec molecule-lab-stale systemctl is-system-running --wait"
    )
    assert state.stdout.strip() in ("running", "degraded")


def test_container_missing_a_published_port_is_made_again():
    """Verify a host made before its port was published now publishes it."""
    controller = testinfra.get_host("local://")
    published = controller.check_output(
        "podman container inspect --format '{{json .HostConfig.PortBindings}}'"
        " molecule-lab-unported"
    )
    assert '"HostPort":"18089"' in published.replace(" ", "")
