"""Unit tests of http_health and http_probe: JSON matching, masking, polling rules.

Requests are faked; no socket is opened.
"""

from __future__ import annotations

import http_health
import pytest
from ansible.module_utils.http_probe import (
    MISSING,
    ProbeResponse,
    json_mismatches,
    lookup_dotted,
    poll,
    sanitize_headers,
    sensitive_header_values,
    values_equal,
)
from http_health import make_judge, masked_url
from module_harness import ModuleFail, run_module, run_module_process

HEALTH = {
    "status": "ok",
    "schema_version": {"found": 7, "expected": 7},
    "checks": [{"name": "db", "ok": True}],
    "release": None,
}


class TestDottedKeys:
    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("status", "ok"),
            ("schema_version.found", 7),
            ("checks.0.name", "db"),
            ("checks.0.ok", True),
            ("release", None),
        ],
    )
    def test_follows_objects_and_list_indexes(self, key: str, value) -> None:
        """Ensure dotted keys reach nested objects and list items."""
        assert lookup_dotted(HEALTH, key) == value

    @pytest.mark.parametrize(
        "key",
        [
            "missing",
            "schema_version.lost",
            "checks.5.name",
            "status.deeper",
            "checks.x",
        ],
    )
    def test_absent_paths_are_missing_not_null(self, key: str) -> None:
        """Verify a path that leads nowhere is told apart from a JSON null."""
        assert lookup_dotted(HEALTH, key) is MISSING


class TestJsonMatching:
    def test_matching_body_has_no_problems(self) -> None:
        """Ensure a body holding every expected value passes."""
        expected = {"status": "ok", "schema_version.found": 7}
        assert json_mismatches(HEALTH, expected, ["release", "checks.0.ok"]) == []

    def test_wrong_nested_value_is_described(self) -> None:
        """Verify the message names the dotted field, what came and what was wanted."""
        problems = json_mismatches(HEALTH, {"schema_version.found": 8}, [])
        assert problems == ["field 'schema_version.found' is 7, expected 8"]

    def test_nested_dict_matches_as_subset(self) -> None:
        """Ensure a dict expectation ignores extra keys but checks those it names."""
        assert json_mismatches(HEALTH, {"schema_version": {"found": 7}}, []) == []
        assert json_mismatches(HEALTH, {"schema_version": {"found": 6}}, []) == [
            "field 'schema_version.found' is 7, expected 6"
        ]

    def test_missing_required_and_expected_fields_are_listed(self) -> None:
        """Verify every missing field is reported, not only the first."""
        problems = json_mismatches(HEALTH, {"version": "1.0"}, ["uptime", "status"])
        assert problems == ["field 'uptime' is missing", "field 'version' is missing"]

    @pytest.mark.parametrize(
        ("actual", "expected", "equal"),
        [
            (7, 7, True),
            (7, 7.0, True),
            ("7", 7, False),
            (True, 1, False),
            (1, True, False),
            (False, False, True),
            (None, None, True),
            (None, "", False),
        ],
    )
    def test_json_types_must_agree(self, actual, expected, equal: bool) -> None:
        """Ensure "7" does not match 7 and true does not match 1."""
        assert values_equal(actual, expected) is equal


class TestHeaderMasking:
    HEADERS = {
        "Authorization": "Bearer abc",
        "Proxy-Authorization": "Basic xyz",
        "Cookie": "session=1",
        "X-Api-Key": "key-1",
        "X-Auth-Token": "tok-1",
        "Accept": "application/json",
        "X-Request-Id": "r-1",
    }

    def test_credential_headers_are_masked(self) -> None:
        """Ensure credential values are replaced and ordinary headers kept."""
        safe = sanitize_headers(self.HEADERS)

        assert safe["Accept"] == "application/json"
        assert safe["X-Request-Id"] == "r-1"
        for name in (
            "Authorization",
            "Proxy-Authorization",
            "Cookie",
            "X-Api-Key",
            "X-Auth-Token",
        ):
            assert safe[name] == "********"

    def test_secret_values_are_collected_for_no_log(self) -> None:
        """Verify the values handed to Ansible's masking are exactly the credentials."""
        assert sorted(sensitive_header_values(self.HEADERS)) == sorted(
            ["Bearer abc", "Basic xyz", "session=1", "key-1", "tok-1"]
        )

    def test_url_password_is_masked(self) -> None:
        """Ensure a password in the URL never reaches the output."""
        url = "https://probe:hunter2@svc.test:8443/health?x=1"
        assert masked_url(url) == "https://probe:********@svc.test:8443/health?x=1"
        assert masked_url("http://svc.test/health") == "http://svc.test/health"


