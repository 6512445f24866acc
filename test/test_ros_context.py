"""sage_context over a real ROS graph, in one process: sensors in, latents and diagnostics out."""

from __future__ import annotations

import io
import shutil
import time

import numpy as np
import pytest
from ros_harness import Harness, Spinner, make_checkpoint, ros_env, wait_diagnostic, wait_for

pytestmark = pytest.mark.ros

JOINTS = ["joint1", "joint2", "joint3", "joint4"]
SIZE = 32  # camera/depth px (the test checkpoint's size)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("context")
    make_checkpoint(root / "a", JOINTS, bias=0.0)
    make_checkpoint(root / "b", JOINTS, bias=0.05)  # different weights -> different hash
    make_checkpoint(root / "other_robot", ["a", "b", "c", "d"])
    make_checkpoint(root / "camera_only", JOINTS, observation_overrides={"sensors": ["camera"]})
    make_checkpoint(root / "rate20", JOINTS, model_overrides={"h_rate_hz": 20.0})  # trained at 20 Hz
    make_checkpoint(root / "arm_b", JOINTS, robot={  # a robot contract: one camera, its own topics
        "name": "arm_b", "joints": JOINTS, "joint_states_topic": "arm_b/joint_states",
        "cameras": [{"name": "wrist", "topic": "arm_b/wrist/image_raw"}]})
    make_checkpoint(root / "two_cam", JOINTS, robot={  # two cameras: the second one on a topic of its own
        "name": "two_cam", "joints": JOINTS,
        "cameras": [{"name": "front", "topic": "camera/image_raw"}, {"name": "wrist", "topic": "wrist/image_raw"}]})
    shutil.copytree(root / "a", root / "corrupt")
    (root / "corrupt" / "model.safetensors").write_bytes(b"\x00not safetensors" * 10)
    return root


class Sensors:
    """Streams all five modalities from the harness node (50 Hz base timer); each can be paused."""

    def __init__(self, harness: Harness):
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Float32MultiArray

        from sage_hl_ros.ros import convert

        self.h = harness
        self.on = {k: True for k in ("camera", "depth", "audio", "tactile", "joint_states")}
        self.stamps: set[tuple[int, int]] = set()
        self.n = 0
        node = harness.node
        pub = {"camera": harness.publisher(Image, "/camera/image_raw"),
               "depth": harness.publisher(Image, "/camera/depth/image_raw"),
               "audio": harness.publisher(Float32MultiArray, "/audio/frames"),
               "tactile": harness.publisher(Float32MultiArray, "/tactile/array"),
               "joint_states": harness.publisher(JointState, "/joint_states")}
        image = np.full((SIZE, SIZE, 3), 80, np.uint8)
        depth = np.full((SIZE, SIZE), 1.5, np.float32)
        tone = (0.3 * np.sin(np.arange(512) * 0.1)).astype(np.float32)

        def tick():
            self.n += 1
            stamp = node.get_clock().now().to_msg()
            if self.on["camera"] and self.n % 2 == 0:
                pub["camera"].publish(convert.numpy_to_image(image, "rgb8", stamp, "camera"))
                self.stamps.add((stamp.sec, stamp.nanosec))
            if self.on["depth"] and self.n % 2 == 1:
                pub["depth"].publish(convert.numpy_to_image(depth, "32FC1", stamp, "camera"))
                self.stamps.add((stamp.sec, stamp.nanosec))
            if self.on["audio"] and self.n % 3 == 0:
                pub["audio"].publish(convert.numpy_to_float32_multiarray(tone, "samples"))
            if self.on["tactile"]:
                pub["tactile"].publish(convert.numpy_to_float32_multiarray(np.zeros(16, np.float32), "taxels"))
            if self.on["joint_states"]:
                msg = JointState()
                msg.header.stamp = stamp
                msg.name = JOINTS[::-1]
                msg.position = [0.1, 0.2, 0.3, 0.4]
                pub["joint_states"].publish(msg)
                self.stamps.add((stamp.sec, stamp.nanosec))

        node.create_timer(0.02, tick)

    def all(self, value: bool):
        for k in self.on:
            self.on[k] = value


