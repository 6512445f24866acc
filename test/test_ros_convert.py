"""Tests for sage_hl_ros.ros.{convert,commands,qos,diagnostics}.

Everything except declare_qos works on message classes alone (no rclpy.init, no ROS graph).
"""

import os

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"  # the domain id: conftest reserves one per run

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image, JointState  # noqa: E402
from std_msgs.msg import Float32MultiArray, Float64MultiArray, MultiArrayDimension  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from sage_hl_ros.core.config import InputRanges  # noqa: E402
from sage_hl_ros.ros import commands, convert, diagnostics  # noqa: E402
from sage_hl_ros.ros.convert import ConversionError  # noqa: E402

RNG = np.random.default_rng(0)
JOINTS = ("joint1", "joint2", "joint3", "joint4")


def _random_image(encoding, h=5, w=7):
    dtype, ch = convert.IMAGE_ENCODINGS[encoding]
    shape = (h, w) if ch == 1 else (h, w, ch)
    if dtype.kind == "f":
        return RNG.standard_normal(shape).astype(dtype)
    return RNG.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


def _shares_msg_buffer(arr, msg):
    return np.shares_memory(arr, np.frombuffer(msg.data, dtype=np.uint8))


def _raw_image(encoding, h, w, step, data, bigendian=0):
    return Image(height=h, width=w, encoding=encoding, step=step, is_bigendian=bigendian, data=data)


# ------------------------------------------------------------------------------------ images


@pytest.mark.parametrize("encoding", list(convert.IMAGE_ENCODINGS))
def test_image_round_trip_zero_copy(encoding):
    a = _random_image(encoding)
    msg = convert.numpy_to_image(a, encoding, stamp=Time(sec=3, nanosec=4), frame_id="cam")
    dtype, ch = convert.IMAGE_ENCODINGS[encoding]
    assert (msg.height, msg.width, msg.is_bigendian) == (5, 7, 0)
    assert msg.step == 7 * dtype.itemsize * ch
    assert len(msg.data) == msg.step * msg.height
    assert msg.header.frame_id == "cam" and msg.header.stamp.sec == 3 and msg.header.stamp.nanosec == 4
    out = convert.image_to_numpy(msg)
    assert out.shape == a.shape and out.dtype == dtype
    np.testing.assert_array_equal(out, a)
    assert _shares_msg_buffer(out, msg)


def test_numpy_to_image_accepts_trailing_channel_and_rejects_bad_input():
    a = _random_image("mono8")
    msg = convert.numpy_to_image(a[..., None], "mono8")
    np.testing.assert_array_equal(convert.image_to_numpy(msg), a)
    with pytest.raises(ConversionError, match="needs dtype uint8, got float64"):
        convert.numpy_to_image(a.astype(np.float64), "mono8")
    with pytest.raises(ConversionError, match=r"needs shape \(H, W, 3\)"):
        convert.numpy_to_image(a, "rgb8")
    with pytest.raises(ConversionError, match="unsupported image encoding 'yuv422'"):
        convert.numpy_to_image(a, "yuv422")
    # a non-contiguous / big-endian input still produces a valid little-endian message
    be = _random_image("16UC1").astype(">u2")
    np.testing.assert_array_equal(convert.image_to_numpy(convert.numpy_to_image(be, "16UC1")), be)
    t = convert.numpy_to_image(_random_image("rgb8")[:, ::-1], "rgb8")
    assert t.step == 21


@pytest.mark.parametrize("encoding", ["rgb8", "16UC1", "32FC1", "mono8"])
def test_row_padding(encoding):
    a = _random_image(encoding, h=4, w=3)
    dtype, ch = convert.IMAGE_ENCODINGS[encoding]
    row = 3 * dtype.itemsize * ch
    step = row + 5  # odd padding: also exercises unaligned float rows
    raw = bytearray(b"\xee" * (step * 4))
    for r in range(4):
        raw[r * step : r * step + row] = a[r].tobytes()
    msg = _raw_image(encoding, 4, 3, step, bytes(raw))
    out = convert.image_to_numpy(msg)
    np.testing.assert_array_equal(out, a)
    assert _shares_msg_buffer(out, msg)
    assert out.strides[0] == step


