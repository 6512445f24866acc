"""Message fields -> numpy, shared by the runtime (rclpy messages) and the bag reader (rosbags
messages). Pure and duck-typed: both message flavours have the same field names, and their byte
fields are either ``array.array``/``bytes`` (rclpy) or numpy arrays (rosbags).

Conventions (DESIGN §4): images in ``IMAGE_ENCODINGS`` with row padding (``step``) and
``is_bigendian`` honoured; depth ``16UC1``/``mono16`` in millimetres (0 = invalid -> NaN, REP 118)
or ``32FC1`` in metres; multi-arrays validated against their ``layout``. Readers return views on
the message buffer where they can.
"""

from __future__ import annotations

import io
import math
from array import array as _pyarray

import numpy as np

from .core.config import InputRanges, range_problem


class ConversionError(ValueError):
    """A message could not be converted; the text says what was wrong (encoding, sizes, joints)."""


# encoding -> (element dtype, channels). Dtypes are little-endian; is_bigendian flips them.
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
RGB_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")


def as_u8(data) -> np.ndarray:
    """uint8 view on a byte field (array.array, bytes, numpy); copies only a plain list."""
    if isinstance(data, np.ndarray):
        return data.view(np.uint8) if data.dtype.itemsize == 1 else data.astype(np.uint8)
    if isinstance(data, (bytes, bytearray, memoryview, _pyarray)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8)


def image_to_numpy(msg) -> np.ndarray:
    """Zero-copy view of ``msg.data`` as (H, W, C), or (H, W) for one channel.

    A big-endian 16/32-bit image comes back as a non-native-endian view rather than a copy;
    arithmetic on it converts correctly.
    """
    enc = msg.encoding
    if enc not in IMAGE_ENCODINGS:
        raise ConversionError(
            f"unsupported image encoding {enc!r} ({msg.width}x{msg.height}); supported: {', '.join(IMAGE_ENCODINGS)}"
        )
    dtype, channels = IMAGE_ENCODINGS[enc]
    if msg.is_bigendian and dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    bpp = dtype.itemsize * channels
    if height == 0 or width == 0:
        raise ConversionError(f"empty {enc} image: width={width} height={height}")
    if step < width * bpp:
        raise ConversionError(f"{enc} image step {step} < width {width} * {bpp} bytes/pixel = {width * bpp}")
    buf = as_u8(msg.data)
    if buf.size < step * height:
        raise ConversionError(
            f"{enc} image data truncated: {buf.size} bytes < step {step} * height {height} = {step * height}"
        )
    if channels == 1:
        shape, strides = (height, width), (step, dtype.itemsize)
    else:
        shape, strides = (height, width, channels), (step, bpp, dtype.itemsize)
    return np.ndarray(shape=shape, dtype=dtype, buffer=buf, offset=0, strides=strides)