@pytest.fixture(scope="module")
def graph():
    ros_env()
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    rclpy.init()
    harness = Harness("context_test_harness")
    harness.record(Image, "/sage/latent")
    harness.record(DiagnosticArray, "/diagnostics")
    sensors = Sensors(harness)
    spinner = Spinner(harness.node)
    yield harness, spinner, sensors
    spinner.shutdown()
    harness.destroy()
    rclpy.shutdown()


_counter = [0]


@pytest.fixture
def make_node(graph, files):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from sage_hl_ros.ros.context_node import ContextNode

    harness, spinner, sensors = graph
    created = []

    def make(**params):
        base = {"model_dir": str(files / "a"), "h_rate_hz": 10.0, "diagnostics_period_s": 0.25,
                "expected_image_width_px": SIZE, "expected_image_height_px": SIZE}
        base.update(params)
        _counter[0] += 1
        node = ContextNode(node_name=f"sage_context_{_counter[0]}",
                           parameter_overrides=[Parameter(k, value=v) for k, v in base.items()])
        created.append(node)
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        spinner.add(node)
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        return node

    yield make
    sensors.all(True)
    for node in created:
        spinner.remove(node)
        node.destroy_node()
    for rec in harness.recorders.values():
        rec.clear()


def _diag(harness, node, part, since, predicate=None, timeout_s=10.0):
    return wait_diagnostic(harness, f"{node.get_name()}: {part}", since, predicate, timeout_s)


def _latents(harness, since=0.0):
    return harness.recorders["/sage/latent"].since(since)


def test_latents_at_h_rate_stamped_from_observations(graph, make_node):
    harness, _, sensors = graph
    node = make_node()
    wait_for(lambda: len(_latents(harness)) >= 3, 15.0, what="latents")
    window = 3.0
    t0 = time.monotonic()
    wait_for(lambda: time.monotonic() > t0 + window, window + 5.0, interval_s=0.1, what="measurement window")
    got = [m for t, m in _latents(harness, t0) if t <= t0 + window]
    assert 27 <= len(got) <= 33, f"{len(got) / window:.1f} latents/s, expected 10 Hz +-10%"
    msg = got[-1]
    assert (msg.encoding, msg.height, msg.width) == ("32FC1", 1, 256)
    from sage_hl_ros.ros.convert import msg_to_latent

    assert np.isfinite(msg_to_latent(msg)).all()
    # Stamped with the newest header stamp among the observations used (not the publish time).
    assert all((m.header.stamp.sec, m.header.stamp.nanosec) in sensors.stamps for m in got)
    level, message, values = _diag(harness, node, "H loop", since=t0, predicate=lambda st: st[0] == 0)
    # (the exact rate is the latent count above; this reading spans only one 0.25 s diagnostics period)
    assert 4.0 <= float(values["rate_hz"]) <= 20.0 and float(values["inference_p50_ms"]) > 0
    for modality in ("camera", "depth", "audio", "tactile", "joint_states"):
        assert _diag(harness, node, modality, since=t0)[2]["state"] == "ok", modality


