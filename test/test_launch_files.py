"""Launch files, validated without ROS launch (not installable here; DESIGN §6).

Minimal stand-ins for the ``launch``/``launch_ros`` classes the files use record what
``generate_launch_description()`` builds; the test then resolves every substitution (following
``IncludeLaunchDescription`` into the included file, with its ``launch_arguments`` and
``IfCondition``) and checks the result against the package itself: executables against setup.py's
console scripts, node names against the node table, parameter files against the YAML on disk, and
every parameter name against the parameters the real node classes declare.
"""

import ast
import os
import runpy
import sys
import types
from pathlib import Path

import pytest
import yaml

from sage_hl_ros.launch_table import ALL_NODES, PACKAGE, RUNTIME_NODES, SIM_NODES
from sage_hl_ros.paths import share_dir

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
# The nodes each launch file starts with its default arguments (included files followed).
EXPECTED_NODES = {
    "sage_hl.launch.py": {s.name for s in RUNTIME_NODES},
    "isaac_sim.launch.py": {s.name for s in RUNTIME_NODES},
    "mujoco_sim.launch.py": {s.name for s in RUNTIME_NODES + SIM_NODES},
}


class Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration(Recorded):
    pass


class PathJoinSubstitution(Recorded):
    pass


class FindPackageShare(Recorded):
    pass


class ParameterValue(Recorded):
    pass


class DeclareLaunchArgument(Recorded):
    pass


class Node(Recorded):
    pass


class LaunchDescription(Recorded):
    pass


class IncludeLaunchDescription(Recorded):
    pass


class PythonLaunchDescriptionSource(Recorded):
    pass


class IfCondition(Recorded):
    pass


@pytest.fixture
def launch_stubs(monkeypatch):
    modules = {
        "launch": {"LaunchDescription": LaunchDescription},
        "launch.actions": {"DeclareLaunchArgument": DeclareLaunchArgument,
                           "IncludeLaunchDescription": IncludeLaunchDescription},
        "launch.conditions": {"IfCondition": IfCondition},
        "launch.launch_description_sources": {"PythonLaunchDescriptionSource": PythonLaunchDescriptionSource},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration,
                                 "PathJoinSubstitution": PathJoinSubstitution},
        "launch_ros": {},
        "launch_ros.actions": {"Node": Node},
        "launch_ros.parameter_descriptions": {"ParameterValue": ParameterValue},
        "launch_ros.substitutions": {"FindPackageShare": FindPackageShare},
    }
    for name, attrs in modules.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)


def resolve(value, args: dict):
    if isinstance(value, LaunchConfiguration):
        return resolve(args[value.args[0]], args)
    if isinstance(value, PathJoinSubstitution):
        return str(Path(*[str(resolve(v, args)) for v in value.args[0]]))
    if isinstance(value, FindPackageShare):
        assert value.args[0] == PACKAGE
        return str(share_dir())
    if isinstance(value, ParameterValue):
        raw = resolve(value.args[0], args)
        kind = value.kwargs.get("value_type")
        if kind is bool:
            assert str(raw).lower() in ("true", "false"), raw
            return str(raw).lower() == "true"
        if kind in (int, float):
            return kind(raw)  # raises on a default the launch system could not convert either
        assert kind is None, kind
        return raw
    if isinstance(value, dict):
        return {k: resolve(v, args) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, args) for v in value]
    return value