def image_to_rgb(msg) -> np.ndarray:
    """(H, W, 3) uint8 RGB. rgb8/rgba8 are views; bgr8/bgra8/mono8 need a copy (reorder/expand).

    The copy is C-contiguous, so ``torch.from_numpy`` accepts it (negative strides it would not).
    """
    if msg.encoding not in RGB_ENCODINGS:
        raise ConversionError(
            f"image_to_rgb: unsupported encoding {msg.encoding!r} ({msg.width}x{msg.height}); "
            f"supported: {', '.join(RGB_ENCODINGS)}"
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
    """(H, W) float32 metres. 16UC1/mono16 are millimetres with 0 = invalid -> NaN (REP 118).

    32FC1 is already metres and comes back as a view when little-endian.
    """
    if msg.encoding not in DEPTH_ENCODINGS:
        raise ConversionError(
            f"depth_to_meters: unsupported encoding {msg.encoding!r} ({msg.width}x{msg.height}); "
            f"supported: {', '.join(DEPTH_ENCODINGS)}"
        )
    arr = image_to_numpy(msg)
    if msg.encoding == "32FC1":
        return arr.astype(np.float32, copy=False)
    out = arr.astype(np.float32)
    out *= np.float32(0.001)
    out[arr == 0] = np.nan
    return out


def compressed_image_to_rgb(msg) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a JPEG or PNG ``CompressedImage`` (Pillow, imported lazily).

    image_transport encodes colour images so the file itself is RGB-correct, so ``format``
    only matters to reject compressedDepth (it prepends a private header).
    """
    try:
        from PIL import Image as PILImage
    except ImportError as exc:
        raise ConversionError("compressed images need Pillow, which is not installed (pip install Pillow)") from exc
    fmt = msg.format or ""
    if "compresseddepth" in fmt.lower():
        raise ConversionError(f"compressedDepth images are not supported (format {fmt!r})")
    data = as_u8(msg.data).tobytes()
    if not data:
        raise ConversionError(f"empty compressed image (format {fmt!r})")
    try:
        with PILImage.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
    except Exception as exc:  # Pillow raises OSError, ValueError, DecompressionBombError...
        raise ConversionError(f"cannot decode compressed image (format {fmt!r}, {len(data)} bytes): {exc}") from exc
    return np.asarray(rgb, dtype=np.uint8)


def checked_multiarray(data: np.ndarray, layout, expected_size: int | None = None) -> np.ndarray:
    """``data[layout.data_offset:]`` of a Float32/Float64MultiArray, validated against its layout.

    Strides in ``layout.dim`` are not checked: publishers commonly leave them 0.
    """
    if data.dtype.kind != "f":
        raise ConversionError(f"multiarray data has dtype {data.dtype}, expected float")
    offset = int(layout.data_offset)
    if offset > data.size:
        raise ConversionError(f"multiarray data_offset {offset} > data length {data.size}")
    data = data[offset:]
    dims = layout.dim
    if dims:
        prod = math.prod(int(d.size) for d in dims)
        if prod != data.size:
            shape = " x ".join(f"{d.label or '?'}={d.size}" for d in dims)
            raise ConversionError(
                f"multiarray layout {shape} holds {prod} values but data has {data.size}"
                + (f" after data_offset {offset}" if offset else "")
            )
    if expected_size is not None and data.size != expected_size:
        raise ConversionError(f"multiarray has {data.size} values, expected {expected_size}")
    if not np.isfinite(data).all():
        raise ConversionError(
            f"multiarray has non-finite values at indices {np.flatnonzero(~np.isfinite(data))[:8].tolist()}"
        )
    return data


def as_float(data, dtype) -> np.ndarray:
    """Float view on an array.array field (rclpy) of that item size; copies other sequences."""
    dtype = np.dtype(dtype)
    if isinstance(data, _pyarray) and data.typecode in "fd" and data.itemsize == dtype.itemsize:
        return np.frombuffer(data, dtype=dtype)
    return np.asarray(data, dtype=dtype)


def multiarray_to_numpy(msg, expected_size: int | None = None) -> np.ndarray:
    """1-D float view of ``data[data_offset:]`` of a Float32/Float64MultiArray (rclpy or rosbags),
    validated against its layout and ``expected_size``; the element type is the message's."""
    data = msg.data
    if isinstance(data, _pyarray) and data.typecode in "fd":
        values = np.frombuffer(data, dtype=np.float32 if data.typecode == "f" else np.float64)
    elif isinstance(data, np.ndarray):
        values = data
    else:
        values = np.asarray(data, dtype=np.float64)
    return checked_multiarray(values, msg.layout, expected_size)


DEFAULT_INPUT_RANGES = InputRanges()  # a checkpoint's observation.input_ranges overrides it
_JOINT_INDEX_CACHE: dict[tuple[tuple[str, ...], tuple[str, ...]], np.ndarray | None] = {}
_JOINT_INDEX_CACHE_MAX = 32


def joint_index(msg_names, joint_names, what: str = "JointState") -> np.ndarray | None:
    """Index of each configured joint in a message's names (JointState ``name``, JointTrajectory
    ``joint_names``); None when it names none of them; ConversionError when it names some only or
    one twice."""
    msg_names, joint_names = tuple(msg_names), tuple(joint_names)
    key = (msg_names, joint_names)
    if key in _JOINT_INDEX_CACHE:
        return _JOINT_INDEX_CACHE[key]
    where: dict[str, int] = {}
    dupes = set()
    for i, n in enumerate(msg_names):
        if n in where:
            dupes.add(n)
        where[n] = i
    missing = [n for n in joint_names if n not in where]
    if missing and len(missing) == len(joint_names):
        idx = None  # another publisher's joints (e.g. a gripper driver on the same topic): not ours
    elif missing:
        raise ConversionError(f"{what} is missing configured joints {missing} (message has {list(msg_names)})")
    else:
        ambiguous = [n for n in joint_names if n in dupes]
        if ambiguous:
            raise ConversionError(f"{what} names configured joints more than once: {ambiguous}")
        idx = np.fromiter((where[n] for n in joint_names), dtype=np.intp, count=len(joint_names))
    if len(_JOINT_INDEX_CACHE) >= _JOINT_INDEX_CACHE_MAX:
        _JOINT_INDEX_CACHE.clear()
    _JOINT_INDEX_CACHE[key] = idx
    return idx


def joint_state_to_arrays(msg, joint_names, ranges: InputRanges = DEFAULT_INPUT_RANGES
                          ) -> tuple[np.ndarray, np.ndarray] | None:
    """(positions, velocities) float64 in ``joint_names`` order, matched by name; the one decoder
    of the runtime nodes and the bag reader, so both accept and refuse the same messages.

    None when the message names none of the configured joints (another publisher on the same
    topic, e.g. a gripper driver): callers skip it without a warning. Extra joints are ignored;
    missing, duplicated, non-finite or implausible configured joints (outside ``ranges``, e.g. a
    position of 1e308 rad) raise ConversionError, so a partial or corrupt message can never shift
    values onto the wrong joint or overflow a model downstream. Empty velocity -> zeros.
    """
    names = tuple(msg.name)
    n = len(names)
    if len(msg.position) != n:
        raise ConversionError(f"JointState has {n} names but {len(msg.position)} positions")
    nv = len(msg.velocity)
    if nv not in (0, n):
        raise ConversionError(f"JointState has {n} names but {nv} velocities")
    joint_names = tuple(joint_names)
    idx = joint_index(names, joint_names)
    if idx is None:
        return None
    pos = as_float(msg.position, np.float64)[idx]
    problem = range_problem(pos, ranges.joint_position_abs_max_rad, "position", " rad", joint_names)
    if problem:
        raise ConversionError(problem)
    if nv == 0:
        vel = np.zeros(len(idx), dtype=np.float64)
    else:
        vel = as_float(msg.velocity, np.float64)[idx]
        problem = range_problem(vel, ranges.joint_velocity_abs_max_rad_s, "velocity", " rad/s", joint_names)
        if problem:
            raise ConversionError(problem)
    return pos, vel
