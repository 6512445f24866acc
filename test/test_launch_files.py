"""Launch files, validated without ROS launch (not installable here; DESIGN §6).

Minimal stand-ins for the ``launch``/``launch_ros`` classes the files use record what
``generate_launch_description()`` builds; the test then resolves every substitution and checks the
result against the package itself: executables against setup.py's console scripts, node names
against the node table, parameter files against the YAML on disk, and every parameter name
against the parameters the real node classes declare.
"""

import ast
import os
import runpy
import sys
import types
from pathlib import Path

import pytest
import yaml

from sage_hl_ros.launch_table import ALL_NODES, PACKAGE, RUNTIME_NODES
from sage_hl_ros.paths import share_dir

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))


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


@pytest.fixture
def launch_stubs(monkeypatch):
    modules = {
        "launch": {"LaunchDescription": LaunchDescription},
        "launch.actions": {"DeclareLaunchArgument": DeclareLaunchArgument},
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
        if value.kwargs.get("value_type") is bool:
            assert str(raw).lower() in ("true", "false"), raw
            return str(raw).lower() == "true"
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
    """Parameter names each runtime node class declares (a real rclpy node, no graph needed)."""
    os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 100 + 100))
    import rclpy
    from rclpy.context import Context

    from sage_hl_ros.ros.context_node import ContextNode
    from sage_hl_ros.ros.control_node import ControlNode

    ctx = Context()
    rclpy.init(context=ctx)
    try:
        out = {}
        for cls, name in ((ContextNode, "sage_context"), (ControlNode, "sage_control")):
            node = cls(context=ctx)
            out[name] = set(node._parameters)
            node.destroy_node()
        return out
    finally:
        ctx.try_shutdown()


@pytest.fixture(scope="module")
def node_parameters():
    return declared_parameters()


def build(launch_file: Path, overrides: dict | None = None):
    desc = runpy.run_path(str(launch_file))["generate_launch_description"]()
    assert isinstance(desc, LaunchDescription)
    entities = desc.args[0]
    args = {a.args[0]: a.kwargs["default_value"] for a in entities if isinstance(a, DeclareLaunchArgument)}
    for a in entities:
        if isinstance(a, DeclareLaunchArgument):
            assert a.kwargs.get("description"), f"{launch_file.name}: argument {a.args[0]} has no description"
    args.update(overrides or {})
    nodes = [n for n in entities if isinstance(n, Node)]
    return args, nodes


@pytest.mark.parametrize("launch_file", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_matches_package(launch_stubs, node_parameters, launch_file):
    args, nodes = build(launch_file, {"model_dir": "/tmp/model"})
    scripts = console_scripts()
    assert {n.kwargs["name"] for n in nodes} == {s.name for s in RUNTIME_NODES}
    for node in nodes:
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
            assert override["model_dir"] == "/tmp/model" and override["autostart"] is True
            if "joint_limits_file" in override:
                assert Path(override["joint_limits_file"]).is_file()


def test_runtime_launch_arguments_reach_the_control_node(launch_stubs):
    args, nodes = build(ROOT / "launch" / "sage_hl.launch.py",
                        {"command_interface": "joint_trajectory", "enable_control": "true", "use_sim_time": "true"})
    control = next(n for n in nodes if n.kwargs["name"] == "sage_control")
    overrides = [p for p in resolve(control.kwargs["parameters"], args) if isinstance(p, dict)][0]
    assert overrides["command_interface"] == "joint_trajectory"
    assert overrides["enable_control"] is True and overrides["use_sim_time"] is True


def test_isaac_launch_uses_sim_time_and_joint_state_commands(launch_stubs):
    args, nodes = build(ROOT / "launch" / "isaac_sim.launch.py")
    for node in nodes:
        params = resolve(node.kwargs["parameters"], args)
        merged = {}
        for p in params:
            merged.update(yaml.safe_load(Path(p).read_text())[node.kwargs["name"]]["ros__parameters"]
                          if isinstance(p, str) else p)
        assert merged["use_sim_time"] is True
        if node.kwargs["name"] == "sage_control":
            assert merged["command_interface"] == "joint_state"
            assert merged["joint_command_topic"] == "/joint_command"
        else:
            assert merged["camera_topic"] == "/rgb" and merged["depth_topic"] == "/depth"


def test_node_table_modules_have_entry_points():
    scripts = console_scripts()
    for spec in ALL_NODES:
        assert spec.executable in scripts
        assert (ROOT / (spec.module.replace(".", "/") + ".py")).is_file()
