"""Integration tests of tls_certificate against real TLS servers on 127.0.0.1.

Each server presents a certificate made for the test: self-signed, so the test's
certificate file is also the authority the module is told to trust.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from module_harness import run_module_process

NOW = datetime.datetime.now(datetime.timezone.utc)


def write_certificate(
    folder: Path, *, not_before: datetime.datetime, not_after: datetime.datetime
) -> tuple[Path, Path]:
    """Make a self-signed certificate for localhost and 127.0.0.1; return its files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reading-history test")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_file = folder / "certificate.pem"
    key_file = folder / "key.pem"
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certificate_file, key_file


class TlsServer:
    """Accepts connections on a free loopback port and completes TLS handshakes."""

    def __init__(self, certificate_file: Path, key_file: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certificate_file, key_file)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with client:
                try:
                    with self.context.wrap_socket(client, server_side=True):
                        pass
                except (OSError, ssl.SSLError):
                    pass  # the client refused the certificate; that is the test

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[Callable[..., tuple[TlsServer, Path]]]:
    """Return a function that starts a server with a certificate of the given validity."""
    servers: list[TlsServer] = []

    def start(*, valid_from_days: int = -1, valid_until_days: int = 90):
        folder = tmp_path / f"server{len(servers)}"
        folder.mkdir()
        certificate_file, key_file = write_certificate(
            folder,
            not_before=NOW + datetime.timedelta(days=valid_from_days),
            not_after=NOW + datetime.timedelta(days=valid_until_days),
        )
        servers.append(TlsServer(certificate_file, key_file))
        return servers[-1], certificate_file

    yield start
    for server in servers:
        server.close()


def check(**args):
    return run_module_process("tls_certificate", {"host": "127.0.0.1", **args})


def test_valid_certificate_is_described(tls_server) -> None:
    """Ensure a trusted, current certificate passes and its names and dates are returned."""
    server, certificate_file = tls_server(valid_until_days=90)

    rc, result, _ = check(port=server.port, ca_path=str(certificate_file))

    assert rc == 0, result
    assert result["changed"] is False
    assert result["subject"] == "reading-history test"
    assert result["subject_alt_names"] == ["localhost", "127.0.0.1"]
    assert result["days_left"] in (89, 90)
    assert result["protocol"] in ("TLSv1.2", "TLSv1.3")
    assert datetime.datetime.fromisoformat(result["not_after"]) > NOW


def test_certificate_expiring_soon_fails_with_its_date(tls_server) -> None:
    """Verify a certificate valid for fewer days than required stops the run."""
    server, certificate_file = tls_server(valid_until_days=5)

    rc, result, _ = check(
        port=server.port, ca_path=str(certificate_file), min_days_valid=14
    )

    assert rc == 1
    assert f"127.0.0.1:{server.port}" in result["msg"]
    assert "in 4 days" in result["msg"] or "in 5 days" in result["msg"]
    assert "at least 14" in result["msg"]
    assert result["days_left"] in (4, 5)


def test_expired_certificate_fails_the_handshake(tls_server) -> None:
    """Ensure an expired certificate is reported as such."""
    server, certificate_file = tls_server(valid_from_days=-30, valid_until_days=-1)

    rc, result, _ = check(port=server.port, ca_path=str(certificate_file))

    assert rc == 1
    assert "is not valid" in result["msg"]
    assert "expired" in result["msg"]


def test_certificate_for_another_name_fails(tls_server) -> None:
    """Verify the certificate must cover the name clients use."""
    server, certificate_file = tls_server()

    rc, result, _ = check(
        port=server.port,
        server_name="reading-history.example.org",
        ca_path=str(certificate_file),
    )

    assert rc == 1
    assert "for reading-history.example.org is not valid" in result["msg"]
    assert "mismatch" in result["msg"].lower()


def test_untrusted_certificate_fails(tls_server) -> None:
    """Ensure a self-signed certificate fails against the system's authorities."""
    server, _ = tls_server()

    rc, result, _ = check(port=server.port, server_name="localhost")

    assert rc == 1
    assert "is not valid" in result["msg"]
    assert "self-signed" in result["msg"] or "self signed" in result["msg"]


def test_closed_port_names_the_endpoint() -> None:
    """Verify a server that does not answer is named in the error."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    rc, result, _ = check(port=port, timeout=2)

    assert rc == 1
    assert f"TLS handshake with 127.0.0.1:{port} failed" in result["msg"]


def test_unreadable_authorities_file_is_named(tmp_path: Path) -> None:
    """Ensure a wrong ca_path is reported as the caller's problem, before connecting."""
    missing = tmp_path / "missing.pem"

    rc, result, _ = check(port=443, ca_path=str(missing))

    assert rc == 1
    assert f"ca_path {missing}" in result["msg"]
