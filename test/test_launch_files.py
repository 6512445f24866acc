"""Launch files, validated without ROS launch (not installable here; DESIGN §6).

Minimal stand-ins for the ``launch``/``launch_ros`` classes the files use record what
``generate_launch_description()`` builds; the test then resolves every substitution (following
``IncludeLaunchDescription`` into the included file, with its ``launch_arguments`` and
``IfCondition``, and calling each ``OpaqueFunction`` with a context holding the resolved arguments,
as launch does) and checks the result against the package itself: executables against setup.py's
console scripts, node names against the node table, parameter files against the YAML on disk, and
every parameter name against the parameters the real node classes declare.
"""

import ast
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


class Substitution(Recorded):
    def perform(self, context):
        return str(resolve(self, context.launch_configurations))


class LaunchConfiguration(Substitution):
    pass


class PathJoinSubstitution(Substitution):
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


class OpaqueFunction(Recorded):
    pass


class LaunchContext:
    """What an OpaqueFunction sees: launch_configurations maps each argument to its string value."""

    def __init__(self, launch_configurations: dict):
        self.launch_configurations = launch_configurations


@pytest.fixture
def launch_stubs(monkeypatch):
    modules = {
        "launch": {"LaunchDescription": LaunchDescription},
        "launch.actions": {"DeclareLaunchArgument": DeclareLaunchArgument,
                           "IncludeLaunchDescription": IncludeLaunchDescription, "OpaqueFunction": OpaqueFunction},
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
    context = LaunchContext({name: str(resolve(value, args)) for name, value in args.items()})
    nodes = []
    pending = list(entities)
    while pending:
        entity = pending.pop(0)
        if not _enabled(entity, args):
            continue
        if isinstance(entity, OpaqueFunction):
            pending[:0] = entity.kwargs["function"](context) or []  # its entities run next, in order
        elif isinstance(entity, Node):
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
            if override.get("joint_limits_file"):  # '' = the checkpoint's robot contract's
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


def test_profile_layers_its_file_after_the_base_one(launch_stubs, node_parameters):
    """profile:=jetson_orin_nano: config/jetson_orin_nano.yaml after params_file (ROS applies the files
    in order, so its keys win), the large-data DDS profile in both processes' environment, launch
    arguments still last; every key it sets is a parameter the node declares."""
    from sage_hl_ros.deploy.h_loader import BackendSpec
    from sage_hl_ros.deploy.onnx_backend import CPU, CUDA, TENSORRT, parse_provider

    launch = ROOT / "launch" / "sage_hl.launch.py"
    _, nodes = build(launch, {"model_dir": "/tmp/model", "profile": "jetson_orin_nano", "enable_control": "true"})
    assert {n.kwargs["name"] for n, _ in nodes} == {s.name for s in RUNTIME_NODES}
    base, jetson = ROOT / "config" / "sage_hl.yaml", ROOT / "config" / "jetson_orin_nano.yaml"
    for node, args in nodes:
        name = node.kwargs["name"]
        files = [Path(p) for p in resolve(node.kwargs["parameters"], args) if isinstance(p, str)]
        assert files == [base, jetson], files
        section = yaml.safe_load(jetson.read_text())[name]["ros__parameters"]
        assert section and not set(section) - node_parameters[name], sorted(set(section) - node_parameters[name])
        env = resolve(node.kwargs["additional_env"], args)
        assert env == {"FASTDDS_DEFAULT_PROFILES_FILE": str(ROOT / "config" / "fastdds_large_data.xml")}
        assert Path(env["FASTDDS_DEFAULT_PROFILES_FILE"]).is_file()
    params = {n.kwargs["name"]: merged_parameters(n, a) for n, a in nodes}
    context, control = params["sage_context"], params["sage_control"]
    assert context["inference_backend"] == "onnxruntime" and context["onnx_precision"] == "fp16"
    assert [parse_provider(p)[0] for p in context["onnxruntime_providers"]] == [TENSORRT, CUDA, CPU]
    assert parse_provider(context["onnxruntime_providers"][0])[1] == {"trt_max_workspace_size": "1073741824"}
    BackendSpec(backend=context["inference_backend"], precision=context["onnx_precision"],  # the node accepts them
                providers=tuple(context["onnxruntime_providers"]),
                intra_op_threads=context["onnxruntime_intra_op_threads"], torch_threads=context["torch_threads"])
    assert control["realtime_priority"] == 10 and control["control_rate_hz"] == 200.0
    assert context["latent_topic"] == control["latent_topic"] == "sage/latent"  # the base file's, kept
    assert control["enable_control"] is True and context["model_dir"] == "/tmp/model"  # launch arguments last

    _, plain = build(launch, {"model_dir": "/tmp/model"})  # no profile: the base file alone, no extra env
    for node, args in plain:
        assert [p for p in resolve(node.kwargs["parameters"], args) if isinstance(p, str)] == [str(base)]
        assert "additional_env" not in node.kwargs
        assert merged_parameters(node, args).get("inference_backend", "auto") == "auto"


def test_profile_files_as_rcl_reads_them():
    """The two files as launch hands them to the processes (--params-file, in order), read by rcl into
    the real node classes: the profile's values, the base file's where the profile is silent."""
    import rclpy
    from rclpy.context import Context

    from sage_hl_ros.ros.context_node import ContextNode
    from sage_hl_ros.ros.control_node import ControlNode

    ctx = Context()
    rclpy.init(context=ctx, args=["--ros-args", "--params-file", str(ROOT / "config" / "sage_hl.yaml"),
                                  "--params-file", str(ROOT / "config" / "jetson_orin_nano.yaml")])
    try:
        context, control = ContextNode(context=ctx), ControlNode(context=ctx)
        got = {k: context.get_parameter(k).value for k in ("inference_backend", "onnx_precision",
                                                             "onnxruntime_providers", "latent_topic")}
        assert got == {"inference_backend": "onnxruntime", "onnx_precision": "fp16",
                       "onnxruntime_providers": ["TensorrtExecutionProvider;trt_max_workspace_size=1073741824",
                                                 "CUDAExecutionProvider", "CPUExecutionProvider"],
                       "latent_topic": "sage/latent"}
        assert control.get_parameter("realtime_priority").value == 10
        assert control.get_parameter("e_stop_topic").value == "/e_stop"  # base file
        context.destroy_node()
        control.destroy_node()
    finally:
        ctx.try_shutdown()


def test_unknown_profile_fails_naming_the_profiles(launch_stubs):
    from sage_hl_ros.launch_table import PROFILES

    with pytest.raises(LaunchArgumentError) as info:
        build(ROOT / "launch" / "sage_hl.launch.py", {"model_dir": "/tmp/model", "profile": "jetson_agx"})
    message = str(info.value)
    assert "profile:='jetson_agx'" in message and "jetson_orin_nano" in message, message
    for name, spec in PROFILES.items():  # every listed profile has its files
        assert (ROOT / "config" / spec.params_file).is_file(), name
        assert all((ROOT / "config" / f).is_file() for _, f in spec.env_config_files), name


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


# --------------------------------------------------------------------------- contradictory arguments

from sage_hl_ros.launch_table import LaunchArgumentError  # noqa: E402
from sage_hl_ros.tools import bringup  # noqa: E402


def test_mujoco_launch_refuses_two_drivers_before_any_node(launch_stubs):
    with pytest.raises(LaunchArgumentError) as info:
        build(ROOT / "launch" / "mujoco_sim.launch.py", {"drive": "true", "sage": "true", "model_dir": "/tmp/m"})
    message = str(info.value)
    assert "sage_control and sim_expert would both command /joint_command" in message, message
    assert "sage:=false" in message  # says how to run it instead
    for flag in ("yes", ""):
        with pytest.raises(LaunchArgumentError, match="launch argument drive:=.* is not a boolean"):
            build(ROOT / "launch" / "mujoco_sim.launch.py", {"drive": flag})


def test_mujoco_launch_allows_an_expert_driving_another_topic(launch_stubs, tmp_path):
    """The guard compares topics, not flags: an expert remapped off the bridge's command topic may run
    beside the SAGE nodes."""
    params = yaml.safe_load((ROOT / "config" / "mujoco_sim.yaml").read_text())
    params["sim_expert"]["ros__parameters"]["joint_command_topic"] = "/expert/joint_command"
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(params))
    _, nodes = build(ROOT / "launch" / "mujoco_sim.launch.py",
                     {"drive": "true", "sim_params_file": str(path), "model_dir": "/tmp/m"})
    assert {n.kwargs["name"] for n, _ in nodes} == {s.name for s in RUNTIME_NODES + SIM_NODES}


