"""rosbags message objects -> numpy, for reading recorded bags without rclpy.

Same conventions as the runtime's ``sage_hl_ros.ros.convert`` (which needs rclpy message types and
so is not imported here): images in rgb8/bgr8/rgba8/bgra8/mono8 (+ row padding ``step`` and
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

import io
import math
import struct
from collections.abc import Sequence

import numpy as np

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
]


from .errors import BagError  # noqa: E402  (re-exported: readers catch it from here)


class DecodeError(ValueError):
    """A message could not be turned into numpy; the text says what was wrong."""


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

# encoding -> (element dtype, channels). Little-endian; is_bigendian flips multi-byte dtypes.
IMAGE_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype("<u2"), 1),
    "16UC1": (np.dtype("<u2"), 1),
    "32FC1": (np.dtype("<f4"), 1),
}
_RGB_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
_DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")


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


def _as_u8(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.view(np.uint8) if data.dtype.itemsize == 1 else data.astype(np.uint8)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8)


def image_to_numpy(msg) -> np.ndarray:
    """View of ``msg.data`` as (H, W, C), or (H, W) for one channel; honours ``step`` and endianness."""
    enc = msg.encoding
    if enc not in IMAGE_ENCODINGS:
        raise DecodeError(
            f"unsupported image encoding {enc!r} ({msg.width}x{msg.height}); "
            f"supported: {', '.join(IMAGE_ENCODINGS)}"
        )
    dtype, channels = IMAGE_ENCODINGS[enc]
    if msg.is_bigendian and dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    bpp = dtype.itemsize * channels
    if height == 0 or width == 0:
        raise DecodeError(f"empty {enc} image: width={width} height={height}")
    if step < width * bpp:
        raise DecodeError(f"{enc} image step {step} < width {width} * {bpp} bytes/pixel = {width * bpp}")
    buf = _as_u8(msg.data)
    if buf.size < step * height:
        raise DecodeError(
            f"{enc} image data truncated: {buf.size} bytes < step {step} * height {height} = {step * height}"
        )
    if channels == 1:
        shape, strides = (height, width), (step, dtype.itemsize)
    else:
        shape, strides = (height, width, channels), (step, bpp, dtype.itemsize)
    return np.ndarray(shape=shape, dtype=dtype, buffer=buf, offset=0, strides=strides)


def image_to_rgb(msg) -> np.ndarray:
    """(H, W, 3) uint8 RGB: a view for rgb8/rgba8, a C-contiguous copy for bgr8/bgra8/mono8."""
    if msg.encoding not in _RGB_ENCODINGS:
        raise DecodeError(
            f"image_to_rgb: unsupported encoding {msg.encoding!r} ({msg.width}x{msg.height}); "
            f"supported: {', '.join(_RGB_ENCODINGS)}"
        )
    arr = image_to_numpy(msg)
    enc = msg.encoding
    if enc == "rgb8":
        return arr
    if enc == "rgba8":
        return arr[..., :3]
    if enc == "bgr8":
        return np.ascontiguousarray(arr[..., ::-1])
    if enc == "bgra8":
        return np.ascontiguousarray(arr[..., 2::-1])
    return np.repeat(arr[..., None], 3, axis=2)  # mono8


def depth_to_meters(msg) -> np.ndarray:
    """(H, W) float32 metres; 16UC1/mono16 millimetres with 0 = invalid -> NaN (REP 118)."""
    if msg.encoding not in _DEPTH_ENCODINGS:
        raise DecodeError(
            f"depth_to_meters: unsupported encoding {msg.encoding!r} ({msg.width}x{msg.height}); "
            f"supported: {', '.join(_DEPTH_ENCODINGS)}"
        )
    arr = image_to_numpy(msg)
    if msg.encoding == "32FC1":
        return arr.astype(np.float32, copy=False)
    out = arr.astype(np.float32)
    out *= np.float32(0.001)
    out[arr == 0] = np.nan
    return out


def compressed_image_to_rgb(msg) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a JPEG/PNG ``CompressedImage`` (Pillow, imported lazily)."""
    try:
        from PIL import Image as PILImage
    except ImportError as exc:
        raise DecodeError("compressed images need Pillow, which is not installed (pip install Pillow)") from exc
    fmt = msg.format or ""
    if "compresseddepth" in fmt.lower():
        raise DecodeError(f"compressedDepth images are not supported (format {fmt!r})")
    data = _as_u8(msg.data).tobytes()
    if not data:
        raise DecodeError(f"empty compressed image (format {fmt!r})")
    try:
        with PILImage.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
    except Exception as exc:  # Pillow raises OSError, ValueError, DecompressionBombError...
        raise DecodeError(f"cannot decode compressed image (format {fmt!r}, {len(data)} bytes): {exc}") from exc
    return np.asarray(rgb, dtype=np.uint8)


# --------------------------------------------------------------------------- arrays and joints