def test_bad_inputs_are_counted_and_diagnosed(graph, make_node):
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float32MultiArray, MultiArrayDimension

    from sage_hl_ros.ros import convert

    harness, _, _ = graph
    node = make_node()
    wait_for(lambda: len(_latents(harness)) >= 2, 15.0, what="latents")
    now = harness.node.get_clock().now().to_msg()

    def joints(names, positions):
        msg = JointState()
        msg.header.stamp = now
        msg.name, msg.position = names, positions
        return msg

    malformed = Float32MultiArray()
    malformed.layout.dim = [MultiArrayDimension(label="taxels", size=16, stride=16)]
    malformed.data = [0.0] * 8
    short_audio = Float32MultiArray()
    short_audio.layout.dim = [MultiArrayDimension(label="samples", size=600, stride=600)]
    short_audio.data = [0.0] * 512
    cases = [  # (topic, type, message, modality, reason category)
        ("/camera/image_raw", Image, convert.numpy_to_image(np.zeros((SIZE, SIZE), np.float32), "32FC1", now),
         "camera", "wrong_encoding"),
        ("/camera/image_raw", Image, convert.numpy_to_image(np.zeros((48, 64, 3), np.uint8), "rgb8", now),
         "camera", "wrong_size"),
        ("/camera/depth/image_raw", Image, convert.numpy_to_image(np.zeros((SIZE, SIZE, 3), np.uint8), "rgb8", now),
         "depth", "wrong_encoding"),
        ("/tactile/array", Float32MultiArray, malformed, "tactile", "malformed"),
        ("/tactile/array", Float32MultiArray, convert.numpy_to_float32_multiarray(np.zeros(9), "taxels"),
         "tactile", "wrong_size"),
        ("/audio/frames", Float32MultiArray, short_audio, "audio", "malformed"),
        ("/joint_states", JointState, joints(JOINTS[:3], [0.1, 0.2, 0.3]), "joint_states", "missing_joint"),
        ("/joint_states", JointState, joints(JOINTS, [0.1, float("nan"), 0.3, 0.4]), "joint_states", "non_finite"),
        ("/joint_states", JointState, joints(JOINTS, [0.1, float("-inf"), 0.3, 0.4]), "joint_states", "non_finite"),
    ]
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    sensor_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    for topic, msg_type, msg, modality, category in cases:
        slot = node._cache.slots[modality]
        before = slot.reasons[category]
        harness.publish(msg_type, topic, msg, sensor_qos)
        wait_for(lambda s=slot, c=category, b=before: s.reasons[c] > b, 5.0,
                 what=f"{modality} rejection '{category}'")
    t0 = time.monotonic()
    n_latents = len(_latents(harness))
    for modality, category in (("camera", "wrong_encoding"), ("camera", "wrong_size"), ("depth", "wrong_encoding"),
                               ("tactile", "malformed"), ("tactile", "wrong_size"), ("audio", "malformed"),
                               ("joint_states", "missing_joint"), ("joint_states", "non_finite")):
        _, message, values = _diag(harness, node, modality, since=t0,
                                   predicate=lambda st, c=category: int(st[2].get(f"rejected.{c}", 0)) >= 1)
        assert values["last_reason"]
    assert int(_diag(harness, node, "joint_states", since=t0)[2]["rejected.non_finite"]) >= 2
    # Nothing crashed: latents keep coming, the good streams are still "ok".
    wait_for(lambda: len(_latents(harness)) >= n_latents + 3, 5.0, what="latents after bad input")
    assert node._step_errors == 0


def test_out_of_range_tactile_and_joints_are_masked_and_the_next_step_publishes(graph, make_node):
    # One 16 x 1e30 tactile message or one JointState at 1e308 rad used to stop the latent for
    # ~13 H steps (overflow -> non-finite latent, poisoned temporal state kept). Now each is
    # rejected with a reason and every following H step publishes.
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float32MultiArray

    from sage_hl_ros.ros import convert

    harness, _, _ = graph
    node = make_node()
    wait_for(lambda: node._published >= 2, 15.0, what="latents")
    joints = JointState(name=JOINTS, position=[0.1, 1e308, 0.3, 0.4])
    joints.header.stamp = harness.node.get_clock().now().to_msg()
    cases = [("/tactile/array", Float32MultiArray,
              convert.numpy_to_float32_multiarray(np.full(16, 1e30, np.float32), "taxels"), "tactile"),
             ("/joint_states", JointState, joints, "joint_states")]
    for topic, msg_type, msg, modality in cases:
        slot = node._cache.slots[modality]
        before = slot.reasons["out_of_range"]
        steps, published = node._steps, node._published
        harness.publish(msg_type, topic, msg)
        wait_for(lambda s=slot, b=before: s.reasons["out_of_range"] > b, 5.0, what=f"{modality} out-of-range rejection")
        wait_for(lambda s=steps: node._steps >= s + 3, 5.0, what="H steps after the bad message")
        # every H step since published (one may have been mid-flight when we read the counters)
        assert node._published - published >= node._steps - steps - 1, (modality, node._steps - steps)
        assert "out of range" in slot.last_reason
    assert node._step_errors == 0 and node._skipped["non_finite_latent"] == 0 and node._skipped["non_finite_state"] == 0
    t0 = time.monotonic()
    _, _, values = _diag(harness, node, "joint_states", since=t0,
                         predicate=lambda st: int(st[2].get("rejected.out_of_range", 0)) >= 1)
    assert "position out of range for joint2: 1e+308 rad" in values["last_reason"]
    _, _, values = _diag(harness, node, "tactile", since=t0,
                         predicate=lambda st: int(st[2].get("rejected.out_of_range", 0)) >= 1)
    assert "tactile out of range (16 of 16 values): 1e+30" in values["last_reason"]


