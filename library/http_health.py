#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: http_health
short_description: Wait until an HTTP endpoint reports the expected health
description:
  - Requests O(url) again and again until it answers with one of the O(status_code)
    values and, when asked, a JSON body holding the values of O(expected_json) and the
    fields of O(required_fields).
  - Fails when O(deadline) seconds pass without such an answer, naming the URL, the
    last status or error, and the time spent.
  - Changes nothing, so it polls in check mode too; a deployment checked in check mode
    still learns whether the service is healthy.
options:
  url:
    description:
      - HTTP or HTTPS URL to request.
      - A password in the URL is masked in the output.
    type: str
    required: true
  method:
    description:
      - HTTP method of the requests.
      - V(HEAD) has no body, so it cannot be combined with O(expected_json) or
        O(required_fields).
    type: str
    default: GET
    choices: [GET, HEAD]
  status_code:
    description:
      - Statuses that count as healthy.
    type: list
    elements: int
    default: [200]
  expected_json:
    description:
      - Values the JSON body must hold. Keys may be dotted to reach nested objects,
        so V(schema_version.found) is the C(found) field of the C(schema_version)
        object; a number in a dotted key indexes a list.
      - A dict value matches when the response holds at least its keys with those
        values. Other values must be equal and of the same JSON type, so V("3") does
        not match V(3).
    type: dict
    default: {}
  required_fields:
    description:
      - Dotted keys that must exist in the JSON body, whatever their value.
    type: list
    elements: str
    default: []
  timeout:
    description:
      - Seconds one request may take.
    type: float
    default: 5
  deadline:
    description:
      - Seconds to keep trying in total. The first request is always made.
    type: float
    default: 60
  interval:
    description:
      - Seconds to wait between two requests.
    type: float
    default: 2
  headers:
    description:
      - Headers to send with each request.
      - Values of headers whose names suggest a credential (such as C(Authorization),
        C(Cookie), C(X-Api-Key), or a name containing C(token) or C(secret)) are masked
        in every output of the module.
    type: dict
    default: {}
  validate_certs:
    description:
      - Whether an HTTPS server's certificate must be valid.
    type: bool
    default: true
  use_proxy:
    description:
      - Whether to honour the proxy settings of the managed host's environment.
    type: bool
    default: true
  msg:
    description:
      - Message of the failure when the deadline passes, in place of the default one.
      - The status, error, elapsed time and number of attempts are returned with it.
    type: str
attributes:
  check_mode:
    support: full
    details: Only reads, so it polls in check mode exactly as in a normal run.
  diff_mode:
    support: none
    details: Nothing is changed, so there is no difference to show.
notes:
  - Requests are made from the managed host, so O(url) may name a service that listens
    on that host's loopback address only.
  - Redirects are followed the way C(urllib) follows them; the status judged is that of
    the last answer.
  - A body larger than 1 MiB is cut, and then is not valid JSON.
seealso:
  - module: ansible.builtin.uri
  - module: ansible.builtin.wait_for
author:
  - Reading history release team
"""

EXAMPLES = r"""
- name: Wait for the new release to answer
  http_health:
    url: http://127.0.0.1:8080/health
    expected_json:
      status: ok
      release: "{{ release_version }}"
    deadline: 120
  register: health

- name: Show how long the release took to come up
  ansible.builtin.debug:
    msg: "healthy after {{ health.attempts }} attempts and {{ health.elapsed }}s"

- name: Check that the release sees the migrated schema
  http_health:
    url: http://127.0.0.1:8080/api/v1/health/db
    expected_json:
      status: ok
      schema_version.found: "{{ migration.current_version | int }}"
    required_fields:
      - schema_version.expected
    msg: the release does not see the schema version that was just migrated

- name: Probe through the load balancer, which wants a token
  http_health:
    url: "https://{{ reading_history_public_host }}/health"
    headers:
      Authorization: "Bearer {{ vault_health_token }}"
    status_code: [200]
"""

RETURN = r"""
url:
  description: URL that was polled, with any password in it masked.
  returned: always
  type: str
  sample: http://127.0.0.1:8080/api/v1/health/db
status:
  description: HTTP status of the last answer; null when no answer came.
  returned: always
  type: int
  sample: 200
json:
  description: JSON body of the last answer; null when the body was not JSON.
  returned: always
  type: raw
  sample: {"status": "ok", "reason": null, "schema_version": {"found": 7, "expected": 7}}
elapsed:
  description: Seconds spent polling.
  returned: always
  type: float
  sample: 3.1
attempts:
  description: Number of requests made.
  returned: always
  type: int
  sample: 2
