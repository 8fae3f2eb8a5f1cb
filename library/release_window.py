#!/usr/bin/python
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: release_window
short_description: Check that now falls in the deployment window, in the window's time zone
description:
  - "Fails unless the current time, read in O(timezone), falls in the deployment window:
    one of O(days), from O(start) to O(end). The failure says the local time there and
    when the next window opens."
  - A window whose O(end) is not after its O(start) runs past midnight into the next day,
    and belongs to the day it starts on.
  - With O(override_reason), a time outside the window passes with a warning, and the
    reason is returned so that the deployment record keeps it.
  - Runs on the controller; it changes nothing anywhere.
options:
  days:
    description:
      - Days the window opens on, as English names or their first three letters, in any
        case (V(tue), V(Wednesday)).
    type: list
    elements: str
    required: true
  start:
    description: Time the window opens, C(HH:MM) on a 24-hour clock, in O(timezone).
    type: str
    required: true
  end:
    description: Time the window closes, C(HH:MM), in O(timezone).
    type: str
    required: true
  timezone:
    description: IANA name of the time zone the window is given in, such as V(Europe/Berlin).
    type: str
    required: true
  at:
    description:
      - The moment to check, in ISO 8601 with its UTC offset; by default, now.
      - Lets an operator ask whether a planned time is in the window.
    type: str
  override_reason:
    description:
      - Why this deployment goes ahead outside the window. Empty means it may not.
    type: str
    default: ""
attributes:
  check_mode:
    support: full
    details: The module only reads the clock; check mode runs it as usual.
  diff_mode:
    support: none
    details: Nothing changes.
notes:
  - The time zone data is the controller's own (the system's zoneinfo files).
author:
  - Reading history release team
"""

EXAMPLES = r"""
- name: Deploy to production on Tuesday and Wednesday nights only
  release_window:
    days: [tue, wed]
    start: "02:00"
    end: "04:00"
    timezone: Europe/Berlin
    override_reason: "{{ release_preflight_window_override }}"
  delegate_to: localhost

- name: Ask whether a planned time is in the window
  release_window:
    days: [tue, wed]
    start: "02:00"
    end: "04:00"
    timezone: Europe/Berlin
    at: "2026-12-08T01:30:00+00:00"
  register: planned
"""

RETURN = r"""
in_window:
  description: Whether the moment checked falls in the window.
  returned: always
  type: bool
  sample: false
local_time:
  description: The moment checked, in the window's time zone.
  returned: always
  type: str
  sample: "2026-12-04T15:02:11+01:00"
window:
  description: The window, in words.
  returned: always
  type: str
  sample: "Tue, Wed 02:00-04:00 Europe/Berlin"
next_opening:
  description: When the window next opens after the moment checked, in its time zone.
  returned: always
  type: str
  sample: "2026-12-08T02:00:00+01:00"
overridden:
  description: Whether the moment was outside the window and O(override_reason) let it pass.
  returned: always
  type: bool
  sample: false
override_reason:
  description: The reason given for deploying outside the window, when it was used.
  returned: always
  type: str
  sample: ""
