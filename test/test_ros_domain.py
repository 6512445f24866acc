"""Each run reserves its own DDS domain: two suites (or a suite and the fuzz bench) never share one."""

import os
import subprocess
import sys

from sage_hl_ros.tools.ros_domain import SAFE_DOMAIN_IDS, isolate_ros_graph, reserve_domain_id

_CHILD = ("import sys; from sage_hl_ros.tools.ros_domain import reserve_domain_id; "
          "print(reserve_domain_id(sys.argv[1] if len(sys.argv) > 1 else None))")


def _child_domain(lock_dir) -> int:
    args = [] if lock_dir is None else [str(lock_dir)]
    out = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_another_process_gets_another_domain_while_this_one_holds_it(tmp_path):
    mine = reserve_domain_id(tmp_path)
    assert mine in SAFE_DOMAIN_IDS and reserve_domain_id(tmp_path) == mine  # held: asked again, the same
    others = {_child_domain(tmp_path) for _ in range(3)}
    assert mine not in others
    # A child's lock ends with the child: the next one may take the same id again, never ours.
    assert len(others) <= 3


def test_the_suite_runs_on_a_reserved_domain():
    env = isolate_ros_graph(keep_existing=False)
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    domain = int(os.environ["ROS_DOMAIN_ID"])
    assert domain in SAFE_DOMAIN_IDS
    assert domain != _child_domain(None), "a second run on this machine was given this run's domain"
