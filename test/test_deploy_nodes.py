"""The context node on its deployment backends over a real ROS graph (issue 12).

- ``inference_backend:=onnxruntime`` publishes the latents the torch backend publishes for the
  same checkpoint and the same sensor messages (both nodes on one graph, one stream);
- the real node processes with onnxruntime never import torch (context node) / never import it
  at all (control node), as their own /diagnostics report;
- a reload to a checkpoint with an export swaps it in, one without an export is refused with the
  reason and the old model keeps publishing; a missing export fails configure naming the file;
  ``auto`` picks onnxruntime only when the export exists.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from ros_harness import (
    Harness,
    Spinner,
    make_checkpoint,
    read_log,
    ros_args,
    ros_env,
    script,
    start_process,
    stop_process,
    wait_diagnostic,
    wait_for,
)

pytestmark = pytest.mark.ros

JOINTS = ["joint1", "joint2", "joint3", "joint4"]
SIZE = 32
ORT = "onnxruntime"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """a: a small checkpoint with its fp32 export; b: a copy of it elsewhere (export included: one
    export is the slow part); plain: no export; stale: a's export, but new weights."""
    pytest.importorskip("onnxruntime")
    from sage_hl_ros.deploy.export import ExportConfig, export_model

    root = tmp_path_factory.mktemp("deploy_nodes")
    cfg = ExportConfig(precisions=["fp32"], held_out_sequences=2, held_out_steps=2, threads=1)
    make_checkpoint(root / "a", JOINTS, bias=0.0)
    export_model(root / "a", cfg, log=lambda line: None)
    shutil.copytree(root / "a", root / "b")
    make_checkpoint(root / "plain", JOINTS, bias=0.02)
    shutil.copytree(root / "a", root / "stale")  # the export is of a's weights, not the new ones
    make_checkpoint(root / "stale", JOINTS, bias=0.03)
    return root


class Sensors:
    """Every modality, constant values at steady rates, from the harness node."""

    def __init__(self, harness: Harness):
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float32MultiArray

        from sage_hl_ros.ros import convert

        node = harness.node
        pub = {"camera": harness.publisher(Image, "/camera/image_raw"),
               "depth": harness.publisher(Image, "/camera/depth/image_raw"),
               "audio": harness.publisher(Float32MultiArray, "/audio/frames"),
               "tactile": harness.publisher(Float32MultiArray, "/tactile/array"),
               "joint_states": harness.publisher(JointState, "/joint_states")}
        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, (SIZE + 8, SIZE + 16, 3), dtype=np.uint8)  # resized by the schema
        depth = rng.uniform(0.3, 3.0, (SIZE, SIZE)).astype(np.float32)
        tone = (0.3 * np.sin(np.arange(512) * 0.1)).astype(np.float32)
        taxels = np.linspace(0.0, 1.0, 16).astype(np.float32)

        def tick():
            stamp = node.get_clock().now().to_msg()
            pub["camera"].publish(convert.numpy_to_image(image, "rgb8", stamp, "camera"))
            pub["depth"].publish(convert.numpy_to_image(depth, "32FC1", stamp, "camera"))
            pub["audio"].publish(convert.numpy_to_float32_multiarray(tone, "samples"))
            pub["tactile"].publish(convert.numpy_to_float32_multiarray(taxels, "taxels"))
            msg = JointState()
            msg.header.stamp = stamp
            msg.name = JOINTS[::-1]
            msg.position = [0.1, -0.2, 0.3, -0.4]
            msg.velocity = [0.01, 0.0, -0.02, 0.0]
            pub["joint_states"].publish(msg)

        node.create_timer(0.04, tick)


@pytest.fixture(scope="module")
def graph():
    ros_env()
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray

    rclpy.init()
    harness = Harness("deploy_test_harness")
    harness.record(DiagnosticArray, "/diagnostics")
    Sensors(harness)
    spinner = Spinner(harness.node)
    yield harness, spinner
    spinner.shutdown()
    harness.destroy()
    rclpy.shutdown()


_counter = [0]