def test_runtime_launch_refuses_invalid_arguments(launch_stubs):
    with pytest.raises(LaunchArgumentError, match=r"command_interface:='torque': choose one of position_array"):
        build(ROOT / "launch" / "sage_hl.launch.py", {"command_interface": "torque"})
    with pytest.raises(LaunchArgumentError, match="enable_control:='maybe' is not a boolean"):
        build(ROOT / "launch" / "sage_hl.launch.py", {"enable_control": "maybe"})


def _plan(*argv):
    return {spec.name: cmd for spec, cmd in bringup.plan_nodes(bringup.build_parser().parse_args(list(argv)))}


def _params(cmd: list[str]) -> dict[str, str]:
    return dict(cmd[i + 1].split(":=", 1) for i, a in enumerate(cmd) if a == "-p")


@pytest.mark.parametrize("argv, fragment", [
    (["--sim", "--expert-drives", "--model-dir", "m"], "sage_control and sim_expert would both command /joint_command"),
    (["--sim", "--stand-ins", "--model-dir", "m"], "two /joint_states sources"),
    (["--stand-ins", "--use-sim-time", "--model-dir", "m"], "nothing publishes /clock"),
    (["--expert-drives", "--model-dir", "m"], "add --sim"),
    (["--stand-ins"], "--model-dir is required"),
])
def test_bringup_refuses_contradictory_arguments(capsys, argv, fragment):
    assert bringup.main(argv) == 2  # refused before any process starts
    assert fragment in capsys.readouterr().err


