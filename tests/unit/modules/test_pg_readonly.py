"""Unit tests of pg_readonly: options, documentation, and how the window waits for,
spares and ends sessions. The sessions and the server are faked; nothing connects.
"""

from __future__ import annotations

import datetime
from types import ModuleType

import pg_readonly
import pytest
import yaml
from ansible.module_utils.pg_sessions import Session, setting_is_on
from module_harness import ModuleFail, run_module
from pg_readonly import Outcome, Window, WindowError
from psycopg import errors as psycopg_errors
from test_documentation import argument_spec_of, documented_options

CHANGED_AT = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC)
BEFORE = CHANGED_AT - datetime.timedelta(minutes=5)
AFTER = CHANGED_AT + datetime.timedelta(seconds=1)


def session(
    pid: int,
    user: str = "app",
    state: str | None = "idle",
    writing: bool = False,
    started: datetime.datetime | None = BEFORE,
    application: str = "reading-history",
) -> Session:
    return Session(pid, user, application, "10.0.0.5", started, state, writing)


class FakeServer:
    """Plays pg_stat_activity from a script, one list of sessions per look."""

    def __init__(
        self, looks: list[list[Session]], refuse: set[int] = frozenset()
    ) -> None:
        self.looks = looks
        self.refuse = refuse
        self.terminated: list[int] = []

    def list_sessions(self, conn) -> list[Session]:
        current = self.looks[0] if len(self.looks) == 1 else self.looks.pop(0)
        return [s for s in current if s.pid not in self.terminated]

    def terminate(self, conn, pid: int, wait_ms: int) -> bool:
        if pid in self.refuse:
            raise psycopg_errors.InsufficientPrivilege(
                "must be a member of the role whose process is being terminated"
            )
        self.terminated.append(pid)
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    def install(
        looks: list[list[Session]], refuse: set[int] = frozenset()
    ) -> FakeServer:
        fake = FakeServer(looks, refuse)
        monkeypatch.setattr(pg_readonly, "list_sessions", fake.list_sessions)
        monkeypatch.setattr(pg_readonly, "terminate_backend", fake.terminate)
        return fake

    return install


def window(roles: list[str] = ()) -> tuple[Window, Outcome, FakeClock]:
    outcome = Outcome(previous="off", state="on")
    clock = FakeClock()
    return (
        Window(None, outcome, list(roles), clock=clock, sleep=clock.sleep),
        outcome,
        clock,
    )


class TestWindow:
    def test_waits_for_writes_to_end_within_the_grace_period(self, server) -> None:
        """Ensure a write that ends in time is waited for and nothing is terminated."""
        writer = session(7, writing=True, state="idle in transaction")
        fake = server([[writer], [writer], [session(7)]])
        win, outcome, clock = window()

        left = win.settle(10, wait_for_writes=True, changed_at=CHANGED_AT)

        assert left == [] and fake.terminated == []
        assert 0 < clock.now < 10 and outcome.waited == clock.now

    def test_returns_the_writes_still_open_when_grace_runs_out(self, server) -> None:
        """Verify the wait is bounded by the grace period."""
        writer = session(7, writing=True, state="active")
        server([[writer]])
        win, _, clock = window()

        left = win.settle(2, wait_for_writes=True, changed_at=CHANGED_AT)

        assert [s.pid for s in left] == [7]
        assert 2 <= clock.now < 2.5

    def test_terminate_ends_what_is_left_with_a_reason(self, server) -> None:
        """Ensure terminate ends leftover writes and busy stale sessions, saying why."""
        writer = session(7, user="batch", writing=True, state="active")
        busy = session(8, state="active")
        fake = server([[writer, busy]])
        win, outcome, _ = window(["app"])

        left = win.settle(1, wait_for_writes=True, changed_at=CHANGED_AT)
        warnings = win.finish(left, terminate=True)

        assert fake.terminated == [7, 8] and warnings == []
        assert [(t["pid"], t["reason"]) for t in outcome.terminated] == [
            (7, "write_transaction"),
            (8, "busy_session"),
        ]

    def test_without_terminate_leftovers_are_reported(self, server) -> None:
        """Verify leftovers are returned and warned about, and left running."""
        fake = server([[session(7, user="batch", writing=True, state="active")]])
        win, outcome, _ = window()

        warnings = win.finish(win.settle(0, True, CHANGED_AT), terminate=False)

        assert fake.terminated == []
        assert [s["pid"] for s in outcome.still_writing] == [7]
        assert "sessions 7" in warnings[0]

    def test_only_idle_sessions_of_the_named_roles_opened_before_are_ended(
        self, server
    ) -> None:
        """Ensure the app's stale idle sessions reconnect, and nobody else is touched."""
        fake = server(
            [
                [
                    session(1),
                    session(2, started=AFTER),
                    session(3, user="reporting"),
                    session(4, state="active"),
                ],
                [session(1), session(2, started=AFTER), session(3, user="reporting")],
            ]
        )
        win, outcome, _ = window(["app"])

        left = win.settle(5, wait_for_writes=True, changed_at=CHANGED_AT)

        # Session 4 was busy at first, then gone by itself.
        assert left == []
        assert fake.terminated == [1]
        assert [t["reason"] for t in outcome.terminated] == ["idle_session"]

    def test_nothing_stale_when_the_setting_did_not_change(self, server) -> None:
        """Verify a window already open ends no idle session."""
        fake = server([[session(1)]])
        win, _, _ = window(["app"])

        assert win.settle(5, wait_for_writes=True, changed_at=None) == []
        assert fake.terminated == []

    def test_migration_sessions_are_never_waited_for(self, server) -> None:
        """Ensure pg_migrate's sessions may write through the window."""
        migrating = session(
            5, writing=True, state="active", application="ansible-pg_migrate"
        )
        fake = server([[migrating]])
        win, _, clock = window(["app"])

        assert win.settle(5, wait_for_writes=True, changed_at=CHANGED_AT) == []
        assert fake.terminated == [] and clock.now == 0

    def test_hidden_sessions_of_a_named_role_fail_naming_the_right(
        self, server
    ) -> None:
        """Verify sessions whose state is hidden stop the task, naming pg_read_all_stats."""
        server([[session(1, state=None, started=None)]])
        win, _, _ = window(["app"])

        with pytest.raises(WindowError, match="pg_read_all_stats"):
            win.settle(5, wait_for_writes=True, changed_at=CHANGED_AT)

    def test_refused_termination_names_pg_signal_backend(self, server) -> None:
        """Ensure a termination refused for lack of rights says which right is missing."""
        server([[session(1)]], refuse={1})
        win, _, _ = window(["app"])

        with pytest.raises(WindowError) as raised:
            win.settle(5, wait_for_writes=True, changed_at=CHANGED_AT)

        assert "terminating session 1 of role 'app'" in str(raised.value)
        assert "pg_signal_backend" in str(raised.value)

    def test_leftovers_of_before_the_change_are_listed(self, server) -> None:
        """Verify sessions still holding the old default are returned by pid."""
        server([[session(1), session(2, started=AFTER), session(3, started=None)]])
        win, outcome, _ = window()

        win.record_leftovers(CHANGED_AT)

        assert outcome.sessions_before_change == [1, 3]