def test_old_and_future_stamps_are_masked_naming_the_clock(graph, make_node):
    from sensor_msgs.msg import JointState

    harness, _, sensors = graph
    node = make_node(observation_timeout_s=2.0)
    wait_for(lambda: node._published >= 2, 15.0, what="latents")
    sensors.on["joint_states"] = False
    sensors.on["tactile"] = False
    clock = harness.node.get_clock()
    slot = node._cache.slots["joint_states"]

    def send_joints(offset_s: float):
        msg = JointState(name=JOINTS, position=[0.1, 0.2, 0.3, 0.4])
        msg.header.stamp = (clock.now() + rclpy_duration(offset_s)).to_msg()
        harness.publish(JointState, "/joint_states", msg)

    time.sleep(0.1)  # let joint states already in flight land first
    accepted = slot.accepted
    t0 = time.monotonic()
    send_joints(-10.0)  # arrives now, stamped 10 s ago (a late or replayed message)

    def ours_and_stale_by_stamp(st):  # our message (just accepted, arrival age < timeout), masked by its stamp
        v = st[2]
        return (int(v["accepted"]) > accepted and float(v["arrival_age_ms"]) < 2000.0
                and v["state"] == "stale" and v["stale_clock"] == "stamp"
                and "stale by header stamp" in v["mask_reason"])  # the H step masked it too

    _, message, values = _diag(harness, node, "joint_states", since=t0, predicate=ours_and_stale_by_stamp)
    assert "stale by header stamp" in message and int(values["masked.stale"]) >= 1
    assert float(values["stamp_age_ms"]) >= 10000.0
    # unstamped tactile that stopped arriving: stale by its arrival time
    _, message, values = _diag(harness, node, "tactile", since=t0,
                               predicate=lambda st: st[2]["state"] == "stale" and st[2]["stale_clock"] == "arrival")
    assert "stale by arrival time" in message

    t1 = time.monotonic()
    send_joints(5.0)  # stamped 5 s ahead of the node clock
    _, message, values = _diag(harness, node, "joint_states", since=t1,
                               predicate=lambda st: st[2]["state"] == "future" and st[2]["stale_clock"] == "stamp"
                               and int(st[2].get("masked.future", 0)) >= 1)
    assert "ahead of the node clock" in message and "ahead of the node clock" in values["mask_reason"]
    # the other inputs keep the latent going meanwhile
    n = node._published
    wait_for(lambda: node._published >= n + 3, 5.0, what="latents while joint states are masked")


def rclpy_duration(seconds: float):
    from rclpy.duration import Duration

    return Duration(nanoseconds=int(seconds * 1e9))