@pytest.fixture
def make_node(graph, files):
    from rclpy.parameter import Parameter

    from sage_hl_ros.ros.context_node import ContextNode

    harness, spinner = graph
    created, spun = [], []

    def make(configure_ok: bool = True, **params):
        from rclpy.lifecycle import TransitionCallbackReturn

        _counter[0] += 1
        name = f"sage_context_deploy_{_counter[0]}"
        base = {"model_dir": str(files / "a"), "h_rate_hz": 20.0, "diagnostics_period_s": 0.25,
                "observation_timeout_s": 2.0, "latent_topic": f"/{name}/latent"}
        base.update(params)
        node = ContextNode(node_name=name, parameter_overrides=[Parameter(k, value=v) for k, v in base.items()])
        created.append(node)
        result = node.trigger_configure()
        if not configure_ok:
            assert result != TransitionCallbackReturn.SUCCESS
            return node
        assert result == TransitionCallbackReturn.SUCCESS
        from sensor_msgs.msg import Image

        harness.record(Image, base["latent_topic"])
        spinner.add(node)
        spun.append(node)
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        return node

    yield make
    for node in spun:
        spinner.remove(node)
    for node in created:
        node.destroy_node()


def _latents(harness, node, since=0.0):
    from sage_hl_ros.ros.convert import msg_to_latent

    return [msg_to_latent(msg) for _, msg in harness.recorders[f"/{node.get_name()}/latent"].since(since)]


def _settled(harness, node, n: int = 3):
    """(latent,) once the node's last ``n`` latents agree (the temporal history is full of the
    same steady inputs), else None."""
    zs = _latents(harness, node)
    if len(zs) < n + 8:  # > history_len steps of the same inputs
        return None
    last = zs[-n:]
    return (last[-1],) if all(np.abs(z - last[-1]).max() < 1e-6 for z in last) else None


def _model_diag(harness, node, since, predicate=None, timeout_s=20.0):
    return wait_diagnostic(harness, f"{node.get_name()}: model", since, predicate, timeout_s)


def test_onnxruntime_latents_equal_torch(graph, make_node):
    harness, _ = graph
    t0 = time.monotonic()
    torch_node = make_node(inference_backend="torch")
    ort_node = make_node(inference_backend=ORT)
    (z_torch,) = wait_for(lambda: _settled(harness, torch_node), 30.0, what="settled torch latents")
    (z_ort,) = wait_for(lambda: _settled(harness, ort_node), 30.0, what="settled onnxruntime latents")
    assert z_ort.shape == z_torch.shape == (256,)
    assert np.abs(z_torch).max() > 0  # a real latent, not the zeros of an idle node
    np.testing.assert_allclose(z_ort, z_torch, rtol=0, atol=1e-4)
    for node, backend in ((torch_node, "torch"), (ort_node, ORT)):
        _, _, values = _model_diag(harness, node, t0)
        assert values["inference_backend"] == backend
        assert values["inference_backend_reason"].startswith("requested")
    _, _, values = _model_diag(harness, ort_node, t0)
    assert values["onnx_providers"] == "CPUExecutionProvider" and values["onnx_precision"] == "fp32"
    for name in ("camera", "depth", "audio", "tactile", "joint_states"):  # every input was used
        st = wait_diagnostic(harness, f"{ort_node.get_name()}: {name}", t0)
        assert st[2]["mask_reason"] == "", (name, st)


def test_auto_picks_onnxruntime_only_with_an_export(graph, make_node, files):
    harness, _ = graph
    t0 = time.monotonic()
    with_export = make_node(inference_backend="auto")
    without = make_node(inference_backend="auto", model_dir=str(files / "plain"))
    _, _, values = _model_diag(harness, with_export, t0)
    assert values["inference_backend"] == ORT and "export" in values["inference_backend_reason"]
    _, _, values = _model_diag(harness, without, t0)
    assert values["inference_backend"] == "torch"
    assert "no usable fp32 export" in values["inference_backend_reason"]
    assert "sage-hl export" in values["inference_backend_reason"]


