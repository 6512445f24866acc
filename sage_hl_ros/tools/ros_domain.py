"""A DDS domain of its own for each test run, fuzz run or benchmark on this machine.

Runs that share a ROS domain see each other's topics: two test suites at once on domain 77 read
each other's commands and joint states (a fuzz check then finds "speed violations" between two
control nodes' interleaved commands, a replay test counts another run's /joint_states). Picking
an id from the process id avoids that only by chance, so an id is *reserved*: an exclusive
``flock`` on ``<tmp>/sage_hl_ros-ros-domain-<id>.lock``, held until this process exits (the
kernel drops it even on SIGKILL). Child processes inherit ``ROS_DOMAIN_ID`` from the
environment, not the lock (Python opens files non-inheritable), so nodes started by the run stay
on its domain. Ids come from the ranges the ROS 2 docs give as clear of Linux's ephemeral ports.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import tempfile
from pathlib import Path

SAFE_DOMAIN_IDS = tuple(range(1, 102)) + tuple(range(215, 233))

_held: dict[Path, int] = {}  # lock directory -> the domain id this process holds there


def reserve_domain_id(lock_dir: str | Path | None = None) -> int:
    """This process's domain id: the first free safe id from a pid-dependent start, locked once."""
    directory = Path(lock_dir or tempfile.gettempdir()).resolve()
    if directory in _held:
        return _held[directory]
    start = os.getpid() % len(SAFE_DOMAIN_IDS)
    for k in range(len(SAFE_DOMAIN_IDS)):
        domain = SAFE_DOMAIN_IDS[(start + k) % len(SAFE_DOMAIN_IDS)]
        handle = open(directory / f"sage_hl_ros-ros-domain-{domain}.lock", "a")  # noqa: SIM115 (held)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _held[directory] = domain
        atexit.register(handle.close)  # keeps the lock open until exit (the kernel drops it then anyway)
        return domain
    raise RuntimeError(f"every safe ROS domain id is reserved by another run (lock files in {directory})")


def isolate_ros_graph(keep_existing: bool = False) -> dict[str, str]:
    """Localhost discovery and a reserved domain id in ``os.environ`` (children inherit both).

    ``keep_existing``: a ``ROS_DOMAIN_ID`` the user set stays (tools run on the user's graph when
    asked to); tests pass False so that nothing in the environment can put two runs together.
    """
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if not (keep_existing and os.environ.get("ROS_DOMAIN_ID")):
        os.environ["ROS_DOMAIN_ID"] = str(reserve_domain_id())  # the same id on every call
    return {k: os.environ[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID")}