def multiarray_to_numpy(msg, expected_size: int | None = None) -> np.ndarray:
    """1-D view of ``data[data_offset:]`` of a Float32/Float64MultiArray, checked against its layout."""
    data = np.asarray(msg.data)
    if data.dtype.kind != "f":
        raise DecodeError(f"multiarray data has dtype {data.dtype}, expected float")
    offset = int(msg.layout.data_offset)
    if offset > data.size:
        raise DecodeError(f"multiarray data_offset {offset} > data length {data.size}")
    data = data[offset:]
    dims = msg.layout.dim
    if dims:
        prod = math.prod(int(d.size) for d in dims)
        if prod != data.size:
            shape = " x ".join(f"{d.label or '?'}={d.size}" for d in dims)
            raise DecodeError(
                f"multiarray layout {shape} holds {prod} values but data has {data.size}"
                + (f" after data_offset {offset}" if offset else "")
            )
    if expected_size is not None and data.size != expected_size:
        raise DecodeError(f"multiarray has {data.size} values, expected {expected_size}")
    if not np.isfinite(data).all():
        raise DecodeError(
            f"multiarray has non-finite values at indices {np.flatnonzero(~np.isfinite(data))[:8].tolist()}"
        )
    return data


def _name_index(names: Sequence[str], joint_names: Sequence[str], what: str) -> np.ndarray | None:
    """Index of each configured joint in ``names``; None if the message names none of them."""
    where: dict[str, int] = {}
    dupes = set()
    for i, n in enumerate(names):
        if n in where:
            dupes.add(n)
        where[n] = i
    missing = [n for n in joint_names if n not in where]
    if len(missing) == len(joint_names):
        return None  # another publisher's joints (e.g. a gripper driver): not ours
    if missing:
        raise DecodeError(f"{what} is missing configured joints {missing} (message has {list(names)})")
    ambiguous = [n for n in joint_names if n in dupes]
    if ambiguous:
        raise DecodeError(f"{what} names configured joints more than once: {ambiguous}")
    return np.fromiter((where[n] for n in joint_names), dtype=np.intp, count=len(joint_names))


def joint_state_to_arrays(msg, joint_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(positions, velocities) float64 in ``joint_names`` order, matched by name.

    None when the message names none of the configured joints (a different publisher on the same
    topic); a message naming some but not all of them is rejected. Empty velocity -> zeros.
    """
    names = list(msg.name)
    n = len(names)
    position = np.asarray(msg.position, dtype=np.float64)
    velocity = np.asarray(msg.velocity, dtype=np.float64)
    if position.size != n:
        raise DecodeError(f"JointState has {n} names but {position.size} positions")
    if velocity.size not in (0, n):
        raise DecodeError(f"JointState has {n} names but {velocity.size} velocities")
    idx = _name_index(names, joint_names, "JointState")
    if idx is None:
        return None
    pos = position[idx]
    if not np.isfinite(pos).all():
        bad = [joint_names[i] for i in np.flatnonzero(~np.isfinite(pos))]
        raise DecodeError(f"non-finite position for {', '.join(bad)}")
    if velocity.size == 0:
        vel = np.zeros(len(idx), dtype=np.float64)
    else:
        vel = velocity[idx]
        if not np.isfinite(vel).all():
            bad = [joint_names[i] for i in np.flatnonzero(~np.isfinite(vel))]
            raise DecodeError(f"non-finite velocity for {', '.join(bad)}")
    return pos, vel


def command_positions(msg, msgtype: str, joint_names: Sequence[str]) -> np.ndarray | None:
    """Commanded absolute joint positions (J,) float64 in configured order, or None (not our joints).

    - ``std_msgs/Float64MultiArray``: already in configured joint order (ros2_control forward
      controllers take ``data`` in the controller's joint order); its size must equal J.
    - ``sensor_msgs/JointState`` (Isaac Sim ``/joint_command``, teacher labels): by ``name[]``.
    - ``trajectory_msgs/JointTrajectory``: the first point's positions, by ``joint_names[]``.
    """
    if msgtype == "std_msgs/msg/Float64MultiArray":
        return np.asarray(multiarray_to_numpy(msg, expected_size=len(joint_names)), dtype=np.float64)
    if msgtype == "sensor_msgs/msg/JointState":
        out = joint_state_to_arrays(msg, joint_names)
        return None if out is None else out[0]
    if msgtype == "trajectory_msgs/msg/JointTrajectory":
        if not msg.points:
            raise DecodeError("JointTrajectory has no points")
        names = list(msg.joint_names)
        positions = np.asarray(msg.points[0].positions, dtype=np.float64)
        if positions.size != len(names):
            raise DecodeError(f"JointTrajectory has {len(names)} joint_names but {positions.size} positions")
        idx = _name_index(names, joint_names, "JointTrajectory")
        if idx is None:
            return None
        pos = positions[idx]
        if not np.isfinite(pos).all():
            bad = [joint_names[i] for i in np.flatnonzero(~np.isfinite(pos))]
            raise DecodeError(f"non-finite position for {', '.join(bad)}")
        return pos
    raise DecodeError(f"unsupported command type {msgtype}")
