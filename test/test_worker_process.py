"""WorkerProcess (ros/worker_process.py): the control node's reloads run in this helper process.

Targets are stdlib functions, so each case needs no fixture module on the helper's path.
"""

from __future__ import annotations

import json
import os

import pytest

from sage_hl_ros.core.checkpoint_files import CheckpointError
from sage_hl_ros.ros.worker_process import WorkerError, WorkerProcess


@pytest.fixture
def worker_factory():
    made = []

    def make(target, **kwargs):
        worker = WorkerProcess(target, "test worker", **kwargs)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.close()


def test_calls_run_in_one_lasting_helper_process(worker_factory):
    worker = worker_factory("os:getpid")
    pids = {worker.call() for _ in range(3)}
    assert len(pids) == 1 and os.getpid() not in pids
    assert (worker.calls, worker.starts, worker.pid) == (3, 1, pids.pop())
    assert os.getpriority(os.PRIO_PROCESS, worker.pid) >= os.getpriority(os.PRIO_PROCESS, 0) + 1, "runs niced"


def test_the_targets_exception_arrives_with_its_type(worker_factory):
    worker = worker_factory("sage_hl_ros.safety.policy_loader:load_policy")
    with pytest.raises(CheckpointError, match="model_dir is empty"):
        worker.call("", None)
    parse = worker_factory("json:loads")
    with pytest.raises(json.JSONDecodeError):
        parse.call("{not json")
    assert parse.call('{"a": 1}') == {"a": 1}, "the helper serves calls after an exception"


def test_a_crashed_helper_is_reported_and_replaced(worker_factory):
    worker = worker_factory("os:_exit")
    with pytest.raises(WorkerError, match=r"exited \(code 3\)"):
        worker.call(3)
    assert worker.pid is None
    with pytest.raises(WorkerError, match=r"code 4"):
        worker.call(4)
    assert worker.starts == 2


def test_a_helper_that_does_not_answer_is_killed(worker_factory):
    worker = worker_factory("time:sleep", timeout_s=0.5)
    with pytest.raises(WorkerError, match="no answer in time"):
        worker.call(30.0)
    assert worker.pid is None


def test_an_unimportable_target_is_named(worker_factory):
    worker = worker_factory("sage_hl_ros.no_such_module:f")
    with pytest.raises(WorkerError, match="failed to import sage_hl_ros.no_such_module:f.*ModuleNotFoundError"):
        worker.call()
    with pytest.raises(ValueError, match="package.module:function"):
        WorkerProcess("no_colon", "bad")


def test_an_untransferable_result_is_an_error_not_a_hang(worker_factory):
    worker = worker_factory("threading:Lock")
    with pytest.raises(RuntimeError, match="not transferable"):
        worker.call()


def test_close_ends_the_helper(worker_factory):
    worker = worker_factory("os:getpid")
    pid = worker.call()
    worker.close()
    assert worker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