def console_scripts() -> set[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CONSOLE_SCRIPTS":
            return {ast.literal_eval(e).split("=")[0].strip() for e in node.value.elts}
    raise AssertionError("CONSOLE_SCRIPTS not found in setup.py")


def declared_parameters() -> dict[str, set[str]]:
    """Parameter names each launched node class declares (a real rclpy node, no graph needed)."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 100 + 100))
    import rclpy
    from rclpy.context import Context
    from rclpy.parameter import Parameter

    from sage_hl_ros.ros.context_node import ContextNode
    from sage_hl_ros.ros.control_node import ControlNode
    from sage_hl_ros.ros.sim_bridge_node import SimBridge
    from sage_hl_ros.ros.sim_expert_node import SimExpert

    ctx = Context()
    rclpy.init(context=ctx)
    try:
        out = {}
        paused = [Parameter("autostart", value=False)]
        for cls, name, kw in ((ContextNode, "sage_context", {}), (ControlNode, "sage_control", {}),
                              (SimBridge, "sim_bridge", {"parameter_overrides": paused}),
                              (SimExpert, "sim_expert", {})):
            node = cls(context=ctx, **kw)
            out[name] = set(node._parameters)
            node.destroy_node()
        return out
    finally:
        ctx.try_shutdown()


@pytest.fixture(scope="module")
def node_parameters():
    return declared_parameters()


def _enabled(entity, args: dict) -> bool:
    condition = entity.kwargs.get("condition")
    if condition is None:
        return True
    assert isinstance(condition, IfCondition), condition
    value = str(resolve(condition.args[0], args)).lower()
    assert value in ("true", "false"), f"condition resolves to {value!r}"
    return value == "true"


def build(launch_file: Path, overrides: dict | None = None):
    """(args, [(node, args it resolves in)]) for the launch file and every file it includes."""
    desc = runpy.run_path(str(launch_file))["generate_launch_description"]()
    assert isinstance(desc, LaunchDescription)
    entities = desc.args[0]
    args = {a.args[0]: a.kwargs["default_value"] for a in entities if isinstance(a, DeclareLaunchArgument)}
    for a in entities:
        if isinstance(a, DeclareLaunchArgument):
            assert a.kwargs.get("description"), f"{launch_file.name}: argument {a.args[0]} has no description"
    unknown = set(overrides or {}) - set(args)
    assert not unknown, f"{launch_file.name} declares no arguments {sorted(unknown)}"
    args.update(overrides or {})
    nodes = []
    for entity in entities:
        if not _enabled(entity, args):
            continue
        if isinstance(entity, Node):
            nodes.append((entity, args))
        elif isinstance(entity, IncludeLaunchDescription):
            source = entity.args[0]
            assert isinstance(source, PythonLaunchDescriptionSource)
            included = Path(resolve(source.args[0], args))
            assert included.is_file(), f"{launch_file.name} includes {included}, which does not exist"
            passed = {k: resolve(v, args) for k, v in entity.kwargs.get("launch_arguments", [])}
            nodes += build(included, passed)[1]
    return args, nodes


@pytest.mark.parametrize("launch_file", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_matches_package(launch_stubs, node_parameters, launch_file):
    _, nodes = build(launch_file, {"model_dir": "/tmp/model"})
    scripts = console_scripts()
    assert {n.kwargs["name"] for n, _ in nodes} == EXPECTED_NODES[launch_file.name]
    for node, args in nodes:
        kw = node.kwargs
        assert kw["package"] == PACKAGE
        assert kw["executable"] in scripts, f"{kw['executable']} is not a console script"
        spec = next(s for s in ALL_NODES if s.name == kw["name"])
        assert spec.executable == kw["executable"]
        params = resolve(kw["parameters"], args)
        files = [Path(p) for p in params if isinstance(p, str)]
        assert files, "no parameter file"
        declared = node_parameters[kw["name"]] | {"use_sim_time"}
        for path in files:
            assert path.is_file(), f"{path} missing"
            data = yaml.safe_load(path.read_text())
            section = data[kw["name"]]["ros__parameters"]
            unknown = set(section) - declared
            assert not unknown, f"{path.name}: {kw['name']} has no parameters {sorted(unknown)}"
        for override in (p for p in params if isinstance(p, dict)):
            unknown = set(override) - declared
            assert not unknown, f"{launch_file.name}: {kw['name']} has no parameters {sorted(unknown)}"
            if "sim_config_file" in override:
                assert Path(override["sim_config_file"]).is_file()
            if spec not in RUNTIME_NODES:
                continue
            assert override["model_dir"] == "/tmp/model" and override["autostart"] is True
            if "joint_limits_file" in override:
                assert Path(override["joint_limits_file"]).is_file()


def test_runtime_launch_arguments_reach_the_control_node(launch_stubs):
    _, nodes = build(ROOT / "launch" / "sage_hl.launch.py",
                     {"command_interface": "joint_trajectory", "enable_control": "true", "use_sim_time": "true"})
    control, args = next((n, a) for n, a in nodes if n.kwargs["name"] == "sage_control")
    overrides = [p for p in resolve(control.kwargs["parameters"], args) if isinstance(p, dict)][0]
    assert overrides["command_interface"] == "joint_trajectory"
    assert overrides["enable_control"] is True and overrides["use_sim_time"] is True


def merged_parameters(node, args) -> dict:
    """A node's parameters as the node sees them: files in order, then the launch overrides."""
    merged = {}
    for p in resolve(node.kwargs["parameters"], args):
        merged.update(yaml.safe_load(Path(p).read_text())[node.kwargs["name"]]["ros__parameters"]
                      if isinstance(p, str) else p)
    return merged


def test_isaac_launch_uses_sim_time_and_joint_state_commands(launch_stubs):
    _, nodes = build(ROOT / "launch" / "isaac_sim.launch.py")
    for node, args in nodes:
        merged = merged_parameters(node, args)
        assert merged["use_sim_time"] is True
        if node.kwargs["name"] == "sage_control":
            assert merged["command_interface"] == "joint_state"
            assert merged["joint_command_topic"] == "/joint_command"
        else:
            assert merged["camera_topic"] == "/rgb" and merged["depth_topic"] == "/depth"


def test_mujoco_launch_wires_the_bridge_to_the_isaac_runtime(launch_stubs):
    _, nodes = build(ROOT / "launch" / "mujoco_sim.launch.py", {"model_dir": "/tmp/model"})
    params = {n.kwargs["name"]: merged_parameters(n, a) for n, a in nodes}
    bridge, expert = params["sim_bridge"], params["sim_expert"]
    context, control = params["sage_context"], params["sage_control"]
    assert bridge["real_time_factor"] == 1.0 and isinstance(bridge["real_time_factor"], float)
    assert bridge["episodes"] == 0 and isinstance(bridge["episodes"], int) and bridge["autostart"] is True
    assert bridge.get("use_sim_time", False) is False  # the bridge is the clock
    assert expert["drive"] is False and expert["noise_rad"] == 0.0  # labels only, by default
    for node in (expert, context, control):
        assert node["use_sim_time"] is True
    # The SAGE nodes read what the bridge publishes and command what it follows.
    assert context["camera_topic"] == bridge["rgb_topic"] and context["depth_topic"] == bridge["depth_topic"]
    assert context["audio_topic"] == bridge["audio_topic"] and context["tactile_topic"] == bridge["tactile_topic"]
    assert context["joint_states_topic"] == control["joint_states_topic"] == bridge["joint_states_topic"]
    assert control["command_interface"] == "joint_state"
    assert control["joint_command_topic"] == expert["joint_command_topic"] == bridge["joint_command_topic"]
    assert expert["joint_states_topic"] == bridge["joint_states_topic"]
    assert expert["target_topic"] == bridge["target_topic"]
    assert bridge["sim_config_file"] == expert["sim_config_file"] and Path(bridge["sim_config_file"]).is_file()


def test_mujoco_launch_expert_only(launch_stubs):
    _, nodes = build(ROOT / "launch" / "mujoco_sim.launch.py",
                     {"sage": "false", "drive": "true", "noise_rad": "0.05", "real_time_factor": "0",
                      "episodes": "20", "autostart": "false"})
    params = {n.kwargs["name"]: merged_parameters(n, a) for n, a in nodes}
    assert set(params) == {s.name for s in SIM_NODES}
    assert params["sim_expert"]["drive"] is True and params["sim_expert"]["noise_rad"] == 0.05
    bridge = params["sim_bridge"]
    assert bridge["real_time_factor"] == 0.0 and bridge["episodes"] == 20 and bridge["autostart"] is False


def test_node_table_modules_have_entry_points():
    scripts = console_scripts()
    for spec in ALL_NODES:
        assert spec.executable in scripts
        assert (ROOT / (spec.module.replace(".", "/") + ".py")).is_file()