error:
  description: Why the last answer was not healthy.
  returned: failure
  type: str
  sample: "field 'schema_version.found' is 6, expected 7"
request_headers:
  description: Headers sent, with credential values masked.
  returned: failure
  type: dict
  sample: {"Authorization": "********", "Accept": "application/json"}
"""

import urllib.parse
from collections.abc import Callable
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.http_probe import (
    ProbeResponse,
    ProbeResult,
    json_mismatches,
    poll,
    probe_once,
    sanitize_headers,
    sensitive_header_values,
)


def url_password(url: str) -> str | None:
    return urllib.parse.urlsplit(url).password


def masked_url(url: str) -> str:
    """Replace the password of a URL's user part, which would otherwise be printed."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:********@{host}"))


def make_judge(
    status_codes: list[int], expected_json: dict[str, Any], required_fields: list[str]
) -> Callable[[ProbeResponse], str | None]:
    wants_json = bool(expected_json or required_fields)

    def judge(response: ProbeResponse) -> str | None:
        """Return why a response is not healthy, or None when it is."""
        if response.status is None:
            return response.error or "no answer"
        if response.status not in status_codes:
            return f"status {response.status}, expected one of {status_codes}"
        if response.error:
            return response.error
        if wants_json and not response.is_json:
            return f"status {response.status} but the body is not JSON"
        problems = json_mismatches(response.json, expected_json, required_fields)
        return "; ".join(problems) if problems else None

    return judge


def failure_message(shown_url: str, outcome: ProbeResult) -> str:
    spent = f"{shown_url} not healthy after {outcome.elapsed:.1f}s and {outcome.attempts} attempts"
    if outcome.response.status is None:
        return f"{spent}: last error: {outcome.problem}"
    return f"{spent}: last status {outcome.response.status}: {outcome.problem}"


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True),
            method=dict(type="str", default="GET", choices=["GET", "HEAD"]),
            status_code=dict(type="list", elements="int", default=[200]),
            expected_json=dict(type="dict", default={}),
            required_fields=dict(type="list", elements="str", default=[]),
            timeout=dict(type="float", default=5),
            deadline=dict(type="float", default=60),
            interval=dict(type="float", default=2),
            headers=dict(type="dict", default={}),
            validate_certs=dict(type="bool", default=True),
            use_proxy=dict(type="bool", default=True),
            msg=dict(type="str"),
        ),
        supports_check_mode=True,
    )

    url = module.params["url"]
    method = module.params["method"]
    status_codes = module.params["status_code"]
    expected_json = module.params["expected_json"]
    required_fields = module.params["required_fields"]
    timeout = module.params["timeout"]
    deadline = module.params["deadline"]
    interval = module.params["interval"]
    headers = {name: str(value) for name, value in module.params["headers"].items()}

    # Credentials are masked in every output, the echoed arguments included.
    for secret in [*sensitive_header_values(headers), url_password(url)]:
        if secret:
            module.no_log_values.add(secret)
    shown_url = masked_url(url)

    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        module.fail_json(msg=f"url '{shown_url}' must start with http:// or https://")
    if not status_codes:
        module.fail_json(msg="status_code must list at least one status")
    if any(code < 100 or code > 599 for code in status_codes):
        module.fail_json(msg=f"status_code {status_codes} holds a value outside 100-599")
    if method == "HEAD" and (expected_json or required_fields):
        module.fail_json(
            msg="method HEAD gets no body, so expected_json and required_fields cannot be checked"
        )
    if timeout <= 0:
        module.fail_json(msg="timeout must be greater than 0")
    if deadline < 0:
        module.fail_json(msg="deadline must not be negative")
    if interval < 0:
        module.fail_json(msg="interval must not be negative")

    # Poll until healthy or out of time.
    def request(request_timeout: float) -> ProbeResponse:
        return probe_once(
            url,
            method=method,
            headers=headers,
            timeout=request_timeout,
            validate_certs=module.params["validate_certs"],
            use_proxy=module.params["use_proxy"],
        )

    judge = make_judge(status_codes, expected_json, required_fields)
    outcome = poll(request, judge, timeout=timeout, deadline=deadline, interval=interval)

    # Report the last answer either way.
    result = {
        "changed": False,
        "url": shown_url,
        "status": outcome.response.status,
        "json": outcome.response.json,
        "elapsed": round(outcome.elapsed, 3),
        "attempts": outcome.attempts,
    }
    if outcome.ok:
        module.exit_json(**result)

    module.fail_json(
        msg=module.params["msg"] or failure_message(shown_url, outcome),
        error=outcome.problem,
        request_headers=sanitize_headers(headers),
        **result,
    )


if __name__ == "__main__":
    main()