def test_compressed_camera(graph, make_node):
    from PIL import Image as PILImage
    from sensor_msgs.msg import CompressedImage

    harness, _, sensors = graph
    node = make_node(camera_compressed=True)
    buf = io.BytesIO()
    PILImage.fromarray(np.full((SIZE, SIZE, 3), 120, np.uint8)).save(buf, format="JPEG")
    msg = CompressedImage(format="jpeg", data=buf.getvalue())
    bad = CompressedImage(format="jpeg", data=b"not a jpeg at all")
    topic = "/camera/image_raw/compressed"
    harness.wait_for_subscribers(CompressedImage, topic)

    def send(m):
        m.header.stamp = harness.node.get_clock().now().to_msg()
        harness.publish(CompressedImage, topic, m)

    send(msg)
    wait_for(lambda: node._decoded.get("camera", (None, None))[1] is not None, 5.0, what="a decoded JPEG")
    assert node._decoded["camera"][1].shape == (SIZE, SIZE, 3)
    slot = node._cache.slots["camera"]
    send(bad)
    wait_for(lambda: slot.reasons["decode_error"] + slot.reasons["malformed"] >= 1, 5.0, what="decode rejection")


def test_stale_modality_is_masked_and_no_input_publishes_nothing(graph, make_node):
    harness, _, sensors = graph
    node = make_node(observation_timeout_s=0.3)
    wait_for(lambda: len(_latents(harness)) >= 2, 15.0, what="latents")
    sensors.on["camera"] = False
    t0 = time.monotonic()
    _diag(harness, node, "camera", since=t0, predicate=lambda st: st[2]["state"] == "stale")
    n = len(_latents(harness))
    wait_for(lambda: len(_latents(harness)) >= n + 3, 5.0, what="latents without the camera")
    assert node._masked["camera"]["stale"] >= 1 and "stale by" in node._mask_reason["camera"]

    sensors.all(False)  # nothing fresh at all: publish nothing, so the control node holds
    wait_for(lambda: node._skipped_no_input >= 3, 5.0, what="skipped H steps")
    n = len(_latents(harness))
    t1 = time.monotonic()
    wait_for(lambda: time.monotonic() > t1 + 0.5, 2.0, what="a quiet period")
    assert len(_latents(harness)) <= n + 1
    sensors.all(True)
    wait_for(lambda: len(_latents(harness)) >= n + 3, 5.0, what="latents after sensors resumed")


def test_reload_swaps_model_and_rejects_bad_checkpoints(graph, make_node, files, tmp_path):
    from std_srvs.srv import Trigger

    from sage_hl_ros.core.checkpoint import load_checkpoint, model_hash, save_checkpoint

    harness, _, _ = graph
    live = tmp_path / "live"
    shutil.copytree(files / "a", live)
    node = make_node(model_dir=str(live))
    name = node.get_name()
    wait_for(lambda: len(_latents(harness)) >= 2, 15.0, what="latents")

    t0 = time.monotonic()
    for source in ("b", "a", "b", "a", "b"):  # the service answers once the reload is done
        save_checkpoint(load_checkpoint(files / source), live)
        response = harness.call(Trigger, f"/{name}/reload_model")
        assert response.success, response.message
    new_hash = model_hash(files / "b")
    _diag(harness, node, "model", since=t0, predicate=lambda st: st[2]["model_sha256"] == new_hash)

    result = harness.set_params(name, {"model_dir": str(files / "corrupt")})[0]
    assert result.successful, result.reason
    level, message, values = _diag(harness, node, "model", since=time.monotonic(), predicate=lambda st: st[0] == 2)
    assert "safetensors" in message and values["model_sha256"] == new_hash
    response = harness.call(Trigger, f"/{name}/reload_model")
    assert not response.success and "safetensors" in response.message

    assert harness.set_params(name, {"model_dir": str(files / "other_robot")})[0].successful
    _diag(harness, node, "model", since=time.monotonic(), predicate=lambda st: "joint names" in st[1])
    assert harness.set_params(name, {"model_dir": str(files / "rate20")})[0].successful
    _diag(harness, node, "model", since=time.monotonic(), predicate=lambda st: "trained at an H rate of 20 Hz" in st[1])
    result = harness.set_params(name, {"model_dir": str(tmp_path / "missing")})[0]
    assert not result.successful and "not a directory" in result.reason

    # Judged from the node's own records, not receive gaps (wall time a busy machine stretches): the
    # five accepted reloads ran beside the H loop, which kept publishing latents while the worker
    # thread built, hashed and warmed up each model (a load on the loop publishes none: the bug this
    # guards), and no H step failed while checkpoints were loaded, refused and swapped. The bound is
    # a third of the H rate over the windows, so one stalled window cannot fail it.
    log = np.array(node.reload_log(), dtype=float)
    assert len(log) == 5, log
    window_s = float(((log[:, 1] - log[:, 0]) * 1e-9).sum())
    meanwhile = int((log[:, 4] - log[:, 3]).sum())
    print(f"reloads: {window_s:.2f} s in all, {meanwhile} latents meanwhile, "
          f"loader CPU median {np.median(log[:, 2]):.0f} ms")
    assert meanwhile >= max(1, int(window_s * node._h_rate / 3)), (window_s, meanwhile)
    assert node._step_errors == 0 and set(node._skipped) <= {"no_input"}, (node._step_errors, node._skipped)
    assert len(_latents(harness, t0)) >= 5