class TestJudge:
    def test_status_outside_the_list_is_unhealthy(self) -> None:
        """Ensure a status that is not accepted is named."""
        judge = make_judge([200, 204], {}, [])
        assert (
            judge(ProbeResponse(status=503)) == "status 503, expected one of [200, 204]"
        )
        assert judge(ProbeResponse(status=204)) is None

    def test_body_that_is_not_json_is_unhealthy_when_json_is_expected(self) -> None:
        """Verify an HTML answer fails a JSON expectation."""
        judge = make_judge([200], {"status": "ok"}, [])
        assert "not JSON" in judge(ProbeResponse(status=200, body="<html>"))

    def test_transport_error_is_the_reason(self) -> None:
        """Ensure a refused connection is reported as the error."""
        judge = make_judge([200], {}, [])
        assert judge(ProbeResponse(error="URLError: refused")) == "URLError: refused"


class ScriptedRequests:
    """Answers with a fixed list of responses and advances a fake clock per request."""

    def __init__(
        self, responses: list[ProbeResponse], seconds_each: float = 0.1
    ) -> None:
        self.responses = responses
        self.seconds_each = seconds_each
        self.now = 0.0
        self.timeouts: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def request(self, timeout: float) -> ProbeResponse:
        self.timeouts.append(timeout)
        self.now += self.seconds_each
        return self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]


def run_poll(
    script: ScriptedRequests, deadline: float, timeout: float = 5, interval: float = 1
):
    return poll(
        script.request,
        make_judge([200], {}, []),
        timeout=timeout,
        deadline=deadline,
        interval=interval,
        clock=script.clock,
        sleep=script.sleep,
    )


class TestPoll:
    def test_retries_until_healthy(self) -> None:
        """Ensure polling goes on through bad answers and counts attempts."""
        script = ScriptedRequests(
            [
                ProbeResponse(status=503),
                ProbeResponse(status=503),
                ProbeResponse(status=200),
            ]
        )

        outcome = run_poll(script, deadline=60)

        assert outcome.ok and outcome.attempts == 3
        assert outcome.response.status == 200

    def test_gives_up_at_the_deadline(self) -> None:
        """Verify an endpoint that never recovers fails near the deadline, not later."""
        script = ScriptedRequests([ProbeResponse(status=503)])

        outcome = run_poll(script, deadline=5)

        assert not outcome.ok
        assert outcome.problem == "status 503, expected one of [200]"
        assert outcome.elapsed <= 5
        assert outcome.attempts == 5

    def test_zero_deadline_still_makes_one_request(self) -> None:
        """Ensure the first request is always made."""
        script = ScriptedRequests([ProbeResponse(status=200)])

        outcome = run_poll(script, deadline=0)

        assert outcome.ok and outcome.attempts == 1

    def test_request_timeout_shrinks_near_the_deadline(self) -> None:
        """Verify no request may run far past the deadline."""
        script = ScriptedRequests([ProbeResponse(status=503)], seconds_each=0)

        run_poll(script, deadline=3, timeout=10, interval=1)

        assert script.timeouts[0] == 3
        assert script.timeouts[-1] < 3


class TestArguments:
    @pytest.mark.parametrize(
        ("args", "message"),
        [
            ({"url": "ftp://svc.test/"}, "must start with http:// or https://"),
            ({"url": "http://svc.test/", "status_code": [600]}, "outside 100-599"),
            ({"url": "http://svc.test/", "status_code": []}, "at least one status"),
            (
                {
                    "url": "http://svc.test/",
                    "method": "HEAD",
                    "expected_json": {"a": 1},
                },
                "method HEAD gets no body",
            ),
            (
                {"url": "http://svc.test/", "timeout": 0},
                "timeout must be greater than 0",
            ),
            (
                {"url": "http://svc.test/", "deadline": -1},
                "deadline must not be negative",
            ),
            (
                {"url": "http://svc.test/", "interval": -1},
                "interval must not be negative",
            ),
            ({"url": "http://svc.test/", "method": "POST"}, "method"),
        ],
    )
    def test_bad_arguments_fail_before_any_request(
        self, monkeypatch: pytest.MonkeyPatch, args: dict, message: str
    ) -> None:
        """Ensure each invalid option fails with a message that names the rule."""

        def no_request(*args, **kwargs):
            raise AssertionError("a request was made before validation")

        monkeypatch.setattr(http_health, "probe_once", no_request)

        with pytest.raises(ModuleFail) as failed:
            run_module(http_health, args)

        assert message in failed.value.result["msg"]

    def test_credentials_never_reach_the_printed_result(self) -> None:
        """Verify the printed result masks header and URL secrets, arguments too."""
        rc, result, stdout = run_module_process(
            "http_health",
            {
                "url": "ftp://probe:url-secret-1@svc.test/",
                "headers": {"Authorization": "Bearer header-secret-2", "Accept": "x/y"},
            },
        )

        assert rc == 1 and result["failed"]
        assert "header-secret-2" not in stdout
        assert "url-secret-1" not in stdout
        assert result["invocation"]["module_args"]["headers"]["Accept"] == "x/y"
