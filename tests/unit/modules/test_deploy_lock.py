"""Unit tests of deploy_lock and of the controller_run lookup that names lock holders."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from pathlib import Path

import deploy_lock
import pytest
from module_harness import (
    REPO_ROOT,
    ModuleFail,
    finish_module_process,
    run_module,
    start_module_process,
)

ANA = {"run_id": "ctl-100-5", "operation": "deploy", "operator": "ana", "controller": "ctl"}
BEN = {"run_id": "ctl-200-9", "operation": "migrate", "operator": "ben", "controller": "ctl"}


@pytest.fixture
def lock_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "deploy.lock"


def take(lock_path: Path, holder: dict, check_mode: bool = False, **options) -> dict:
    return run_module(
        deploy_lock, {"path": str(lock_path), "holder": holder, **options}, check_mode
    )


def give_back(lock_path: Path, holder: dict) -> dict:
    return run_module(
        deploy_lock, {"path": str(lock_path), "holder": holder, "state": "released"}
    )


class TestAcquire:
    def test_a_free_lock_is_taken_in_a_private_file(self, lock_path):
        """Ensure the holder is written to a file only its owner may read."""
        result = take(lock_path, ANA)

        assert result["changed"] is True
        assert json.loads(lock_path.read_text()) == ANA
        assert lock_path.stat().st_mode & 0o777 == 0o600
        assert lock_path.parent.stat().st_mode & 0o777 == 0o700

    def test_the_holding_run_takes_it_again_without_change(self, lock_path):
        """Verify taking the lock twice in one run changes nothing."""
        take(lock_path, ANA)

        assert take(lock_path, ANA)["changed"] is False

    def test_another_run_is_refused_naming_the_holder(self, lock_path):
        """Ensure a second run fails, saying who holds the lock and how to break it."""
        take(lock_path, ANA)

        with pytest.raises(ModuleFail) as failure:
            take(lock_path, BEN)

        message = failure.value.result["msg"]
        assert "held by run ctl-100-5 running deploy by ana from ctl" in message
        assert "check that, then name its run in take_over" in message
        assert json.loads(lock_path.read_text()) == ANA

    def test_take_over_replaces_only_the_run_it_names(self, lock_path):
        """Verify a lock is taken over from the named run, and from no other."""
        take(lock_path, ANA)

        with pytest.raises(ModuleFail):
            take(lock_path, BEN, take_over="ctl-999-1")
        result = take(lock_path, BEN, take_over=ANA["run_id"])

        assert result["previous"] == ANA
        assert json.loads(lock_path.read_text()) == BEN

    def test_check_mode_touches_nothing(self, lock_path):
        """Ensure check mode says it would take the lock and creates no file or folder."""
        result = take(lock_path, ANA, check_mode=True)

        assert result["changed"] is True
        assert not lock_path.parent.exists()

    def test_a_run_without_an_id_is_refused(self, lock_path):
        """Verify a holder must name its run."""
        with pytest.raises(ModuleFail) as failure:
            take(lock_path, {"operator": "ana"})

        assert "holder.run_id must name the run" in failure.value.result["msg"]

    def test_a_lock_file_naming_no_run_is_reported(self, lock_path):
        """Ensure a damaged lock file stops the run instead of being overwritten."""
        lock_path.parent.mkdir()
        lock_path.write_text("half written")

        with pytest.raises(ModuleFail) as failure:
            take(lock_path, ANA)

        assert f"cannot read lock file '{lock_path}'" in failure.value.result["msg"]

    def test_of_two_runs_started_at_once_one_gets_the_lock(self, lock_path):
        """Verify two module processes racing for a free lock: exactly one wins."""
        runs = [
            start_module_process("deploy_lock", {"path": str(lock_path), "holder": holder})
            for holder in (ANA, BEN)
        ]
        outcomes = [finish_module_process(run) for run in runs]

        assert sorted(rc for rc, _, _ in outcomes) == [0, 1]
        winner = next(result for rc, result, _ in outcomes if rc == 0)
        assert json.loads(lock_path.read_text()) == winner["holder"]


class TestRelease:
    def test_the_holder_gives_it_back(self, lock_path):
        """Ensure the run holding the lock removes the file."""
        take(lock_path, ANA)

        assert give_back(lock_path, ANA)["changed"] is True
        assert not lock_path.exists()

    def test_another_runs_lock_is_left_alone(self, lock_path):
        """Verify a run never removes a lock another run took over."""
        take(lock_path, BEN)

        result = give_back(lock_path, ANA)

        assert result["changed"] is False
        assert json.loads(lock_path.read_text()) == BEN

    def test_giving_back_a_free_lock_changes_nothing(self, lock_path):
        assert give_back(lock_path, ANA)["changed"] is False


def load_lookup():
    path = REPO_ROOT / "lookup_plugins" / "controller_run.py"
    spec = importlib.util.spec_from_file_location("controller_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestControllerRun:
    def test_this_run_names_a_live_process_of_this_controller(self):
        """Ensure the run named is a process that exists, with its start time."""
        controller_run = load_lookup()

        run = controller_run.this_run()

        assert run["controller"] == socket.gethostname()
        assert Path(f"/proc/{run['pid']}").exists()
        assert run["run_id"] == f"{run['controller']}-{run['pid']}-{run['pid_started']}"
        assert controller_run.may_be_running(run) is True

    def test_a_run_whose_process_is_gone_is_not_running(self):
        """Verify a dead process, or one reused under the same id, ends the run."""
        controller_run = load_lookup()
        run = controller_run.this_run()

        reused = {**run, "pid_started": run["pid_started"] - 1}
        gone = {**run, "pid": 2**22 + 1}

        assert controller_run.may_be_running(reused) is False
        assert controller_run.may_be_running(gone) is False

    def test_a_run_of_another_controller_may_always_be_running(self):
        """Ensure a process that cannot be seen from here is never judged gone."""
        controller_run = load_lookup()
        run = {"controller": "bastion.example.net", "pid": os.getpid(), "pid_started": 1}

        assert controller_run.may_be_running(run) is True