def test_bringup_sim_mirrors_the_mujoco_launch(checkpoints):
    expert_only = _plan("--sim", "--no-sage", "--expert-drives")
    assert set(expert_only) == {s.name for s in SIM_NODES}
    assert _params(expert_only["sim_expert"]) == {"use_sim_time": "true", "drive": "true"}
    full = _plan("--sim", "--model-dir", str(checkpoints / "plain"))
    assert set(full) == {s.name for s in SIM_NODES + RUNTIME_NODES}
    control = full["sage_control"]
    assert str(ROOT / "config" / "isaac_sim.yaml") in control and "enable_control" not in _params(control)
    assert _params(control)["use_sim_time"] == "true" and _params(full["sim_expert"])["drive"] == "false"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from ros_harness import make_checkpoint

    root = tmp_path_factory.mktemp("bringup")
    make_checkpoint(root / "plain", [f"joint{i}" for i in range(1, 8)])  # no contract: the implied one
    make_checkpoint(root / "arm3", ["shoulder", "elbow", "wrist"], robot={
        "name": "arm3", "joints": ["shoulder", "elbow", "wrist"], "joint_states_topic": "arm3/joint_states",
        "command": {"interface": "joint_trajectory", "controller": "arm_controller"},
        "cameras": [{"name": "wrist", "topic": "wrist/image", "compressed": True}]})
    make_checkpoint(root / "grip", ["shoulder", "elbow", "finger"], robot={
        "name": "grip", "joints": ["shoulder", "elbow", "finger"],
        "gripper": {"joint": "finger", "topic": "hand/commands", "mode": "open_close"}})
    return root