def test_configure_fails_without_a_model(graph):
    from rclpy.lifecycle import TransitionCallbackReturn

    from sage_hl_ros.ros.context_node import ContextNode

    node = ContextNode(node_name="sage_context_no_model")
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    finally:
        node.destroy_node()


@pytest.mark.parametrize("param,topic,cause", [("latent_topic", "", "latent_topic is empty"),
                                               ("tactile_topic", "bad topic!", "InvalidTopicNameException")])
def test_configure_failure_logs_its_cause(graph, files, capfd, param, topic, cause):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from sage_hl_ros.ros.context_node import ContextNode

    node = ContextNode(node_name="sage_context_bad_topic",
                       parameter_overrides=[Parameter("model_dir", value=str(files / "a")),
                                            Parameter(param, value=topic)])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
    finally:
        node.destroy_node()
    logged: list[str] = []

    def read_log():
        logged.append(capfd.readouterr().err)
        return "configure failed" in "".join(logged)

    wait_for(read_log, 5.0, what="the configure error in the log")
    line = next(line for line in "".join(logged).splitlines() if "configure failed" in line)
    assert cause in line, line


def test_topics_come_from_the_checkpoints_robot_contract(graph, make_node, files):
    """Topic parameters left empty take the contract's topics; only its sensors are subscribed."""
    harness, _, _ = graph
    node = make_node(model_dir=str(files / "arm_b"))
    assert node._declared == ("camera", "joint_states")
    name = node.get_name()

    def subscribed(topic):
        return name in [i.node_name for i in harness.node.get_subscriptions_info_by_topic(topic)]

    wait_for(lambda: subscribed("/arm_b/wrist/image_raw") and subscribed("/arm_b/joint_states"), 10.0,
             what="subscriptions on the contract's topics")
    assert not any(subscribed(t) for t in ("/camera/image_raw", "/joint_states", "/tactile/array"))
    # A parameter still wins over the contract.
    other = make_node(model_dir=str(files / "arm_b"), joint_states_topic="/joint_states")
    assert other._topics["joint_states"] == "/joint_states" and other._topics["camera"] == "arm_b/wrist/image_raw"