def test_bgr_and_other_rgb_conversions():
    rgb = _random_image("rgb8")
    cases = {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "rgba8": np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 9, np.uint8)], axis=2),
        "bgra8": np.concatenate([rgb[..., ::-1], np.full(rgb.shape[:2] + (1,), 9, np.uint8)], axis=2),
    }
    for enc, arr in cases.items():
        msg = convert.numpy_to_image(np.ascontiguousarray(arr), enc)
        out = convert.image_to_rgb(msg)
        assert out.shape == rgb.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, rgb, err_msg=enc)
        if enc in ("rgb8", "rgba8"):
            assert _shares_msg_buffer(out, msg), enc  # no reorder -> no copy
        else:
            assert out.flags.c_contiguous, enc  # torch.from_numpy-friendly copy
    # explicit pixel check: BGR (1, 2, 3) is RGB (3, 2, 1)
    px = convert.numpy_to_image(np.array([[[1, 2, 3]]], np.uint8), "bgr8")
    assert convert.image_to_rgb(px)[0, 0].tolist() == [3, 2, 1]
    mono = _random_image("mono8")
    out = convert.image_to_rgb(convert.numpy_to_image(mono, "mono8"))
    assert out.shape == mono.shape + (3,)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], mono)
    with pytest.raises(ConversionError, match="image_to_rgb: unsupported encoding '16UC1'"):
        convert.image_to_rgb(convert.numpy_to_image(_random_image("16UC1"), "16UC1"))


def test_big_endian_16uc1():
    a = np.array([[1, 258, 65535], [0, 1000, 4096]], dtype=np.uint16)
    msg = _raw_image("16UC1", 2, 3, 6, a.astype(">u2").tobytes(), bigendian=1)
    out = convert.image_to_numpy(msg)
    np.testing.assert_array_equal(out, a)
    assert _shares_msg_buffer(out, msg)  # byte-swapped view, not a copy
    d = convert.depth_to_meters(msg)
    np.testing.assert_allclose(d[0], [0.001, 0.258, 65.535], rtol=1e-6)


def test_big_endian_32fc1():
    a = np.array([[1.5, -2.25, 3.0]], dtype=np.float32)
    msg = _raw_image("32FC1", 1, 3, 12, a.astype(">f4").tobytes(), bigendian=1)
    np.testing.assert_array_equal(convert.depth_to_meters(msg), a)
    assert convert.depth_to_meters(msg).dtype == np.float32


@pytest.mark.parametrize("encoding", ["16UC1", "mono16"])
def test_depth_mm_to_m_zero_is_nan(encoding):
    mm = np.array([[0, 1, 1500], [65535, 0, 250]], dtype=np.uint16)
    d = convert.depth_to_meters(convert.numpy_to_image(mm, encoding))
    assert d.dtype == np.float32 and d.shape == (2, 3)
    assert np.isnan(d[0, 0]) and np.isnan(d[1, 1])
    np.testing.assert_allclose(d[0, 1:], [0.001, 1.5], rtol=1e-6)
    np.testing.assert_allclose(d[1, [0, 2]], [65.535, 0.25], rtol=1e-6)


def test_depth_32fc1_is_metres_view():
    m = np.array([[0.5, np.nan], [2.0, np.inf]], dtype=np.float32)
    msg = convert.numpy_to_image(m, "32FC1")
    d = convert.depth_to_meters(msg)
    np.testing.assert_array_equal(d, m)
    assert _shares_msg_buffer(d, msg)
    with pytest.raises(ConversionError, match="depth_to_meters: unsupported encoding 'rgb8'"):
        convert.depth_to_meters(convert.numpy_to_image(_random_image("rgb8"), "rgb8"))


def test_unsupported_encoding_error_text():
    msg = _raw_image("yuv422", 2, 4, 8, bytes(16))
    with pytest.raises(ConversionError) as err:
        convert.image_to_numpy(msg)
    text = str(err.value)
    assert "'yuv422'" in text and "4x2" in text and "rgb8" in text and "32FC1" in text


