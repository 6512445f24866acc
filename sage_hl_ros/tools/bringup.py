"""Pure-Python bring-up: start the nodes of the launch files, from the same node table and parameter
files, on machines without ROS launch (pip-installed ROS 2, CI, quick experiments).

    sage_hl_bringup --model-dir models/synthetic                       # H and L nodes
    sage_hl_bringup --model-dir models/synthetic --stand-ins --enable-control   # plus synthetic robot
    sage_hl_bringup --sim --model-dir runs/<demo>/models/round0        # MuJoCo stand-in + SAGE nodes
    sage_hl_bringup --sim --no-sage --expert-drives                    # MuJoCo arm driven by the expert

Arguments that contradict each other are refused before anything starts (exit code 2): two nodes
commanding one arm (``--expert-drives`` with the SAGE nodes), two ``/joint_states`` sources
(``--sim`` with ``--stand-ins``), sim time with nothing publishing ``/clock`` (``--stand-ins
--use-sim-time``). The loopback robot follows the command interface the control node publishes
(and, for a robot contract with a gripper, the gripper's command topic).

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

from ..launch_table import (
    RUNTIME_NODES,
    SIM_NODES,
    STAND_IN_NODES,
    LaunchArgumentError,
    NodeSpec,
    check_one_driver_per_topic,
    node_parameter,
    sim_command_drivers,
)
from ..paths import config_file


def ros_value(value) -> str:
    """A Python value as a ``-p name:=value`` literal (YAML syntax, as ROS parses it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return '""'  # a bare "name:=" is not an empty string to rcl
    if isinstance(value, (list, tuple)):
        # Strings inside a flow list are quoted: "a:b" or "x,y" would otherwise split or become a mapping.
        return "[" + ",".join(json.dumps(v) if isinstance(v, str) else ros_value(v) for v in value) + "]"
    return str(value)


def node_command(spec: NodeSpec, params_files: list[Path], overrides: dict | None = None,
                 namespace: str = "") -> list[str]:
    cmd = [sys.executable, "-m", spec.module, "--ros-args", "-r", f"__node:={spec.name}"]
    if namespace:
        cmd += ["-r", f"__ns:=/{namespace.strip('/')}"]
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

    def stop_one(self, name: str, grace_s: float = 5.0) -> int:
        """SIGINT one process (a recorder, to close its bag), SIGKILL after ``grace_s``; its exit code."""
        p = self.procs[name]
        if p.poll() is None:
            _signal_group(p, signal.SIGINT)
            try:
                p.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait()
        return p.returncode

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


def plan_nodes(args: argparse.Namespace) -> list[tuple[NodeSpec, list[str]]]:
    """The (node, command) list the arguments ask for; LaunchArgumentError when they contradict
    each other, before anything is started."""
    sage = not args.no_sage
    if not args.sim and (args.no_sage or args.expert_drives):
        raise LaunchArgumentError("--no-sage and --expert-drives only apply to the MuJoCo stand-in: add --sim")
    if args.sim and args.stand_ins:
        raise LaunchArgumentError("--sim and --stand-ins both simulate the arm (two /joint_states sources): "
                                  "choose one")
    if args.stand_ins and args.use_sim_time:
        raise LaunchArgumentError("--use-sim-time with --stand-ins: nothing publishes /clock, so the nodes "
                                  "would never tick; drop --use-sim-time (or use --sim, which is the clock)")
    params_file = Path(args.params_file or config_file("isaac_sim.yaml" if args.sim else "sage_hl.yaml"))
    files = [params_file] + ([Path(args.sim_params_file)] if args.sim else [])
    for path in files if sage else files[1:]:
        if not path.is_file():
            raise LaunchArgumentError(f"params file {path} does not exist")
    if sage and not args.model_dir:
        raise LaunchArgumentError("--model-dir is required to start the SAGE nodes (or --sim --no-sage)")
    if args.sim:
        check_one_driver_per_topic(
            sim_command_drivers(sage=sage, expert_drives=args.expert_drives, sim_params_file=args.sim_params_file,
                                sage_params_file=params_file),
            "for expert-driven runs use --sim --no-sage --expert-drives; with the SAGE nodes leave out "
            "--expert-drives (the expert then only labels)")
    use_sim_time = args.use_sim_time or args.sim
    plan: list[tuple[NodeSpec, list[str]]] = []
    if args.sim:
        sim_overrides = {"sim_bridge": {}, "sim_expert": {"use_sim_time": True, "drive": args.expert_drives}}
        plan += [(spec, node_command(spec, [Path(args.sim_params_file)], sim_overrides[spec.name]))
                 for spec in SIM_NODES]
    if sage:
        common = {"model_dir": str(Path(args.model_dir).resolve()), "autostart": True, "use_sim_time": use_sim_time}
        limits = args.joint_limits_file
        if not limits and _checkpoint_config(args.model_dir, "--model-dir").robot is None:
            limits = str(config_file("joint_limits.yaml"))  # no robot contract: the package's 7-joint default
        control = {"joint_limits_file": str(Path(limits).resolve())} if limits else {}
        if args.enable_control or not args.sim:
            control["enable_control"] = args.enable_control
        if args.command_interface:
            control["command_interface"] = args.command_interface
        for spec in RUNTIME_NODES:
            overrides = {**common, **(control if spec.name == "sage_control" else {})}
            plan.append((spec, node_command(spec, [params_file], overrides, args.namespace)))
    if args.stand_ins:
        # The loopback arm is the checkpoint's robot (its joints) and follows what the control node
        # publishes: the params file's interface, controller and topics, else the robot contract's.
        robot = _checkpoint_robot(args.model_dir)
        follow = {key: node_parameter(params_file, "sage_control", key, "") or default for key, default in (
            ("command_interface", robot.command.interface), ("controller_name", robot.command.controller),
            ("joint_command_topic", robot.command.joint_command_topic),
            ("joint_states_topic", robot.joint_states_topic))}
        follow["joint_names"] = node_parameter(params_file, "sage_control", "joint_names", []) or robot.joints
        if args.command_interface:
            follow["command_interface"] = args.command_interface
        if robot.gripper is not None:  # the gripper's own command topic, as the control node publishes it
            follow["gripper_joint"] = robot.gripper.joint
            follow["gripper_topic"] = (node_parameter(params_file, "sage_control", "gripper_topic", "")
                                       or robot.gripper.topic)
        # The synthetic sensors are the robot's: the context node's topics, nothing for a sensor it lacks.
        sensors = {f"{n}_topic": node_parameter(params_file, "sage_context", f"{n}_topic", "") or robot.topic(n)
                   for n in ("camera", "depth", "audio", "tactile")}
        if robot.camera is not None:
            sensors["camera_compressed"] = bool(node_parameter(params_file, "sage_context", "camera_compressed", False)
                                                or robot.camera.compressed)
        if len(robot.cameras) > 1:  # the further cameras, on the contract's topics
            sensors["extra_camera_topics"] = ",".join(
                c.topic.rstrip("/") + ("/compressed" if c.compressed else "") for c in robot.cameras[1:])
        if robot.tactile is not None:
            sensors["tactile_taxels"] = robot.tactile.taxels
        if robot.audio is not None:
            sensors["audio_sample_rate_hz"] = robot.audio.sample_rate_hz
        overrides = {"synthetic_sensors": {"use_sim_time": False, **sensors},
                     "loopback_robot": {"use_sim_time": False, **follow}}
        plan += [(spec, node_command(spec, [], overrides[spec.name], args.namespace)) for spec in STAND_IN_NODES]
    return plan


def _checkpoint_config(model_dir: str, why: str):
    """The checkpoint's model config (its robot contract, or None for one without)."""
    from ..core.checkpoint_files import CheckpointError, read_config
    from ..core.config import ConfigError

    try:
        return read_config(model_dir)
    except (CheckpointError, ConfigError) as exc:
        raise LaunchArgumentError(f"{why}: cannot read the robot of checkpoint {model_dir}: {exc}") from None


def _checkpoint_robot(model_dir: str):
    """The robot contract stored in the checkpoint (or the one its observation implies)."""
    return _checkpoint_config(model_dir, "--stand-ins").robot_contract()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sage_hl_bringup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params-file", default=None,
                        help="ROS parameter file of the SAGE nodes (the launch file's params_file; default "
                             "config/sage_hl.yaml, with --sim config/isaac_sim.yaml)")
    parser.add_argument("--model-dir", default=None, help="checkpoint directory (required unless --no-sage)")
    parser.add_argument("--joint-limits-file", default=None,
                        help="joint limits YAML for sage_control (default: the checkpoint's robot contract's "
                             "joint_limits / urdf files)")
    parser.add_argument("--command-interface", default=None,
                        help="position_array | joint_trajectory | joint_state (default: from the params file)")
    parser.add_argument("--enable-control", action="store_true", help="publish commands (default: off; "
                        "with --sim the params file's, on)")
    parser.add_argument("--use-sim-time", action="store_true", help="follow /clock (always on with --sim)")
    parser.add_argument("--namespace", default="", help="ROS namespace of the SAGE nodes and stand-ins (their "
                        "relative topics resolve in it; robots side by side do not cross-talk)")
    parser.add_argument("--stand-ins", action="store_true",
                        help="also start the synthetic sensors and the loopback robot (no hardware needed)")
    parser.add_argument("--sim", action="store_true",
                        help="also start the MuJoCo stand-in for Isaac Sim (sim_bridge + sim_expert), as "
                             "mujoco_sim.launch.py does")
    parser.add_argument("--sim-params-file", default=str(config_file("mujoco_sim.yaml")),
                        help="ROS parameter file of the sim nodes (with --sim)")
    parser.add_argument("--expert-drives", action="store_true",
                        help="the sim expert commands the arm (with --sim --no-sage); otherwise it only labels")
    parser.add_argument("--no-sage", action="store_true", help="do not start the SAGE nodes (with --sim)")
    parser.add_argument("--duration-s", type=float, default=0.0, help="stop after this long (0: until Ctrl-C)")
    parser.add_argument("--log-dir", default=None, help="write each node's output to <log-dir>/<node>.log")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plan = plan_nodes(args)
    except LaunchArgumentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    nodes = NodeProcesses(Path(args.log_dir) if args.log_dir else None)
    for spec, cmd in plan:
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
