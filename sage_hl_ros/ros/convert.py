"""ROS message <-> numpy conversion without cv_bridge (not pip-installable).

Only standard messages cross the robot/sim boundary (DESIGN.md section 4), so the layouts
below are conventions of this package, documented here once:

- Images: ``sensor_msgs/Image`` in one of ``IMAGE_ENCODINGS``; rows may be padded (``step``).
  Depth is ``16UC1``/``mono16`` in millimetres (0 = invalid) or ``32FC1`` in metres.
- Audio frames: ``std_msgs/Float32MultiArray``, one dim labelled ``"samples"``, PCM float32 in
  [-1, 1], mono, at the configured sample rate.
- Tactile arrays: ``std_msgs/Float32MultiArray``, one dim labelled ``"taxels"`` (or two dims
  rows x cols, flattened row-major).
- Latent z (256-D): ``sensor_msgs/Image``, encoding ``"32FC1"``, height 1, width D. A standard
  type that carries a header (the stamp of the observation z came from) and a zero-copy float32
  payload, so no custom .msg is needed.
- Joint states are matched by ``name[]``, never by array position.

Array fields are filled with ``array.array`` objects built from the raw bytes: assigning an
ndarray goes through a per-element Python check (~800x slower), and Humble's generated setters
also check every element of ``bytes`` (only Kilted skips that); an ``array.array`` of the right
typecode is the one fast path on both. Readers return views on the message buffer where they can.
"""

from __future__ import annotations

import math
from array import array as _pyarray

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image
from std_msgs.msg import Float32MultiArray, MultiArrayDimension

from ..msg_arrays import (  # one decoder for the runtime and the bag reader; re-exported here
    IMAGE_ENCODINGS,
    ConversionError,
    compressed_image_to_rgb,
    depth_to_meters,
    image_to_numpy,
    image_to_rgb,
    joint_state_to_arrays,
    multiarray_to_numpy,
)

__all__ = [
    "ConversionError",
    "IMAGE_ENCODINGS",
    "image_to_numpy",
    "image_to_rgb",
    "depth_to_meters",
    "compressed_image_to_rgb",
    "numpy_to_image",
    "joint_state_to_arrays",
    "multiarray_to_numpy",
    "numpy_to_float32_multiarray",
    "latent_to_msg",
    "msg_to_latent",
    "stamp_to_seconds",
    "seconds_to_stamp",
]


# --------------------------------------------------------------------------- helpers


def _u8_array(arr: np.ndarray) -> _pyarray:
    """array('B') copy of a C-contiguous array in one memcpy (the setters' fast path)."""
    out = _pyarray("B")
    out.frombytes(memoryview(arr.reshape(-1).view(np.uint8)))
    return out


def _to_stamp(stamp) -> Time:
    """Accept a builtin_interfaces Time, an rclpy Time (has to_msg), float seconds or None (zero)."""
    if stamp is None:
        return Time()
    if isinstance(stamp, Time):
        return stamp
    to_msg = getattr(stamp, "to_msg", None)
    if to_msg is not None:
        return to_msg()
    if isinstance(stamp, (int, float, np.floating, np.integer)):
        return seconds_to_stamp(float(stamp))
    raise ConversionError(f"cannot use {type(stamp).__name__} as a stamp")


# --------------------------------------------------------------------------- images


def numpy_to_image(array: np.ndarray, encoding: str, stamp=None, frame_id: str = "") -> Image:
    """Build an Image (little-endian, unpadded). The dtype must match the encoding exactly,
    so a silent float64 -> uint8 wrap-around cannot happen; convert explicitly first."""
    if encoding not in IMAGE_ENCODINGS:
        raise ConversionError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(IMAGE_ENCODINGS)}"
        )
    dtype, channels = IMAGE_ENCODINGS[encoding]
    arr = np.asarray(array)
    if arr.dtype.kind != dtype.kind or arr.dtype.itemsize != dtype.itemsize:
        raise ConversionError(f"{encoding} needs dtype {dtype.name}, got {arr.dtype}")
    if channels == 1 and arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    expected_ndim = 2 if channels == 1 else 3
    if arr.ndim != expected_ndim or (channels > 1 and arr.shape[2] != channels):
        want = "(H, W)" if channels == 1 else f"(H, W, {channels})"
        raise ConversionError(f"{encoding} needs shape {want}, got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ConversionError(f"empty {encoding} image: shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=dtype)  # little-endian, C order
    msg = Image()
    msg.header.stamp = _to_stamp(stamp)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.shape[1]) * dtype.itemsize * channels
    msg.data = _u8_array(arr)
    return msg


# --------------------------------------------------------------------------- multiarrays


def numpy_to_float32_multiarray(array: np.ndarray, label: str) -> Float32MultiArray:
    """Float32MultiArray with one dim (label, size, stride); N-D input is flattened row-major."""
    arr = np.asarray(array, dtype=np.float32).ravel()
    msg = Float32MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=label, size=arr.size, stride=arr.size)]
    msg.layout.data_offset = 0
    msg.data = _pyarray("f", arr.tobytes())
    return msg


# --------------------------------------------------------------------------- latent


def latent_to_msg(z: np.ndarray, stamp, frame_id: str = "sage") -> Image:
    """z (D,) -> Image 32FC1, height 1, width D; ``stamp`` = stamp of the source observation."""
    arr = np.asarray(z, dtype=np.float32)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.size == 0:
        raise ConversionError(f"latent must be 1-D and non-empty, got shape {np.shape(z)}")
    if not np.isfinite(arr).all():
        raise ConversionError("latent has non-finite values")
    return numpy_to_image(arr[None, :], "32FC1", stamp=stamp, frame_id=frame_id)


def msg_to_latent(msg: Image, expected_dim: int | None = None) -> np.ndarray:
    """Image 32FC1 (1 x D) -> (D,) float32 (a view when little-endian)."""
    if msg.encoding != "32FC1":
        raise ConversionError(f"latent image must be 32FC1, got {msg.encoding!r}")
    if msg.height != 1:
        raise ConversionError(f"latent image must have height 1, got {msg.height} (width {msg.width})")
    if expected_dim is not None and msg.width != expected_dim:
        raise ConversionError(f"latent has {msg.width} values, expected {expected_dim}")
    z = image_to_numpy(msg)[0].astype(np.float32, copy=False)
    if not np.isfinite(z).all():
        raise ConversionError("latent has non-finite values")
    return z


# --------------------------------------------------------------------------- time


def stamp_to_seconds(stamp) -> float:
    """builtin_interfaces Time -> float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def seconds_to_stamp(t: float) -> Time:
    """Float seconds -> builtin_interfaces Time (nanosec always in [0, 1e9))."""
    if not math.isfinite(t):
        raise ConversionError(f"cannot convert non-finite time {t} to a stamp")
    sec = math.floor(t)
    nanosec = int(round((t - sec) * 1e9))
    if nanosec >= 1_000_000_000:
        sec += 1
        nanosec -= 1_000_000_000
    return Time(sec=int(sec), nanosec=nanosec)