def test_truncated_and_inconsistent_images():
    with pytest.raises(ConversionError, match=r"truncated: 35 bytes < step 12 \* height 3 = 36"):
        convert.image_to_numpy(_raw_image("rgb8", 3, 4, 12, bytes(35)))
    with pytest.raises(ConversionError, match=r"rgb8 image step 10 < width 4 \* 3 bytes/pixel = 12"):
        convert.image_to_numpy(_raw_image("rgb8", 3, 4, 10, bytes(36)))
    with pytest.raises(ConversionError, match="empty 16UC1 image: width=0 height=3"):
        convert.image_to_numpy(_raw_image("16UC1", 3, 0, 0, b""))
    with pytest.raises(ConversionError, match="empty"):
        convert.numpy_to_image(np.zeros((0, 4), np.uint8), "mono8")


def test_compressed_without_pillow_says_so(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import ...` raise ImportError
    msg = CompressedImage(format="jpeg", data=b"\xff\xd8\xff")
    with pytest.raises(ConversionError, match="Pillow"):
        convert.compressed_image_to_rgb(msg)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_decode(fmt):
    PILImage = pytest.importorskip("PIL.Image")
    import io

    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:8, :, 0] = 200  # red top half
    rgb[8:, :, 2] = 180  # blue bottom half
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="JPEG" if fmt == "jpeg" else "PNG")
    msg = CompressedImage(format=f"rgb8; {fmt} compressed bgr8", data=buf.getvalue())
    out = convert.compressed_image_to_rgb(msg)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    if fmt == "png":
        np.testing.assert_array_equal(out, rgb)
    else:
        assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 8
    with pytest.raises(ConversionError, match="cannot decode"):
        convert.compressed_image_to_rgb(CompressedImage(format=fmt, data=b"not an image"))
    with pytest.raises(ConversionError, match="compressedDepth"):
        convert.compressed_image_to_rgb(CompressedImage(format="16UC1; compressedDepth png", data=b"x"))


# ------------------------------------------------------------------------------------ joints


def _js(names, pos, vel=()):
    return JointState(name=list(names), position=[float(p) for p in pos], velocity=[float(v) for v in vel])


def test_joint_state_reorders_by_name_and_ignores_extras():
    msg = _js(
        ["gripper", "joint3", "joint1", "joint4", "joint2"],
        [9.0, 3.0, 1.0, 4.0, 2.0],
        [-9.0, -3.0, -1.0, -4.0, -2.0],
    )
    pos, vel = convert.joint_state_to_arrays(msg, JOINTS)
    assert pos.dtype == np.float64 and vel.dtype == np.float64
    np.testing.assert_array_equal(pos, [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(vel, [-1.0, -2.0, -3.0, -4.0])
    # results are copies: mutating them must not touch the message
    pos[0] = 100.0
    assert msg.position[2] == 1.0
    # same name tuple again hits the cache and still gives fresh values
    msg.position = [9.0, 30.0, 10.0, 40.0, 20.0]
    pos2, _ = convert.joint_state_to_arrays(msg, list(JOINTS))
    np.testing.assert_array_equal(pos2, [10.0, 20.0, 30.0, 40.0])


def test_joint_state_empty_velocity_is_zeros():
    pos, vel = convert.joint_state_to_arrays(_js(JOINTS, [1, 2, 3, 4]), JOINTS)
    np.testing.assert_array_equal(vel, np.zeros(4))
    np.testing.assert_array_equal(pos, [1, 2, 3, 4])


def test_joint_state_missing_joints_listed():
    with pytest.raises(ConversionError) as err:
        convert.joint_state_to_arrays(_js(["joint1", "joint3"], [1, 3]), JOINTS)
    assert "['joint2', 'joint4']" in str(err.value)


def test_joint_state_bad_lengths_and_values():
    with pytest.raises(ConversionError, match="4 names but 3 positions"):
        convert.joint_state_to_arrays(_js(JOINTS, [1, 2, 3]), JOINTS)
    with pytest.raises(ConversionError, match="4 names but 2 velocities"):
        convert.joint_state_to_arrays(_js(JOINTS, [1, 2, 3, 4], [0, 0]), JOINTS)
    with pytest.raises(ConversionError, match="non-finite position for joint3"):
        convert.joint_state_to_arrays(_js(JOINTS, [1, 2, math.nan, 4]), JOINTS)
    with pytest.raises(ConversionError, match="non-finite velocity for joint2"):
        convert.joint_state_to_arrays(_js(JOINTS, [1, 2, 3, 4], [0, math.inf, 0, 0]), JOINTS)
    with pytest.raises(ConversionError, match="more than once"):
        convert.joint_state_to_arrays(_js(list(JOINTS) + ["joint2"], [1, 2, 3, 4, 5]), JOINTS)
    # NaN on an ignored extra joint is fine
    pos, _ = convert.joint_state_to_arrays(_js(list(JOINTS) + ["extra"], [1, 2, 3, 4, math.nan]), JOINTS)
    np.testing.assert_array_equal(pos, [1, 2, 3, 4])


def test_joint_state_out_of_range_is_rejected_with_the_joint_named():
    # 1e308 is finite in float64 but overflows float32 downstream: the decoder both nodes use refuses it.
    with pytest.raises(ConversionError, match=r"position out of range for joint2: 1e\+308 rad \(plausible"):
        convert.joint_state_to_arrays(_js(JOINTS, [1, 1e308, 3, 4]), JOINTS)
    with pytest.raises(ConversionError, match=r"velocity out of range for joint1, joint4: -2e\+03 rad/s"):
        convert.joint_state_to_arrays(_js(JOINTS, [1, 2, 3, 4], [-2000, 0, 0, 1500]), JOINTS)
    # the default bound is generous; a checkpoint's tighter observation.input_ranges applies when given
    pos, _ = convert.joint_state_to_arrays(_js(JOINTS, [1, 2, 3, 99]), JOINTS)
    assert pos[3] == 99
    with pytest.raises(ConversionError, match=r"position out of range for joint4: 99 rad \(plausible \|value\| <= 10"):
        convert.joint_state_to_arrays(_js(JOINTS, [1, 2, 3, 99]), JOINTS, InputRanges(joint_position_abs_max_rad=10))


def test_joint_state_naming_none_of_our_joints_is_another_publishers():
    # e.g. a gripper driver on /joint_states: skipped without an error, at run time and in training
    assert convert.joint_state_to_arrays(_js(["finger_left", "finger_right"], [0.01, 0.01]), JOINTS) is None
    with pytest.raises(ConversionError, match=r"missing configured joints \['joint2', 'joint3', 'joint4'\]"):
        convert.joint_state_to_arrays(_js(["joint1", "finger_left"], [0.1, 0.01]), JOINTS)


def test_runtime_and_bag_reader_share_one_decoder():
    """The nodes (rclpy messages: array.array fields) and the bag reader (rosbags messages: numpy
    fields) call the same functions, so they accept and refuse the same messages alike."""
    from types import SimpleNamespace

    from sage_hl_ros.bags import decode

    assert decode.joint_state_to_arrays is convert.joint_state_to_arrays
    assert decode.multiarray_to_numpy is convert.multiarray_to_numpy
    assert decode.DecodeError is ConversionError
    cases = [(["joint4", "joint1", "joint2", "joint3", "gripper"], [4, 1, 2, 3, 9], [0.4, 0.1, 0.2, 0.3, 0]),
             (["gripper"], [0.5], []), (["joint1"], [1.0], []), (list(JOINTS), [1, 1e308, 3, 4], [])]
    for names, pos, vel in cases:
        ros = _js(names, pos, vel)
        bag = SimpleNamespace(name=list(names), position=np.array(pos, dtype=np.float64),
                              velocity=np.array(vel, dtype=np.float64))
        outcomes = []
        for msg in (ros, bag):
            try:
                out = convert.joint_state_to_arrays(msg, JOINTS)
                outcomes.append(None if out is None else np.concatenate(out).tolist())
            except ConversionError as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1], (names, outcomes)
    ros = convert.numpy_to_float32_multiarray(np.arange(4.0), "taxels")
    bag = SimpleNamespace(data=np.arange(4.0, dtype=np.float32), layout=ros.layout)
    for msg in (ros, bag):
        out = convert.multiarray_to_numpy(msg, expected_size=4)
        assert out.dtype == np.float32 and out.tolist() == [0, 1, 2, 3]


# ------------------------------------------------------------------------------------ multiarrays


def test_multiarray_round_trip_and_layout():
    a = RNG.standard_normal(12).astype(np.float32)
    msg = convert.numpy_to_float32_multiarray(a, "samples")
    assert [(d.label, d.size, d.stride) for d in msg.layout.dim] == [("samples", 12, 12)]
    out = convert.multiarray_to_numpy(msg, expected_size=12)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, a)
    # 2-D tactile array flattens row-major
    t = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(
        convert.multiarray_to_numpy(convert.numpy_to_float32_multiarray(t, "taxels")), t.ravel()
    )
    # rows x cols layout with a data_offset
    m = Float32MultiArray()
    m.layout.dim = [
        MultiArrayDimension(label="rows", size=2, stride=6),
        MultiArrayDimension(label="cols", size=3),
    ]
    m.layout.data_offset = 2
    m.data = [-1.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    np.testing.assert_array_equal(convert.multiarray_to_numpy(m, 6), np.arange(6))
    # float64, no layout
    d = Float64MultiArray(data=[1.0, 2.0])
    out64 = convert.multiarray_to_numpy(d)
    assert out64.dtype == np.float64 and out64.tolist() == [1.0, 2.0]


def test_multiarray_errors():
    m = Float32MultiArray()
    m.layout.dim = [MultiArrayDimension(label="rows", size=2), MultiArrayDimension(label="cols", size=3)]
    m.data = [0.0] * 5
    with pytest.raises(ConversionError, match="rows=2 x cols=3 holds 6 values but data has 5"):
        convert.multiarray_to_numpy(m)
    with pytest.raises(ConversionError, match="has 3 values, expected 4"):
        convert.multiarray_to_numpy(Float32MultiArray(data=[0.0] * 3), expected_size=4)
    with pytest.raises(ConversionError, match="non-finite values at indices \\[1\\]"):
        convert.multiarray_to_numpy(Float64MultiArray(data=[0.0, math.nan, 1.0]))
    bad = Float32MultiArray(data=[0.0])
    bad.layout.data_offset = 3
    with pytest.raises(ConversionError, match="data_offset 3 > data length 1"):
        convert.multiarray_to_numpy(bad)


# ------------------------------------------------------------------------------------ latent / time


def test_latent_round_trip_and_stamp():
    z = RNG.standard_normal(256)  # float64 in, float32 on the wire
    stamp = Time(sec=12, nanosec=345_000_000)
    msg = convert.latent_to_msg(z, stamp)
    assert (msg.encoding, msg.height, msg.width, msg.step) == ("32FC1", 1, 256, 1024)
    assert msg.header.frame_id == "sage"
    assert convert.stamp_to_seconds(msg.header.stamp) == pytest.approx(12.345)
    out = convert.msg_to_latent(msg, expected_dim=256)
    assert out.shape == (256,) and out.dtype == np.float32
    np.testing.assert_array_equal(out, z.astype(np.float32))
    assert _shares_msg_buffer(out, msg)


def test_latent_validation():
    good = convert.latent_to_msg(np.zeros(8, np.float32), None)
    with pytest.raises(ConversionError, match="expected 256"):
        convert.msg_to_latent(good, expected_dim=256)
    img = convert.numpy_to_image(np.zeros((2, 4), np.float32), "32FC1")
    with pytest.raises(ConversionError, match="height 1, got 2"):
        convert.msg_to_latent(img)
    with pytest.raises(ConversionError, match="must be 32FC1, got 'mono8'"):
        convert.msg_to_latent(convert.numpy_to_image(np.zeros((1, 4), np.uint8), "mono8"))
    nan = convert.numpy_to_image(np.array([[0.0, np.nan]], np.float32), "32FC1")
    with pytest.raises(ConversionError, match="non-finite"):
        convert.msg_to_latent(nan)
    with pytest.raises(ConversionError, match="non-finite"):
        convert.latent_to_msg(np.array([np.inf]), None)
    short = Image(encoding="32FC1", height=1, width=4, step=16, data=bytes(12))
    with pytest.raises(ConversionError, match="truncated"):
        convert.msg_to_latent(short)


def test_stamp_conversions():
    for t in (0.0, 1.5, 1_700_000_000.123456, 12.999999999_9, -0.25):
        s = convert.seconds_to_stamp(t)
        assert 0 <= s.nanosec < 1_000_000_000
        assert convert.stamp_to_seconds(s) == pytest.approx(t, abs=1e-6)
    assert convert.seconds_to_stamp(2.25) == Time(sec=2, nanosec=250_000_000)
    assert convert.seconds_to_stamp(-0.25) == Time(sec=-1, nanosec=750_000_000)
    with pytest.raises(ConversionError):
        convert.seconds_to_stamp(math.nan)


# ------------------------------------------------------------------------------------ commands


def test_position_array_msg():
    msg = commands.position_array_msg(np.array([0.1, -0.2, 0.3]))
    assert isinstance(msg, Float64MultiArray)
    assert list(msg.data) == [0.1, -0.2, 0.3]
    assert list(commands.position_array_msg(np.arange(3, dtype=np.float32)).data) == [0.0, 1.0, 2.0]


def test_joint_trajectory_msg():
    stamp = Time(sec=5, nanosec=6)
    msg = commands.joint_trajectory_msg(
        JOINTS, np.array([1.0, 2, 3, 4]), np.array([0.1, 0.2, 0.3, 0.4]), stamp, 0.25
    )
    assert isinstance(msg, JointTrajectory)
    assert list(msg.joint_names) == list(JOINTS)
    assert msg.header.stamp == stamp
    (pt,) = msg.points
    assert list(pt.positions) == [1.0, 2.0, 3.0, 4.0]
    assert list(pt.velocities) == [0.1, 0.2, 0.3, 0.4]
    assert (pt.time_from_start.sec, pt.time_from_start.nanosec) == (0, 250_000_000)
    msg = commands.joint_trajectory_msg(JOINTS, np.zeros(4), None, stamp, 1.5)
    assert len(msg.points[0].velocities) == 0 and msg.points[0].time_from_start.sec == 1
    with pytest.raises(ValueError, match="positions has 3 values for 4 joints"):
        commands.joint_trajectory_msg(JOINTS, np.zeros(3), None, stamp, 0.1)
    with pytest.raises(ValueError, match="velocities has 2 values"):
        commands.joint_trajectory_msg(JOINTS, np.zeros(4), np.zeros(2), stamp, 0.1)
    with pytest.raises(ValueError, match="time_from_start_s"):
        commands.joint_trajectory_msg(JOINTS, np.zeros(4), None, stamp, -1.0)
    # An action chunk: the command, then the look-ahead points preview_dt_s apart.
    ahead = np.arange(8.0).reshape(2, 4)
    msg = commands.joint_trajectory_msg(JOINTS, np.zeros(4), np.zeros(4), None, 0.02, ahead, -ahead, 0.05)
    assert [list(p.positions) for p in msg.points] == [[0.0] * 4, list(ahead[0]), list(ahead[1])]
    assert list(msg.points[2].velocities) == list(-ahead[1])
    assert [p.time_from_start.nanosec for p in msg.points] == [20_000_000, 70_000_000, 120_000_000]
    with pytest.raises(ValueError, match="preview_dt_s"):
        commands.joint_trajectory_msg(JOINTS, np.zeros(4), None, None, 0.02, ahead, None, 0.0)


def test_joint_state_command_msg():
    stamp = Time(sec=1, nanosec=2)
    msg = commands.joint_state_command_msg(JOINTS, np.array([4.0, 3, 2, 1]), stamp)
    assert isinstance(msg, JointState)
    assert list(msg.name) == list(JOINTS) and list(msg.position) == [4.0, 3.0, 2.0, 1.0]
    assert msg.header.stamp == stamp and len(msg.velocity) == 0
    # what the robot side would decode: same joint order, by name
    pos, _ = convert.joint_state_to_arrays(msg, JOINTS[::-1])
    np.testing.assert_array_equal(pos, [1.0, 2.0, 3.0, 4.0])


def test_command_topic_and_type():
    assert commands.COMMAND_INTERFACES == ("position_array", "joint_trajectory", "joint_state")
    # Relative: a namespaced node commands its own robot's controller.
    assert commands.command_topic("position_array", "arm_controller") == "arm_controller/commands"
    assert commands.command_topic("joint_trajectory", "arm_controller") == "arm_controller/joint_trajectory"
    assert commands.command_topic("joint_state", "arm_controller") == "joint_command"
    assert commands.command_topic("joint_state", "x", joint_command_topic="/isaac/cmd") == "/isaac/cmd"
    assert commands.command_msg_type("position_array") is Float64MultiArray
    assert commands.command_msg_type("joint_trajectory") is JointTrajectory
    assert commands.command_msg_type("joint_state") is JointState
    for fn in (lambda: commands.command_topic("effort", "c"), lambda: commands.command_msg_type("effort")):
        with pytest.raises(ValueError) as err:
            fn()
        assert "'effort'" in str(err.value) and "position_array, joint_trajectory, joint_state" in str(
            err.value
        )


# ------------------------------------------------------------------------------------ diagnostics


def test_rolling_stats_matches_numpy():
    s = diagnostics.RollingStats(capacity=100)
    assert math.isnan(s.percentile(50)) and s.summary()["count"] == 0
    buf = s._buf
    values = RNG.exponential(2.0, size=250)
    for v in values:
        s.add(float(v))
    assert s._buf is buf  # ring buffer reused, never reallocated
    window = values[-100:]  # only the last `capacity` values count
    for q in (0, 10, 50, 90, 99, 100):
        assert s.percentile(q) == pytest.approx(np.percentile(window, q))
    summ = s.summary()
    assert summ["count"] == 100
    assert summ["p50"] == pytest.approx(np.percentile(window, 50))
    assert summ["p99"] == pytest.approx(np.percentile(window, 99))
    assert summ["max"] == pytest.approx(window.max())
    assert summ["mean"] == pytest.approx(window.mean())
    s.clear()
    assert math.isnan(s.summary()["p99"])
    s.add(3.0)
    assert s.summary() == {"count": 1, "p50": 3.0, "p99": 3.0, "max": 3.0, "mean": 3.0}


def test_rate_meter():
    m = diagnostics.RateMeter()
    assert m.read_hz(0.0) == 0.0  # nothing yet; window now starts at 0
    for i in range(1, 101):
        m.tick(i * 0.01)  # 100 Hz for 1 s
    assert m.read_hz(1.0) == pytest.approx(100.0)
    assert m.read_hz(1.5) == 0.0  # no ticks in the new window
    for i in range(25):
        m.tick(1.5 + i * 0.02)
    assert m.read_hz(2.0) == pytest.approx(50.0)
    assert m.read_hz(2.0) == 0.0  # zero-length window
    # first tick marks the window start when no start is given
    m2 = diagnostics.RateMeter()
    for i in range(11):
        m2.tick(10.0 + i * 0.002)  # 500 Hz
    assert m2.read_hz(10.02) == pytest.approx(500.0)
    m3 = diagnostics.RateMeter(start_s=0.0)
    m3.tick(0.5)
    m3.tick(1.0)
    assert m3.read_hz(1.0) == pytest.approx(2.0)


def test_status_levels_and_values():
    expected = {
        "ok": DiagnosticStatus.OK,
        "warn": DiagnosticStatus.WARN,
        "error": DiagnosticStatus.ERROR,
        "stale": DiagnosticStatus.STALE,
    }
    for level, code in expected.items():
        st = diagnostics.status("sage/l_loop", level, "msg", {})
        assert st.level == code and st.name == "sage/l_loop" and st.message == "msg"
        assert st.hardware_id == "sage_hl_ros"
    st = diagnostics.status(
        "x", "ok", "", {"rate_hz": 499.87654321, "count": 12, "enabled": True, "p99_ms": np.float32(1.25e-4)}
    )
    kv = {k.key: k.value for k in st.values}
    assert kv == {"rate_hz": "499.9", "count": "12", "enabled": "true", "p99_ms": "0.000125"}
    with pytest.raises(ValueError, match="unknown diagnostic level 'fatal'"):
        diagnostics.status("x", "fatal", "", {})
    arr = diagnostics.diagnostic_array(Time(sec=7), [st, st])
    assert arr.header.stamp.sec == 7 and len(arr.status) == 2


# ------------------------------------------------------------------------------------ qos (real node)


@pytest.fixture(scope="module")
def ros_context():
    rclpy = pytest.importorskip("rclpy")
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=77)
    yield ctx
    ctx.try_shutdown()


def _node(ctx, name, overrides=()):
    from rclpy.node import Node

    return Node(name, context=ctx, parameter_overrides=list(overrides))


def test_declare_qos_presets(ros_context):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy

    from sage_hl_ros.ros.qos import QOS_PRESETS, declare_qos

    node = _node(ros_context, "qos_presets")
    try:
        expected = {
            "sensor": (ReliabilityPolicy.BEST_EFFORT, 5, DurabilityPolicy.VOLATILE),
            "reliable": (ReliabilityPolicy.RELIABLE, 10, DurabilityPolicy.VOLATILE),
            "status": (ReliabilityPolicy.RELIABLE, 1, DurabilityPolicy.TRANSIENT_LOCAL),
            "command": (ReliabilityPolicy.RELIABLE, 1, DurabilityPolicy.VOLATILE),
        }
        assert set(QOS_PRESETS) == set(expected)
        for preset, (rel, depth, dur) in expected.items():
            q = declare_qos(node, f"t_{preset}", preset)
            assert (q.reliability, q.depth, q.durability, q.history) == (
                rel,
                depth,
                dur,
                HistoryPolicy.KEEP_LAST,
            )
            assert node.get_parameter(f"qos.t_{preset}.depth").value == depth
        # declaring the same name twice reuses the parameters instead of raising
        assert declare_qos(node, "t_sensor", "sensor").depth == 5
        with pytest.raises(ValueError, match="unknown QoS preset 'fast'"):
            declare_qos(node, "x", "fast")
    finally:
        node.destroy_node()


def test_declare_qos_overrides_and_errors(ros_context):
    from rclpy.parameter import Parameter
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    from sage_hl_ros.ros.qos import declare_qos

    node = _node(
        ros_context,
        "qos_overrides",
        [
            Parameter("qos.camera.reliability", Parameter.Type.STRING, "reliable"),
            Parameter("qos.camera.depth", Parameter.Type.INTEGER, 2),
            Parameter("qos.camera.durability", Parameter.Type.STRING, "transient_local"),
            Parameter("qos.bad_rel.reliability", Parameter.Type.STRING, "sometimes"),
            Parameter("qos.bad_depth.depth", Parameter.Type.INTEGER, 0),
            Parameter("qos.bad_type.depth", Parameter.Type.STRING, "five"),
        ],
    )
    try:
        q = declare_qos(node, "camera", "sensor")
        assert (q.reliability, q.depth, q.durability) == (
            ReliabilityPolicy.RELIABLE,
            2,
            DurabilityPolicy.TRANSIENT_LOCAL,
        )
        with pytest.raises(ValueError, match=r"'qos\.bad_rel\.reliability' is 'sometimes'"):
            declare_qos(node, "bad_rel", "sensor")
        with pytest.raises(ValueError, match=r"'qos\.bad_depth\.depth' must be an integer >= 1"):
            declare_qos(node, "bad_depth", "sensor")
        with pytest.raises(ValueError, match=r"qos\.bad_type\.depth"):
            declare_qos(node, "bad_type", "sensor")
    finally:
        node.destroy_node()


def test_the_synthetic_jpeg_camera_decodes_like_a_real_one():
    from sensor_msgs.msg import CompressedImage

    from sage_hl_ros.msg_arrays import compressed_image_to_rgb
    from sage_hl_ros.ros.synthetic_sensors_node import _jpeg

    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:, :12, 0] = 200
    out = compressed_image_to_rgb(CompressedImage(format="jpeg", data=_jpeg(rgb)))
    assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).max() < 40  # JPEG is lossy