def test_the_h_rate_is_the_checkpoints_and_another_one_is_refused(graph, files, capfd):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from sage_hl_ros.ros.context_node import ContextNode

    def configure(name, **params):
        node = ContextNode(node_name=name, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        try:
            return node.trigger_configure(), node._h_rate
        finally:
            node.destroy_node()

    model = str(files / "rate20")
    assert configure("sage_context_rate_default", model_dir=model) == (TransitionCallbackReturn.SUCCESS, 20.0)
    assert configure("sage_context_rate_same", model_dir=model, h_rate_hz=20.0)[0] == TransitionCallbackReturn.SUCCESS
    capfd.readouterr()
    assert configure("sage_context_rate_other", model_dir=model, h_rate_hz=10.0)[0] == TransitionCallbackReturn.FAILURE
    logged: list[str] = []

    def read_log():
        logged.append(capfd.readouterr().err)
        return "configure failed" in "".join(logged)

    wait_for(read_log, 5.0, what="the configure error in the log")
    assert f"h_rate_hz 10 Hz, but {model} was trained at 20 Hz" in "".join(logged)


def test_a_robot_without_depth_audio_tactile_runs_with_no_warning_about_them(graph, make_node, files, capfd):
    harness, _, sensors = graph
    for absent in ("depth", "audio", "tactile"):
        sensors.on[absent] = False  # the robot has none of them
    capfd.readouterr()
    node = make_node(model_dir=str(files / "camera_only"), depth_topic="", tactile_topic="")
    assert sorted(s.topic_name for s in node.subscriptions) == ["/camera/image_raw", "/joint_states"]
    t0 = time.monotonic()
    wait_for(lambda: len(_latents(harness, t0)) >= 5, 15.0, what="latents from camera + joints")
    for absent in ("depth", "audio", "tactile"):
        level, message, values = _diag(harness, node, absent, since=t0)
        assert (level, values["state"]) == (0, "not_declared") and "not declared" in message, (absent, message)
    for present in ("camera", "joint_states"):
        assert _diag(harness, node, present, since=t0)[2]["state"] == "ok", present
    assert node._masked["depth"] == node._masked["audio"] == node._masked["tactile"] == {}
    logged = capfd.readouterr().err
    about = [line for line in logged.splitlines() if node.get_name() in line
             and ("WARN" in line or "ERROR" in line) and any(k in line for k in ("depth", "audio", "tactile"))]
    assert about == [], about

    # a checkpoint with other sensors is refused by name: the node subscribed to these
    assert harness.set_params(node.get_name(), {"model_dir": str(files / "a")})[0].successful
    _, message, _ = _diag(harness, node, "model", since=time.monotonic(), predicate=lambda st: "sensors" in st[1])
    assert "sensors ['camera', 'depth', 'audio', 'tactile'] differ from the running model's ['camera']" in message


def test_a_second_camera_is_subscribed_from_the_contract_and_diagnosed_on_its_own(graph, make_node, files):
    from sensor_msgs.msg import Image

    from sage_hl_ros.ros import convert

    harness, _, sensors = graph
    for absent in ("depth", "audio", "tactile"):
        sensors.on[absent] = False
    node = make_node(model_dir=str(files / "two_cam"))
    assert node._declared == ("camera", "camera_1", "joint_states")
    assert sorted(s.topic_name for s in node.subscriptions) == ["/camera/image_raw", "/joint_states",
                                                                "/wrist/image_raw"]
    pub = harness.publisher(Image, "/wrist/image_raw")
    wrist = {"on": True, "sent": 0}
    frame = np.full((SIZE, SIZE, 3), 200, np.uint8)

    def tick():
        if wrist["on"]:
            pub.publish(convert.numpy_to_image(frame, "rgb8", harness.node.get_clock().now().to_msg(), "wrist"))
            wrist["sent"] += 1

    timer = harness.node.create_timer(0.04, tick)
    try:
        t0 = time.monotonic()
        _diag(harness, node, "camera_1", since=t0, predicate=lambda st: st[2]["state"] == "ok")
        assert _diag(harness, node, "camera", since=t0)[2]["state"] == "ok"
        used = node._step  # the H step used both views
        wait_for(lambda: node._masked["camera_1"] == {} and node._published >= 3, 15.0, what="latents from both")
        wrist["on"] = False  # the wrist camera goes silent: stale on its own, latents keep coming
        t1 = time.monotonic()
        level, message, values = _diag(harness, node, "camera_1", since=t1,
                                       predicate=lambda st: st[2]["state"] == "stale")
        assert level == 1 and "stale" in message
        assert _diag(harness, node, "camera", since=time.monotonic())[2]["state"] == "ok"
        published = node._published
        wait_for(lambda: node._published >= published + 3, 15.0, what="latents from the front camera alone")
        assert node._masked["camera_1"]["stale"] > 0 and used is node._step
    finally:
        harness.node.destroy_timer(timer)