"""

import datetime
import re
from dataclasses import dataclass

from ansible.module_utils.basic import AnsibleModule

try:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
except ImportError:  # Python older than 3.9 on the controller
    ZoneInfo = None

DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
CLOCK_TIME = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


class WindowError(ValueError):
    """A window that cannot be understood; the message names the option."""


@dataclass(frozen=True)
class Window:
    weekdays: frozenset[int]
    start: datetime.time
    end: datetime.time
    zone: datetime.tzinfo
    zone_name: str

    def opening_on(self, day: datetime.date) -> datetime.datetime:
        return datetime.datetime.combine(day, self.start, tzinfo=self.zone)

    def closing_after(self, opening: datetime.datetime) -> datetime.datetime:
        closing_day = opening.date()
        if self.end <= self.start:
            closing_day += datetime.timedelta(days=1)
        return datetime.datetime.combine(closing_day, self.end, tzinfo=self.zone)

    def contains(self, moment: datetime.datetime) -> bool:
        local = moment.astimezone(self.zone)
        # The window that contains the moment opened today or, past midnight, yesterday.
        for days_back in (0, 1):
            day = local.date() - datetime.timedelta(days=days_back)
            if day.weekday() not in self.weekdays:
                continue
            opening = self.opening_on(day)
            if opening <= local < self.closing_after(opening):
                return True
        return False

    def next_opening(self, moment: datetime.datetime) -> datetime.datetime:
        local = moment.astimezone(self.zone)
        for days_ahead in range(8):
            day = local.date() + datetime.timedelta(days=days_ahead)
            opening = self.opening_on(day)
            if day.weekday() in self.weekdays and opening > local:
                return opening
        raise WindowError("the window never opens")  # unreachable with one day or more

    def describe(self) -> str:
        days = ", ".join(DAY_NAMES[day][:3].capitalize() for day in sorted(self.weekdays))
        return f"{days} {self.start:%H:%M}-{self.end:%H:%M} {self.zone_name}"


def parse_day(name: str) -> int:
    wanted = name.strip().lower()
    for number, day in enumerate(DAY_NAMES):
        if wanted in (day, day[:3]):
            return number
    raise WindowError(f"days: '{name}' is not a day of the week")


def parse_clock(option: str, text: str) -> datetime.time:
    match = CLOCK_TIME.match(text.strip())
    if match is None:
        raise WindowError(f"{option}: '{text}' is not a time of day as HH:MM")
    return datetime.time(int(match.group(1)), int(match.group(2)))


def parse_window(days: list[str], start: str, end: str, timezone: str) -> Window:
    if not days:
        raise WindowError("days: name at least one day")
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowError(f"timezone: '{timezone}' is not a known time zone") from None
    return Window(
        weekdays=frozenset(parse_day(day) for day in days),
        start=parse_clock("start", start),
        end=parse_clock("end", end),
        zone=zone,
        zone_name=timezone,
    )


def parse_moment(text: str | None) -> datetime.datetime:
    if not text:
        return datetime.datetime.now(datetime.UTC)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise WindowError(f"at: '{text}' is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise WindowError(f"at: '{text}' has no UTC offset; add one, such as +00:00")
    return moment


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            days=dict(type="list", elements="str", required=True),
            start=dict(type="str", required=True),
            end=dict(type="str", required=True),
            timezone=dict(type="str", required=True),
            at=dict(type="str"),
            override_reason=dict(type="str", default=""),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if ZoneInfo is None:
        module.fail_json(msg="checking the deployment window needs Python 3.9 or newer")

    try:
        window = parse_window(params["days"], params["start"], params["end"], params["timezone"])
        moment = parse_moment(params["at"])
    except WindowError as error:
        module.fail_json(msg=f"deployment window is invalid: {error}")

    local = moment.astimezone(window.zone)
    in_window = window.contains(moment)
    reason = params["override_reason"].strip()
    result = dict(
        changed=False,
        in_window=in_window,
        local_time=local.isoformat(timespec="seconds"),
        window=window.describe(),
        next_opening=window.next_opening(moment).isoformat(timespec="seconds"),
        overridden=not in_window and bool(reason),
        override_reason=reason if not in_window else "",
    )
    outside = (
        f"it is {local:%a %Y-%m-%d %H:%M} in {window.zone_name}, outside the deployment "
        f"window ({window.describe()}); the next one opens {result['next_opening']}"
    )

    if in_window:
        module.exit_json(msg=f"in the deployment window ({window.describe()})", **result)
    if reason:
        module.warn(f"{outside}; going ahead because: {reason}")
        module.exit_json(msg=f"outside the deployment window, overridden: {reason}", **result)
    module.fail_json(msg=f"{outside}. Set override_reason to go ahead anyway.", **result)


if __name__ == "__main__":
    main()