def test_bringup_loopback_robot_follows_the_control_nodes_interface(checkpoints):
    model = str(checkpoints / "plain")
    for argv, interface in ((["--stand-ins"], "position_array"),
                            (["--stand-ins", "--command-interface", "joint_trajectory"], "joint_trajectory")):
        plan = _plan(*argv, "--model-dir", model)
        robot = _params(plan["loopback_robot"])
        assert robot["command_interface"] == interface
        assert _params(plan["sage_control"]).get("command_interface", interface) == interface
        assert robot["controller_name"] == "forward_position_controller" and robot["use_sim_time"] == "false"
        # No robot contract in this checkpoint: the package's 7-joint limits, as before contracts.
        assert _params(plan["sage_control"])["joint_limits_file"] == str(ROOT / "config" / "joint_limits.yaml")
    # A checkpoint with a contract: its own files, read by the node.
    plan = _plan("--stand-ins", "--model-dir", str(checkpoints / "arm3"))
    assert "joint_limits_file" not in _params(plan["sage_control"])


def test_bringup_stand_ins_are_the_checkpoints_robot(checkpoints):
    """The loopback arm takes the checkpoint's robot contract: its joints, interface, controller, topics."""
    robot = _params(_plan("--stand-ins", "--model-dir", str(checkpoints / "arm3"))["loopback_robot"])
    assert robot["joint_names"] == '["shoulder","elbow","wrist"]'
    assert (robot["command_interface"], robot["controller_name"]) == ("joint_trajectory", "arm_controller")
    assert robot["joint_states_topic"] == "arm3/joint_states"
    # The synthetic sensors are its sensors: a JPEG wrist camera, nothing for what it lacks.
    sensors = _params(_plan("--stand-ins", "--model-dir", str(checkpoints / "arm3"))["synthetic_sensors"])
    assert (sensors["camera_topic"], sensors["camera_compressed"]) == ("wrist/image", "true")
    assert sensors["depth_topic"] == sensors["tactile_topic"] == sensors["audio_topic"] == '""'
    with pytest.raises(LaunchArgumentError, match="cannot read the robot of checkpoint"):
        _plan("--stand-ins", "--model-dir", str(checkpoints / "missing"))
    # --namespace puts the SAGE nodes and the stand-ins in it (their relative topics resolve there).
    plan = _plan("--stand-ins", "--model-dir", str(checkpoints / "arm3"), "--namespace", "arm3")
    assert all(cmd[cmd.index("__ns:=/arm3") - 1] == "-r" for cmd in plan.values()), plan


def test_bringup_loopback_robot_takes_the_contracts_gripper(checkpoints, tmp_path):
    """A contract with a gripper: the loopback arm subscribes the gripper's topic for that joint (the
    control node's gripper_topic where the params file sets one); no gripper, no gripper parameters."""
    robot = _params(_plan("--stand-ins", "--model-dir", str(checkpoints / "grip"))["loopback_robot"])
    assert (robot["gripper_joint"], robot["gripper_topic"]) == ("finger", "hand/commands")
    assert robot["joint_names"] == '["shoulder","elbow","finger"]'
    params = yaml.safe_load((ROOT / "config" / "sage_hl.yaml").read_text())
    params["sage_control"]["ros__parameters"]["gripper_topic"] = "/my_gripper/commands"
    path = tmp_path / "sage_hl.yaml"
    path.write_text(yaml.safe_dump(params))
    robot = _params(_plan("--stand-ins", "--model-dir", str(checkpoints / "grip"), "--params-file", str(path))[
        "loopback_robot"])
    assert robot["gripper_topic"] == "/my_gripper/commands"
    plain = _params(_plan("--stand-ins", "--model-dir", str(checkpoints / "arm3"))["loopback_robot"])
    assert "gripper_joint" not in plain and "gripper_topic" not in plain
