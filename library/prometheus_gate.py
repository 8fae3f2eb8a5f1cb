#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: prometheus_gate
short_description: Hold a release until Prometheus says its metrics are within bounds
description:
  - Asks Prometheus's HTTP API for each gate's PromQL query and checks every series
    it returns against the gate's bounds. Polls until all gates pass in the same
    round, or fails at the deadline with every gate that did not pass, its series
    and their values.
  - A query that returns no series, or only NaN (a share of zero requests, say),
    fails the gate unless O(gates[].if_empty=pass).
  - Only reads; it changes nothing, so check mode runs it as usual.
options:
  url:
    description: Address of Prometheus, without the C(/api/v1) path.
    type: str
    default: http://127.0.0.1:9090
  gates:
    description: The checks to pass, all of them in the same round.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: What the gate checks, in words for the operator.
        type: str
        required: true
      query:
        description: PromQL instant query; every series it returns is checked.
        type: str
        required: true
      max:
        description: Highest value a series may have.
        type: float
      min:
        description: Lowest value a series may have.
        type: float
      if_empty:
        description: Whether a query returning no series passes or fails the gate.
        type: str
        choices: [pass, fail]
        default: fail
  deadline:
    description: Seconds to keep asking before failing.
    type: int
    default: 120
  interval:
    description: Seconds between two rounds of queries.
    type: int
    default: 5
  timeout:
    description: Seconds one query may take.
    type: int
    default: 10
attributes:
  check_mode:
    support: full
    details: The queries only read, and run in check mode too.
  diff_mode:
    support: none
    details: Nothing changes.
author:
  - Reading history release team
"""

EXAMPLES = r"""
- name: Hold the release until every app host is scraped and serves few errors
  prometheus_gate:
    url: http://127.0.0.1:9090
    deadline: 90
    gates:
      - name: every app host is scraped
        query: up{job="reading_history"}
        min: 1
      - name: share of 5xx answers per host over 5 minutes
        query: >-
          sum by (host) (rate(reading_history_http_requests_total{status=~"5.."}[5m]))
          / sum by (host) (rate(reading_history_http_requests_total[5m]))
        max: 0.01
        if_empty: pass
  delegate_to: "{{ groups['monitoring'][0] }}"
  register: gates
"""

RETURN = r"""
gates:
  description: Each gate of the last round, with its series and whether it passed.
  returned: always
  type: list
  elements: dict
  sample:
    - name: every app host is scraped
      passed: true
      problem: null
      series: [{"labels": {"host": "app1", "job": "reading_history"}, "value": 1.0}]
rounds:
  description: Rounds of queries made.
  returned: always
  type: int
  sample: 2
elapsed:
  description: Seconds from the first round to the last.
  returned: always
  type: float
  sample: 5.2
"""

import math
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.http_probe import ProbeResponse, poll, probe_once


@dataclass
class GateOutcome:
    name: str
    passed: bool
    problem: str | None = None
    series: list[dict[str, Any]] = field(default_factory=list)

    def as_result(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "problem": self.problem,
            "series": self.series,
        }


def query_url(base: str, query: str) -> str:
    return f"{base.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": query})


def read_series(response: ProbeResponse) -> tuple[list[dict[str, Any]] | None, str | None]:
    """Return the series of an instant query's answer, or why there are none to read."""
    if response.error:
        return None, f"Prometheus did not answer: {response.error}"
    body = response.json if response.is_json else {}
    if response.status != 200 or body.get("status") != "success":
        reason = body.get("error") or response.body[:200]
        return None, f"Prometheus refused the query (HTTP {response.status}): {reason}"

    data = body.get("data", {})
    if data.get("resultType") == "scalar":
        return [{"labels": {}, "value": float(data["result"][1])}], None
    if data.get("resultType") != "vector":
        return None, f"the query returned a {data.get('resultType')}, not an instant vector"
    series = [
        {"labels": item.get("metric", {}), "value": float(item["value"][1])}
        for item in data.get("result", [])
    ]
    return series, None


def out_of_bounds(value: float, gate: dict[str, Any]) -> str | None:
    if gate.get("max") is not None and value > gate["max"]:
        return f"above {gate['max']:g}"
    if gate.get("min") is not None and value < gate["min"]:
        return f"below {gate['min']:g}"
    return None


def name_series(labels: dict[str, str]) -> str:
    shown = {name: value for name, value in labels.items() if name != "__name__"}
    return "{" + ", ".join(f'{name}="{value}"' for name, value in sorted(shown.items())) + "}"


def judge_gate(gate: dict[str, Any], response: ProbeResponse) -> GateOutcome:
    series, problem = read_series(response)
    if series is None:
        return GateOutcome(gate["name"], False, problem)

    measured = [item for item in series if not math.isnan(item["value"])]
    if not measured:
        passed = gate["if_empty"] == "pass"
        return GateOutcome(gate["name"], passed, None if passed else "no data", series)

    breaches = [
        f"{name_series(item['labels'])} = {item['value']:g} ({breach})"
        for item in measured
        if (breach := out_of_bounds(item["value"], gate)) is not None
    ]
    if breaches:
        return GateOutcome(gate["name"], False, "; ".join(breaches), series)
    return GateOutcome(gate["name"], True, None, series)


class GateRound:
    """One round asks every gate's query; poll() repeats rounds until all pass."""

    def __init__(self, url: str, gates: list[dict[str, Any]]) -> None:
        self.url = url
        self.gates = gates
        self.outcomes: list[GateOutcome] = []

    def ask(self, timeout: float) -> ProbeResponse:
        self.outcomes = [
            judge_gate(gate, probe_once(query_url(self.url, gate["query"]), timeout=timeout))
            for gate in self.gates
        ]
        return ProbeResponse(status=200)

    def judge(self, _response: ProbeResponse) -> str | None:
        failed = [outcome for outcome in self.outcomes if not outcome.passed]
        if not failed:
            return None
        return "; ".join(f"{outcome.name}: {outcome.problem}" for outcome in failed)


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", default="http://127.0.0.1:9090"),
            gates=dict(
                type="list",
                elements="dict",
                required=True,
                options=dict(
                    name=dict(type="str", required=True),
                    query=dict(type="str", required=True),
                    max=dict(type="float"),
                    min=dict(type="float"),
                    if_empty=dict(type="str", choices=["pass", "fail"], default="fail"),
                ),
            ),
            deadline=dict(type="int", default=120),
            interval=dict(type="int", default=5),
            timeout=dict(type="int", default=10),
        ),
        supports_check_mode=True,
    )
    params = module.params
    for gate in params["gates"]:
        if not gate["name"].strip() or not gate["query"].strip():
            module.fail_json(msg="every gate needs a name and a query")

    gate_round = GateRound(params["url"], params["gates"])
    outcome = poll(
        gate_round.ask,
        gate_round.judge,
        timeout=params["timeout"],
        deadline=params["deadline"],
        interval=params["interval"],
    )
    result = dict(
        changed=False,
        gates=[gate.as_result() for gate in gate_round.outcomes],
        rounds=outcome.attempts,
        elapsed=round(outcome.elapsed, 1),
    )
    if not outcome.ok:
        module.fail_json(
            msg=f"metric gates at {params['url']} still failing after "
            f"{params['deadline']} s: {outcome.problem}",
            **result,
        )
    module.exit_json(msg=f"{len(params['gates'])} metric gates passed", **result)


if __name__ == "__main__":
    main()
