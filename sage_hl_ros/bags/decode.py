"""rosbags message objects -> numpy, for reading recorded bags without rclpy.

Same conventions and the same image/multi-array code as the runtime (``sage_hl_ros.msg_arrays``,
duck-typed over both message flavours): images in rgb8/bgr8/rgba8/bgra8/mono8 (+ row padding ``step`` and
``is_bigendian``), depth ``16UC1``/``mono16`` in millimetres (0 = invalid -> NaN) or ``32FC1`` in
metres, audio and tactile as ``std_msgs/Float32MultiArray`` (validated against ``layout``), joint
states matched by ``name[]`` (a message missing a configured joint is rejected, never shifted).

rosbags deserialises into its own dataclasses whose array fields are numpy arrays viewing the raw
message buffer; the functions below return views where they can and copies where they must.

Time: stamped types (Image, CompressedImage, JointState, JointTrajectory) are placed by their
header stamp; unstamped types (Float32/64MultiArray, String) by the bag's receive timestamp. A zero
header stamp means "not stamped" and falls back to the receive time, as the runtime cache does.

Errors: decoding problems raise ``DecodeError`` (what is wrong with the message); the dataset
wraps them into ``BagError``, whose text names the bag, the topic and the message position.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from ..core.config import InputRanges
from ..msg_arrays import (
    DEFAULT_INPUT_RANGES,
    IMAGE_ENCODINGS,
    ConversionError,
    compressed_image_to_rgb,
    depth_to_meters,
    image_to_numpy,
    image_to_rgb,
    joint_index,
    joint_state_to_arrays,
    multiarray_to_numpy,
)
from .errors import BagError  # re-exported: readers catch it from here

__all__ = [
    "BagError",
    "DecodeError",
    "IMAGE_ENCODINGS",
    "STAMPED_TYPES",
    "cdr_header_stamp_ns",
    "classify",
    "command_positions",
    "compressed_image_to_rgb",
    "depth_to_meters",
    "deserialize",
    "image_to_numpy",
    "image_to_rgb",
    "joint_state_to_arrays",
    "multiarray_to_numpy",
    "stamp_ns",
    "trajectory_chunk",
]


DecodeError = ConversionError  # a message that cannot become numpy; the same class the runtime raises


# Reason categories used in skip counters (first keyword match in the problem text).
_CATEGORIES = (
    ("deserialize", "corrupt"),
    ("encoding", "wrong_encoding"),
    ("missing configured joints", "missing_joint"),
    ("more than once", "duplicate_joint"),
    ("non-finite", "non_finite"),
    ("marker", "bad_marker"),
    ("decode", "decode_error"),
    ("expected", "wrong_size"),
    ("truncated", "truncated"),
)


def classify(problem: str) -> str:
    """Short category of a decode problem (``corrupt``, ``missing_joint``, ...; else ``malformed``)."""
    low = problem.lower()
    for keyword, category in _CATEGORIES:
        if keyword in low:
            return category
    return "malformed"


# Types whose first field is std_msgs/Header (stamp placed by header); all others use receive time.
STAMPED_TYPES = frozenset({
    "sensor_msgs/msg/Image",
    "sensor_msgs/msg/CompressedImage",
    "sensor_msgs/msg/JointState",
    "trajectory_msgs/msg/JointTrajectory",
})

# --------------------------------------------------------------------------- raw CDR / time


def deserialize(typestore, raw: bytes | memoryview, msgtype: str) -> tuple[object, bool]:
    """(message, had_trailing_bytes). Raises DecodeError on corrupt data.

    Strict first (rosbags checks the size); if only the size check fails, decode leniently: a
    recorder that used ``serialize_message`` may have appended a few garbage bytes (DESIGN §6) and
    the message itself is intact.
    """
    try:
        return typestore.deserialize_cdr(raw, msgtype), False
    except Exception as exc:  # SerdeError, but corrupt bytes can surface as anything
        text = str(exc)
        if "size mismatch" in text:
            try:
                msgdef = typestore.get_msgdef(msgtype)
                func = msgdef.deserialize_cdr_le if bytes(raw[1:2]) == b"\x01" else msgdef.deserialize_cdr_be
                msg, _ = func(raw[4:], 0, msgdef.cls, typestore)
                return msg, True
            except Exception:  # noqa: BLE001 - report the strict error below
                pass
        raise DecodeError(f"cannot deserialize {msgtype} ({len(raw)} bytes): {text or type(exc).__name__}") from None


def cdr_header_stamp_ns(raw: bytes | memoryview) -> int:
    """Header stamp (ns) of a serialized stamped message, read from the first 12 bytes.

    Lets the dataset place images in time without deserialising (or copying) their pixels.
    """
    if len(raw) < 12:
        raise DecodeError(f"message truncated: {len(raw)} bytes, a header needs at least 12")
    enc = bytes(raw[0:2])
    if enc == b"\x00\x01":
        sec, nsec = struct.unpack_from("<iI", raw, 4)
    elif enc == b"\x00\x00":
        sec, nsec = struct.unpack_from(">iI", raw, 4)
    else:
        raise DecodeError(f"cannot deserialize header: invalid CDR encapsulation {enc.hex()}")
    return sec * 1_000_000_000 + nsec


def stamp_ns(msg) -> int:
    """Header stamp of a stamped rosbags message in integer nanoseconds (0 = not stamped)."""
    s = msg.header.stamp
    return int(s.sec) * 1_000_000_000 + int(s.nanosec)


# --------------------------------------------------------------------------- images


def command_positions(msg, msgtype: str, joint_names: Sequence[str],
                      ranges: InputRanges = DEFAULT_INPUT_RANGES) -> np.ndarray | None:
    """Commanded absolute joint positions (J,) float64 in configured order, or None (not our joints).

    - ``std_msgs/Float64MultiArray``: already in configured joint order (ros2_control forward
      controllers take ``data`` in the controller's joint order); its size must equal J.
    - ``sensor_msgs/JointState`` (Isaac Sim ``/joint_command``, teacher labels): by ``name[]``.
    - ``trajectory_msgs/JointTrajectory``: the first point's positions, by ``joint_names[]``.
    """
    if msgtype == "std_msgs/msg/Float64MultiArray":
        return np.asarray(multiarray_to_numpy(msg, expected_size=len(joint_names)), dtype=np.float64)
    if msgtype == "sensor_msgs/msg/JointState":
        out = joint_state_to_arrays(msg, joint_names, ranges)
        return None if out is None else out[0]
    if msgtype == "trajectory_msgs/msg/JointTrajectory":
        if not msg.points:
            raise DecodeError("JointTrajectory has no points")
        names = list(msg.joint_names)
        positions = np.asarray(msg.points[0].positions, dtype=np.float64)
        if positions.size != len(names):
            raise DecodeError(f"JointTrajectory has {len(names)} joint_names but {positions.size} positions")
        idx = joint_index(names, joint_names, "JointTrajectory")
        if idx is None:
            return None
        pos = positions[idx]
        if not np.isfinite(pos).all():
            bad = [joint_names[i] for i in np.flatnonzero(~np.isfinite(pos))]
            raise DecodeError(f"non-finite position for {', '.join(bad)}")
        return pos
    raise DecodeError(f"unsupported command type {msgtype}")


def trajectory_chunk(msg, joint_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """A teacher's action chunk (``trajectory_msgs/JointTrajectory``, e.g. GR00T's on
    ``/teacher/joint_trajectory``): ``(time_from_start (P,) float64 s, positions (P, J) float64)``
    in configured joint order by ``joint_names[]``, or None (not our joints). Times must rise
    strictly (they are the time axis the chunk is resampled on) and positions be finite."""
    if not msg.points:
        raise DecodeError("JointTrajectory has no points")
    names = list(msg.joint_names)
    idx = joint_index(names, joint_names, "JointTrajectory")
    if idx is None:
        return None
    times = np.array([int(p.time_from_start.sec) + int(p.time_from_start.nanosec) * 1e-9 for p in msg.points])
    rows = []
    for i, point in enumerate(msg.points):
        positions = np.asarray(point.positions, dtype=np.float64)
        if positions.size != len(names):
            raise DecodeError(f"JointTrajectory point {i} has {positions.size} positions for {len(names)} joint_names")
        rows.append(positions[idx])
    pos = np.array(rows)
    if not np.isfinite(pos).all():
        bad = sorted({joint_names[c] for c in np.flatnonzero(~np.isfinite(pos).all(0))})
        raise DecodeError(f"non-finite position for {', '.join(bad)}")
    if times.size > 1 and not (np.diff(times) > 0).all():
        raise DecodeError("JointTrajectory time_from_start must rise strictly from point to point")
    return times, pos
