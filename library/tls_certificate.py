#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: tls_certificate
short_description: Check the certificate a TLS server presents
description:
  - Connects to O(host) on O(port), completes a TLS handshake and checks the
    certificate the server presents, the way a client of the service would.
  - The chain must lead to a trusted authority (the system's, or those of
    O(ca_path)), the certificate must be valid now and name O(server_name), and it
    must stay valid for at least O(min_days_valid) more days.
  - Fails with the host, the port and the reason when any check does not hold, so
    an expiring certificate stops a release before it becomes an outage.
options:
  host:
    description:
      - Name or address to connect to.
    type: str
    required: true
  port:
    description:
      - TCP port of the TLS server.
    type: int
    default: 443
  server_name:
    description:
      - Name sent in the handshake (SNI) and that the certificate must cover.
      - Defaults to O(host).
    type: str
  ca_path:
    description:
      - PEM file of the authorities to trust, in place of the system's.
      - Needed for a self-signed certificate, which is then its own authority.
    type: path
  min_days_valid:
    description:
      - Days the certificate must still be valid for.
    type: int
    default: 14
  timeout:
    description:
      - Seconds the connection and the handshake may take.
    type: float
    default: 10
attributes:
  check_mode:
    support: full
    details: Only reads, so it checks in check mode exactly as in a normal run.
  diff_mode:
    support: none
    details: Nothing is changed, so there is no difference to show.
notes:
  - The connection is made from the managed host.
  - Only the standard library's C(ssl) is used, so the host needs no extra package.
seealso:
  - module: community.crypto.get_certificate
author:
  - Reading history release team
"""

EXAMPLES = r"""
- name: Check the public certificate lasts through the rollback window
  tls_certificate:
    host: reading-history.example.org
    min_days_valid: 14

- name: Check the lab's self-signed certificate on the load balancer
  tls_certificate:
    host: 127.0.0.1
    port: 8443
    server_name: localhost
    ca_path: .lab/lb-certificate.pem
  register: certificate

- name: Show when it expires
  ansible.builtin.debug:
    msg: "{{ certificate.subject_alt_names }} valid until {{ certificate.not_after }}"
"""

RETURN = r"""
subject:
  description: Common name of the certificate's subject; empty when it has none.
  returned: success
  type: str
  sample: reading-history.example.org
issuer:
  description: Common name or organisation of the certificate's issuer.
  returned: success
  type: str
  sample: Example CA
subject_alt_names:
  description: Names and addresses the certificate covers.
  returned: success
  type: list
  elements: str
  sample: [reading-history.example.org, 127.0.0.1]
not_before:
  description: Start of the validity, in UTC, ISO 8601.
  returned: success
  type: str
  sample: "2026-11-30T08:00:00+00:00"
not_after:
  description: End of the validity, in UTC, ISO 8601.
  returned: success
  type: str
  sample: "2027-02-28T08:00:00+00:00"
days_left:
  description: Whole days until the certificate expires.
  returned: success
  type: int
  sample: 86
protocol:
  description: TLS version the handshake settled on.
  returned: success
  type: str
  sample: TLSv1.3
"""

import datetime
import socket
import ssl
from typing import Any

from ansible.module_utils.basic import AnsibleModule

SECONDS_PER_DAY = 86400


def as_utc(openssl_time: str) -> datetime.datetime:
    """Turn a time as the ssl module prints it ('Jun  1 12:00:00 2027 GMT') into UTC."""
    seconds = ssl.cert_time_to_seconds(openssl_time)
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)


def first_value(name: tuple[tuple[tuple[str, str], ...], ...], *fields: str) -> str:
    """Return the first of fields found in a subject or issuer as getpeercert gives it."""
    values = {key: value for relative in name for key, value in relative}
    return next((values[field] for field in fields if field in values), "")


def describe(certificate: dict[str, Any], now: datetime.datetime) -> dict[str, Any]:
    """Summarise a certificate from ssl.getpeercert() for the module's result."""
    not_before = as_utc(certificate["notBefore"])
    not_after = as_utc(certificate["notAfter"])
    return {
        "subject": first_value(certificate.get("subject", ()), "commonName"),
        "issuer": first_value(
            certificate.get("issuer", ()), "commonName", "organizationName"
        ),
        "subject_alt_names": [
            value for _, value in certificate.get("subjectAltName", ())
        ],
        "not_before": not_before.isoformat(),
        "not_after": not_after.isoformat(),
        "days_left": int((not_after - now).total_seconds() // SECONDS_PER_DAY),
    }


def fetch_certificate(
    host: str, port: int, server_name: str, ca_path: str | None, timeout: float
) -> tuple[dict[str, Any], str]:
    """Handshake with verification on; return the peer certificate and the protocol."""
    context = ssl.create_default_context(cafile=ca_path)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            return tls.getpeercert(), tls.version() or ""


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            host=dict(type="str", required=True),
            port=dict(type="int", default=443),
            server_name=dict(type="str"),
            ca_path=dict(type="path"),
            min_days_valid=dict(type="int", default=14),
            timeout=dict(type="float", default=10),
        ),
        supports_check_mode=True,
    )

    host = module.params["host"]
    port = module.params["port"]
    server_name = module.params["server_name"] or host
    ca_path = module.params["ca_path"]
    endpoint = f"{host}:{port}"

    if not 0 < port < 65536:
        module.fail_json(msg=f"port {port} is not a TCP port")
    if module.params["min_days_valid"] < 0:
        module.fail_json(msg="min_days_valid must not be negative")
    if module.params["timeout"] <= 0:
        module.fail_json(msg="timeout must be greater than 0")

    # A bad trust file is the caller's mistake, not the server's: say so apart.
    try:
        ssl.create_default_context(cafile=ca_path)
    except (OSError, ssl.SSLError) as error:
        module.fail_json(
            msg=f"cannot read the authorities in ca_path {ca_path}: {error}"
        )

    try:
        certificate, protocol = fetch_certificate(
            host, port, server_name, ca_path, module.params["timeout"]
        )
    except ssl.SSLCertVerificationError as error:
        module.fail_json(
            msg=f"the certificate of {endpoint} for {server_name} is not valid: "
            f"{error.verify_message or error.reason}"
        )
    except (OSError, ssl.SSLError) as error:
        module.fail_json(msg=f"TLS handshake with {endpoint} failed: {error}")

    summary = describe(certificate, datetime.datetime.now(datetime.timezone.utc))
    summary["protocol"] = protocol
    if summary["days_left"] < module.params["min_days_valid"]:
        module.fail_json(
            msg=f"the certificate of {endpoint} for {server_name} expires on "
            f"{summary['not_after']}, in {summary['days_left']} days; at least "
            f"{module.params['min_days_valid']} are required",
            **summary,
        )

    module.exit_json(changed=False, **summary)


if __name__ == "__main__":
    main()
