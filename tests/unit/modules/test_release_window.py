"""Unit tests of release_window: days, hours and time zones of the deployment window."""

from __future__ import annotations

import pytest
import release_window
from module_harness import ModuleFail, run_module

# Tuesday and Wednesday nights, 02:00 to 04:00 in Berlin (UTC+1 in winter, +2 in summer).
WINDOW = {"days": ["tue", "Wednesday"], "start": "02:00", "end": "04:00",
          "timezone": "Europe/Berlin"}  # fmt: skip


def check(at: str, **options) -> dict:
    return run_module(release_window, {**WINDOW, "at": at, **options})


def refusal(at: str, **options) -> str:
    with pytest.raises(ModuleFail) as failure:
        check(at, **options)
    return failure.value.result["msg"]


class TestInsideAndOutside:
    @pytest.mark.parametrize(
        "at",
        [
            "2026-12-08T01:00:00+00:00",  # Tuesday 02:00 in Berlin, the first minute
            "2026-12-09T02:59:59+00:00",  # Wednesday 03:59:59 in Berlin
            "2026-06-09T00:30:00+00:00",  # Tuesday 02:30 in Berlin in summer time
        ],
    )
    def test_moments_in_the_window_pass(self, at):
        """Ensure a moment inside the window, read in its time zone, passes unchanged."""
        result = check(at)

        assert result["in_window"] is True
        assert result["changed"] is False
        assert result["overridden"] is False

    @pytest.mark.parametrize(
        "at",
        [
            "2026-12-08T03:00:00+00:00",  # Tuesday 04:00 in Berlin: the window has closed
            "2026-12-08T00:59:59+00:00",  # Tuesday 01:59:59 in Berlin: not open yet
            "2026-12-07T01:30:00+00:00",  # Monday 02:30 in Berlin
            "2026-12-10T01:30:00+00:00",  # Thursday 02:30 in Berlin
            "2026-06-09T02:30:00+00:00",  # Tuesday 04:30 in Berlin in summer time
        ],
    )
    def test_moments_outside_the_window_are_refused(self, at):
        """Verify the refusal gives the local time and the next opening."""
        message = refusal(at)

        assert "outside the deployment window (Tue, Wed 02:00-04:00 Europe/Berlin)" in message
        assert "the next one opens" in message
        assert "Set override_reason" in message

    def test_utc_time_is_read_in_the_windows_zone(self):
        """Ensure 01:30 UTC counts as 02:30 in Berlin, not as 01:30 outside the window."""
        assert check("2026-12-08T01:30:00+00:00")["local_time"] == "2026-12-08T02:30:00+01:00"

    def test_next_opening_is_named_in_the_windows_zone(self):
        """Verify a Friday refusal points at the coming Tuesday, 02:00 Berlin time."""
        message = refusal("2026-12-04T14:00:00+00:00")

        assert "it is Fri 2026-12-04 15:00 in Europe/Berlin" in message
        assert "opens 2026-12-08T02:00:00+01:00" in message


class TestPastMidnight:
    NIGHT = {"days": ["sat"], "start": "23:00", "end": "01:00", "timezone": "UTC"}

    def test_window_runs_into_the_next_day(self):
        """Ensure Saturday 23:00 to Sunday 01:00 admits Sunday 00:30."""
        result = run_module(release_window, {**self.NIGHT, "at": "2026-12-06T00:30:00+00:00"})

        assert result["in_window"] is True

    def test_window_belongs_to_the_day_it_starts(self):
        """Verify Sunday 23:30 is outside a window that opens on Saturdays."""
        with pytest.raises(ModuleFail):
            run_module(release_window, {**self.NIGHT, "at": "2026-12-06T23:30:00+00:00"})


class TestOverride:
    def test_a_reason_lets_the_deploy_go_ahead_with_a_warning(self):
        """Ensure a given reason passes outside the window and is returned for the record."""
        result = check("2026-12-04T14:00:00+00:00", override_reason="security fix CVE-1")

        assert result["in_window"] is False
        assert result["overridden"] is True
        assert result["override_reason"] == "security fix CVE-1"

    def test_a_blank_reason_is_no_reason(self):
        """Verify a reason of spaces does not open the window."""
        assert "outside the deployment window" in refusal(
            "2026-12-04T14:00:00+00:00", override_reason="   "
        )

    def test_no_reason_is_kept_inside_the_window(self):
        """Ensure a reason given inside the window is not reported as an override."""
        result = check("2026-12-08T01:00:00+00:00", override_reason="habit")

        assert result["overridden"] is False
        assert result["override_reason"] == ""


class TestBadInput:
    @pytest.mark.parametrize(
        ("options", "named"),
        [
            ({"days": ["tuesdy"]}, "days: 'tuesdy' is not a day of the week"),
            ({"days": []}, "days: name at least one day"),
            ({"start": "2am"}, "start: '2am' is not a time of day as HH:MM"),
            ({"end": "24:00"}, "end: '24:00' is not a time of day as HH:MM"),
            ({"timezone": "Europe/Atlantis"}, "timezone: 'Europe/Atlantis' is not a known"),
            ({"at": "yesterday"}, "at: 'yesterday' is not an ISO 8601 time"),
            ({"at": "2026-12-08T02:00:00"}, "has no UTC offset"),
        ],
    )
    def test_each_bad_option_is_named(self, options, named):
        """Ensure a malformed window fails naming the option and the value."""
        arguments = {**WINDOW, "at": "2026-12-08T01:00:00+00:00", **options}
        with pytest.raises(ModuleFail) as failure:
            run_module(release_window, arguments)

        assert failure.value.result["msg"].startswith("deployment window is invalid: ")
        assert named in failure.value.result["msg"]