def test_configure_fails_without_a_matching_export(make_node, files):
    from sage_hl_ros.deploy.h_loader import BackendSpec, load_model

    for name in ("plain", "stale"):  # no export at all / only an export of older weights
        make_node(configure_ok=False, inference_backend=ORT, model_dir=str(files / name))
        with pytest.raises(ValueError, match=rf"{files / name}/exports/[0-9a-f]+/fp32: no fp32 export"):
            load_model(str(files / name), BackendSpec(backend=ORT))
    make_node(configure_ok=False, inference_backend="tensorflow")
    make_node(configure_ok=False, inference_backend=ORT, onnx_precision="fp8")
    with pytest.raises(ValueError, match="onnx_precision must be one of"):
        BackendSpec(precision="fp8")
    with pytest.raises(ValueError, match="onnxruntime_intra_op_threads must be an integer >= 1"):
        BackendSpec(intra_op_threads=0)


def test_reload_with_and_without_export(graph, make_node, files):
    from std_srvs.srv import Trigger

    from sage_hl_ros.deploy.manifest import checkpoint_hash

    harness, _ = graph
    node = make_node(inference_backend=ORT)
    name = node.get_name()
    wait_for(lambda: _settled(harness, node), 30.0, what="latents from a")
    hash_b = checkpoint_hash(files / "b")
    b = str(files / "b")

    # To b (has its export): swapped in, still onnxruntime, b's own export file.
    t0 = time.monotonic()
    results = harness.set_params(name, {"model_dir": b})
    assert results[0].successful, results[0].reason
    _, _, values = _model_diag(harness, node, t0, lambda st: st[2]["model_dir"] == b)
    assert values["inference_backend"] == ORT and values["onnx_export"] == f"{b}/exports/{hash_b}/fp32"
    assert values["last_reload"].startswith(f"loaded {b}") and values["model_sha256"] == hash_b

    # To plain (no export): refused with the reason, b keeps running and publishing.
    t1 = time.monotonic()
    results = harness.set_params(name, {"model_dir": str(files / "plain")})
    assert results[0].successful  # the parameter is plausible; the load itself is refused
    response = harness.call(Trigger, f"/{name}/reload_model", timeout_s=30.0)
    assert not response.success and "no fp32 export" in response.message
    assert str(files / "plain") in response.message and "sage-hl export" in response.message
    level, message, values = _model_diag(harness, node, t1, lambda st: st[0] == 2)
    assert "still running the previous model" in message and "no fp32 export" in message
    assert values["model_dir"] == b and values["inference_backend"] == ORT
    t2 = time.monotonic()
    wait_for(lambda: len(_latents(harness, node, t2)) >= 5, 10.0, what="latents after the refused reload")


def test_node_processes_never_import_torch(graph, files, tmp_path):
    harness, _ = graph
    model = str(files / "a")
    commands = {
        "context": [script("sage_context_node")] + ros_args(
            {"model_dir": model, "autostart": True, "diagnostics_period_s": 0.5, "inference_backend": ORT,
             "onnxruntime_providers": ["CPUExecutionProvider"], "onnxruntime_intra_op_threads": 1}),
        "control": [script("sage_control_node")] + ros_args(
            {"model_dir": model, "autostart": True, "diagnostics_period_s": 0.5}),
    }
    t0 = time.monotonic()
    procs = {name: start_process(cmd, tmp_path / f"{name}.log") for name, cmd in commands.items()}
    try:
        for part, backend_key in (("sage_context: model", "inference_backend"), ("sage_control: control loop", None)):
            try:
                _, _, values = wait_diagnostic(harness, part, t0, None, timeout_s=90.0)
            except AssertionError:
                raise AssertionError("\n".join(f"--- {n}\n{read_log(p)[-3000:]}" for n, p in procs.items())) from None
            assert values["torch_imported"] == "false", (part, values)
            if backend_key:
                assert values[backend_key] == ORT
        # The context process is a working H loop, not just a loaded model.
        wait_diagnostic(harness, "sage_context: H loop", t0, lambda st: int(st[2]["latents_published"]) > 0,
                        timeout_s=30.0)
    finally:
        stopped = {name: stop_process(proc, grace_s=10.0) for name, proc in procs.items()}
    for name, proc in procs.items():
        log = read_log(proc)
        assert stopped[name] == (0, False) and "Traceback" not in log, f"{name}:\n{log[-3000:]}"
