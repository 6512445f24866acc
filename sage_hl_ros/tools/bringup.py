"""Pure-Python bring-up: start the nodes of the launch files, from the same node table and parameter
files, on machines without ROS launch (pip-installed ROS 2, CI, quick experiments).

    sage_hl_bringup --model-dir models/synthetic                       # H and L nodes
    sage_hl_bringup --model-dir models/synthetic --stand-ins --enable-control   # plus synthetic robot

Each node is its own process (DESIGN §6: separate processes keep the GIL from coupling the H and
L loops), started as ``python -m <module> --ros-args ...`` in its own process group, and stopped
with SIGINT, then SIGKILL after a grace period. If any node exits, the others are stopped too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..launch_table import RUNTIME_NODES, STAND_IN_NODES, NodeSpec
from ..paths import config_file


def ros_value(value) -> str:
    """A Python value as a ``-p name:=value`` literal (YAML syntax, as ROS parses it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        # Strings inside a flow list are quoted: "a:b" or "x,y" would otherwise split or become a mapping.
        return "[" + ",".join(json.dumps(v) if isinstance(v, str) else ros_value(v) for v in value) + "]"
    return str(value)


def node_command(spec: NodeSpec, params_files: list[Path], overrides: dict | None = None) -> list[str]:
    cmd = [sys.executable, "-m", spec.module, "--ros-args", "-r", f"__node:={spec.name}"]
    for path in params_files:
        cmd += ["--params-file", str(path)]
    for name, value in (overrides or {}).items():
        cmd += ["-p", f"{name}:={ros_value(value)}"]
    return cmd


@dataclass
class NodeProcesses:
    """Processes started by the bring-up; each in its own session so a stop reaches its children."""

    log_dir: Path | None = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _logs: list = field(default_factory=list)

    def start(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
            self._logs.append(out)
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None,
                                env={**os.environ, **(env or {})}, start_new_session=True)
        self.procs[name] = proc
        return proc

    def exited(self) -> dict[str, int]:
        return {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}

    def stop(self, grace_s: float = 5.0) -> dict[str, int]:
        for p in self.procs.values():
            if p.poll() is None:
                _signal_group(p, signal.SIGINT)
        deadline = time.monotonic() + grace_s
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait()
        for f in self._logs:
            f.close()
        return {name: p.returncode for name, p in self.procs.items()}


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sage_hl_bringup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params-file", default=str(config_file("sage_hl.yaml")),
                        help="ROS parameter file (same as the launch file's params_file)")
    parser.add_argument("--model-dir", required=True, help="checkpoint directory")
    parser.add_argument("--joint-limits-file", default=str(config_file("joint_limits.yaml")))
    parser.add_argument("--command-interface", default=None,
                        help="position_array | joint_trajectory | joint_state (default: from the params file)")
    parser.add_argument("--enable-control", action="store_true", help="publish commands (default: off)")
    parser.add_argument("--use-sim-time", action="store_true", help="follow /clock")
    parser.add_argument("--stand-ins", action="store_true",
                        help="also start the synthetic sensors and the loopback robot (no hardware needed)")
    parser.add_argument("--duration-s", type=float, default=0.0, help="stop after this long (0: until Ctrl-C)")
    parser.add_argument("--log-dir", default=None, help="write each node's output to <log-dir>/<node>.log")
    args = parser.parse_args(argv)

    if not Path(args.params_file).is_file():
        print(f"error: params file {args.params_file} does not exist", file=sys.stderr)
        return 2
    common = {"model_dir": str(Path(args.model_dir).resolve()), "autostart": True, "use_sim_time": args.use_sim_time}
    control = {"enable_control": args.enable_control, "joint_limits_file": str(Path(args.joint_limits_file).resolve())}
    if args.command_interface:
        control["command_interface"] = args.command_interface
    nodes = NodeProcesses(Path(args.log_dir) if args.log_dir else None)
    specs = list(RUNTIME_NODES) + (list(STAND_IN_NODES) if args.stand_ins else [])
    for spec in specs:
        overrides = dict(common) if spec in RUNTIME_NODES else {"use_sim_time": args.use_sim_time}
        if spec.name == "sage_control":
            overrides.update(control)
        cmd = node_command(spec, [Path(args.params_file)] if spec in RUNTIME_NODES else [], overrides)
        nodes.start(spec.name, cmd)
        print(f"started {spec.name:18s} pid {nodes.procs[spec.name].pid}: {spec.role}", flush=True)

    stop = {"requested": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(requested=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    end = time.monotonic() + args.duration_s if args.duration_s > 0 else float("inf")
    rc = 0
    while not stop["requested"] and time.monotonic() < end:
        dead = nodes.exited()
        if dead:
            print(f"node exited: {dead}; stopping the others", file=sys.stderr)
            rc = 1
            break
        time.sleep(0.2)
    codes = nodes.stop()
    print(f"stopped: {codes}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