class TestStoredSetting:
    @pytest.mark.parametrize(
        ("settings", "on"),
        [
            (["default_transaction_read_only=on"], True),
            (["work_mem=64MB", "default_transaction_read_only=true"], True),
            (["default_transaction_read_only=off"], False),
            (["default_transaction_read_only_x=on"], False),
            ([], False),
        ],
    )
    def test_reads_the_stored_default(self, settings: list[str], on: bool) -> None:
        """Ensure the stored default is read from pg_db_role_setting's list exactly."""
        assert setting_is_on(settings, "default_transaction_read_only") is on


@pytest.fixture
def no_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the module connected before validating its arguments")

    monkeypatch.setattr(pg_readonly, "connect", refuse)


class TestArguments:
    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"state": "maybe"}, "state"),
            ({"grace_period": -1}, "grace_period must not be negative"),
            ({"database": ""}, "database must not be empty"),
            ({"terminate_idle_roles": ["app", ""]}, "terminate_idle_roles"),
        ],
    )
    def test_bad_values_fail_before_connecting(
        self, no_connection: None, options: dict, message: str
    ) -> None:
        """Ensure each bad option is named in the failure, before any SQL."""
        args = {"database": "reading_history", "state": "on", **options}

        with pytest.raises(ModuleFail) as failed:
            run_module(pg_readonly, args)

        assert message in failed.value.result["msg"]

    @pytest.mark.parametrize(("written", "meant"), [(True, "on"), (False, "off")])
    def test_unquoted_on_and_off_are_understood(
        self, monkeypatch: pytest.MonkeyPatch, written: bool, meant: str
    ) -> None:
        """Verify YAML's on and off, read as booleans, still choose the state."""
        seen = {}

        def stop(*args, **kwargs):
            raise AssertionError("stop here")

        monkeypatch.setattr(
            pg_readonly,
            "ensure_psycopg",
            lambda module: seen.update(state=module.params["state"]),
        )
        monkeypatch.setattr(pg_readonly, "connect", stop)

        with pytest.raises(AssertionError, match="stop here"):
            run_module(pg_readonly, {"database": "rh", "state": written})

        assert seen == {"state": meant}


def test_documentation_matches_the_argument_spec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ensure each option's documented type, default and choices are the real ones."""
    module: ModuleType = pg_readonly
    spec = argument_spec_of(module, monkeypatch)
    documented = documented_options(module)

    assert sorted(documented) == sorted(spec)
    for name, option in spec.items():
        for key in ("type", "default", "choices", "elements"):
            assert documented[name].get(key) == option.get(key), (name, key)
        assert bool(documented[name].get("required")) == bool(option.get("required"))


def test_every_return_value_and_example_is_complete() -> None:
    """Verify RETURN entries are fully described and examples are named module calls."""
    for key, value in yaml.safe_load(pg_readonly.RETURN).items():
        assert {"description", "returned", "type", "sample"} <= set(value), key
    tasks = yaml.safe_load(pg_readonly.EXAMPLES)
    assert all(task.get("name") for task in tasks)
    assert any("register" in task for task in tasks if "pg_readonly" in task)
