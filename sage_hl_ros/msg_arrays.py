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
