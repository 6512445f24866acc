"""Adversarial input against the two runtime node processes, measured from outside.

Both nodes take input from anything that can publish on the ROS graph: a driver bug, a replayed
bag from another robot, a bridge that mislabels joints. This module is the one fuzzer shared by
``test/test_fuzz.py`` (>= 2,000 messages in the suite) and ``bench/bench_fuzz.py`` (>= 10,000):

- it starts ``sage_context`` and ``sage_control`` as separate processes from the deployed
  parameter file (``config/sage_hl.yaml``) with control enabled, ``config/joint_limits.yaml``
  and the ``joint_state`` command interface (its header stamp is the tick time, so the speed
  of every consecutive command pair is measured against the stamp gap, not arrival times);
- it streams *valid* camera, depth, audio, tactile and joint states the whole time (the joints
  follow a sine, so OK commands keep moving and the filter's rate limit is exercised), so the
  context node publishes real latents and commands flow;
- in bursts it sends malformed messages on every topic either node subscribes to (images with
  wrong sizes/encodings/steps or truncated data, NaN/Inf/1e30 payloads, JointStates with
  missing/extra/duplicate/reordered names, wrong-length arrays, 1e308 positions, malformed
  latents, e-stop floods followed by a reset), then leaves ``window_s`` of valid input only;
- it records every command and every /diagnostics message and judges them afterwards
  (:func:`check_commands`, :func:`recovery_times`), so the verdict comes from the nodes' own
  stamps and counters, not from how busy this machine was while it listened.

Recovery of a burst: the time from the burst's end (e-stop reset included) until the end of the
last control-loop diagnostics interval, inside the following valid-only window, that contained
a tick that did not command (any hold or e-stop). An upper bound, resolved to the control
node's diagnostics period; ``inf`` when commands had not resumed by the window's end.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from builtin_interfaces.msg import Time as TimeMsg
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Empty, Float32MultiArray, MultiArrayDimension

from ..launch_table import RUNTIME_NODES
from ..paths import config_file
from ..ros import convert
from .bringup import NodeProcesses, node_command
from .ros_domain import isolate_ros_graph

__all__ = ["FuzzConfig", "FuzzResult", "MalformedMessages", "run_fuzz", "check_commands", "recovery_times",
           "make_follow_checkpoint"]

TOPICS = {  # fuzz topic key -> (ROS topic as in config/sage_hl.yaml, message type)
    "camera": ("/camera/image_raw", Image),
    "depth": ("/camera/depth/image_raw", Image),
    "audio": ("/audio/frames", Float32MultiArray),
    "tactile": ("/tactile/array", Float32MultiArray),
    "joint_states": ("/joint_states", JointState),
    "latent": ("/sage/latent", Image),
    "e_stop": ("/e_stop", Bool),
}
COMMAND_TOPIC = "/joint_command"  # joint_state command interface (sage_hl.yaml joint_command_topic)
E_STOP_RESET_TOPIC = "/e_stop/reset"
LATENT_DIM = 256
TACTILE_TAXELS = 16
AUDIO_RATE_HZ = 16000


@dataclass
class FuzzConfig:
    malformed_messages: int = 2000
    burst_messages: int = 200  # malformed messages per burst (e-stop floods included)
    window_s: float = 2.0  # valid input only after each burst; recovery is judged inside it
    message_gap_s: float = 0.001  # pacing inside a burst: best-effort sensor queues hold 5
    control_rate_hz: float = 200.0
    joint_rate_hz: float = 100.0  # valid joint states
    sensor_rate_hz: float = 15.0  # valid camera, depth, audio, tactile
    joint_state_timeout_s: float = 0.2  # control node; bench_ros uses the same on this shared machine
    control_diagnostics_period_s: float = 0.1  # the resolution of recovery
    image_px: int = 32  # checkpoint and valid image size (same code paths, a fraction of the compute)
    seed: int = 0
    joint_limits_file: str = ""  # "" = config/joint_limits.yaml
    startup_timeout_s: float = 120.0
    answer_timeout_s: float = 5.0  # no /diagnostics from a node for this long = it stopped answering
    speed_tolerance_rad: float = 1e-9  # float slack on |step| <= velocity_max * (stamp gap + speed_tolerance_s)
    # Clock slack: the node sizes a step from float seconds since the epoch (2.4e-7 s apart today),
    # the stamps here are integer nanoseconds.
    speed_tolerance_s: float = 1e-6
    workdir: str = ""  # "" = a temporary directory, removed afterwards

    def __post_init__(self) -> None:
        for key in ("malformed_messages", "burst_messages", "image_px"):
            if getattr(self, key) < 1:
                raise ValueError(f"FuzzConfig.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("window_s", "control_rate_hz", "joint_rate_hz", "sensor_rate_hz", "joint_state_timeout_s",
                    "control_diagnostics_period_s", "startup_timeout_s", "answer_timeout_s"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"FuzzConfig.{key} must be finite and > 0, got {value}")
        for key in ("message_gap_s", "speed_tolerance_rad", "speed_tolerance_s"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"FuzzConfig.{key} must be finite and >= 0, got {value}")
        if self.image_px < 16:
            raise ValueError(f"FuzzConfig.image_px must be >= 16 (the model's minimum), got {self.image_px}")

    @property
    def limits_path(self) -> Path:
        return Path(self.joint_limits_file) if self.joint_limits_file else config_file("joint_limits.yaml")


@dataclass
class FuzzResult:
    sent: int = 0  # malformed messages published (e-stop flood messages included)
    sent_by_kind: Counter = field(default_factory=Counter)  # "topic.kind" -> count
    valid_sent: Counter = field(default_factory=Counter)
    commands: int = 0  # commands received
    violations: int = 0  # commands outside the position limits, wrong length or wrong joint names
    nonfinite: int = 0
    dead: int = 0  # node processes that exited or stopped answering during the run
    dead_detail: list[str] = field(default_factory=list)
    speed_pairs: int = 0  # consecutive command pairs checked
    speed_violations: int = 0
    max_speed_ratio: float = 0.0  # max over pairs and joints of |step| / (velocity_max * stamp gap)
    # The same with the gap floored at the nominal period: <= 1 when every violating pair is closer
    # than one period (a late tick then an on-time one), > 1 for a step too large even for that.
    max_speed_ratio_period_floor: float = 0.0
    recovery_s: list[float] = field(default_factory=list)  # one per burst; inf = did not resume
    # One per burst: until the first 0.3 s in which every tick commanded (inf: none in the window).
    # Looser than recovery_s: holds after that (a loaded machine's late latents) do not count.
    resume_s: list[float] = field(default_factory=list)
    h_rate_hz: float = math.nan  # median H loop rate the context node reported (machine load)
    command_publishers: int = 0  # most publishers seen on the command topic (1: only our control node)
    bursts: int = 0
    estop_bursts: int = 0
    node_counters: dict[str, dict[str, str]] = field(default_factory=dict)  # last diagnostics per status
    exit_codes: dict[str, int] = field(default_factory=dict)
    late_tick_fraction: float = 0.0  # control ticks later than 1.5 periods (machine load)
    burst_windows_s: list[tuple[float, float]] = field(default_factory=list)  # (burst end, next start)
    control_diag: list[tuple[float, int, int]] = field(default_factory=list)  # (stamp s, ticks, holding ticks)
    log_dir: str = ""

    @property
    def recovery_max_s(self) -> float:
        return max(self.recovery_s) if self.recovery_s else math.inf

    def recovery_percentile(self, q: float) -> float:
        return float(np.percentile(self.recovery_s, q)) if self.recovery_s else math.inf

    def line(self) -> str:
        """The summary line: recovery_s is the worst burst's."""
        return (f"fuzz: sent={self.sent} commands={self.commands} violations={self.violations} "
                f"nonfinite={self.nonfinite} dead={self.dead} speed_violations={self.speed_violations} "
                f"recovery_s={self.recovery_max_s:.2f}")


# --------------------------------------------------------------------------- judging (pure)


def check_commands(stamps_ns: np.ndarray, positions: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                   velocity_max: np.ndarray, tolerance_rad: float = 1e-9, tolerance_s: float = 1e-6) -> dict:
    """Judge a command stream (receive order) against the limits.

    ``positions`` (N, J). Violations count commands with any joint outside [lower, upper];
    non-finite counts commands with any non-finite value (those are not also judged for speed).
    A speed violation is a consecutive pair whose step on some joint exceeds velocity_max times
    the gap between their stamps (the tick times) plus ``tolerance_s``, plus ``tolerance_rad``.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(len(stamps_ns), -1)
    finite = np.isfinite(positions).all(axis=1)
    with np.errstate(invalid="ignore"):
        outside = ((positions < lower) | (positions > upper)).any(axis=1) & finite
    out = {"nonfinite": int((~finite).sum()), "violations": int(outside.sum()), "pairs": 0,
           "speed_violations": 0, "max_speed_ratio": 0.0}
    if len(stamps_ns) < 2:
        return out
    both = finite[1:] & finite[:-1]
    gap_s = np.diff(np.asarray(stamps_ns, dtype=np.int64)).astype(np.float64) * 1e-9
    step = np.abs(np.diff(positions, axis=0))[both]
    allowed = np.maximum(gap_s[both], 0.0)[:, None] * velocity_max[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(step > 0, step / allowed, 0.0)
    out["pairs"] = int(both.sum())
    slack = tolerance_s * velocity_max[None, :] + tolerance_rad
    out["speed_violations"] = int((step > allowed + slack).any(axis=1).sum())
    out["max_speed_ratio"] = float(np.nanmax(ratio)) if ratio.size else 0.0
    return out


def recovery_times(bursts: list[tuple[float, float]], diag: list[tuple[float, int, int]],
                   command_stamps_s: np.ndarray, sustained: int = 0) -> list[float]:
    """Per burst (end, next burst's start) in node-clock seconds: how long until commands flowed again.

    ``diag``: (stamp, ticks, holding ticks) of the control loop's diagnostics, in order, where
    holding ticks is the running total of ticks that did not command (every ``ticks.<status>``
    counter but ``ticks.ok``: the counters are read one after another while the loop ticks, so
    ticks minus ok ticks can be off by one; a sum of only the other counters never grows
    spuriously). The burst recovered at the end of the last interval, ending inside its window,
    in which a tick held or the loop did not tick; inf when that is the window's last interval,
    when no interval ends in the window, or when no command stamped after that point arrived.
    ``sustained`` > 0: instead, the end of the last holding interval before the first run of
    that many all-commanding intervals (the first time commands flowed for a while).
    """
    d = np.array(diag, dtype=np.float64).reshape(-1, 3)
    out = []
    for end_s, next_s in bursts:
        idx = [k for k in range(1, len(d)) if end_s < d[k, 0] <= next_s]
        if not idx:
            out.append(math.inf)
            continue
        bad = [k for k in idx if d[k, 1] <= d[k - 1, 1] or d[k, 2] > d[k - 1, 2]]
        if sustained > 0:
            good_run, first_bad = 0, []
            for k in idx:
                good_run = 0 if k in bad else good_run + 1
                if good_run >= sustained:
                    break
                if k in bad:
                    first_bad.append(k)
            if good_run < sustained:
                out.append(math.inf)
                continue
            bad = first_bad
        if bad and bad[-1] == idx[-1]:
            out.append(math.inf)  # still holding when the window closed
            continue
        resumed_s = d[bad[-1], 0] if bad else end_s
        flowed = np.any((command_stamps_s > resumed_s) & (command_stamps_s <= next_s))
        out.append(max(0.0, resumed_s - end_s) if flowed else math.inf)
    return out


# --------------------------------------------------------------------------- messages


def _stamp(t_s: float) -> TimeMsg:
    return convert.seconds_to_stamp(t_s)


def _f32(values) -> array:
    return array("f", np.asarray(values, dtype=np.float32).tobytes())


def _f64(values) -> array:
    return array("d", np.asarray(values, dtype=np.float64).tobytes())


def _raw_image(height: int, width: int, encoding: str, step: int, data: bytes, stamp: TimeMsg,
               bigendian: int = 0) -> Image:
    msg = Image()
    msg.header.stamp = stamp
    msg.height, msg.width, msg.encoding, msg.step, msg.is_bigendian = height, width, encoding, step, bigendian
    msg.data = array("B", data)
    return msg


def _multiarray(values, label: str, size: int | None = None, offset: int = 0, dims=None) -> Float32MultiArray:
    arr = np.asarray(values, dtype=np.float32).ravel()
    msg = Float32MultiArray()
    if dims is None:
        dims = [(label, arr.size if size is None else size)]
    msg.layout.dim = [MultiArrayDimension(label=lab, size=int(n), stride=int(n)) for lab, n in dims]
    msg.layout.data_offset = offset
    msg.data = _f32(arr)
    return msg


class ValidMessages:
    """The well-formed streams: what a healthy robot would publish."""

    def __init__(self, joint_names: list[str], lower: np.ndarray, upper: np.ndarray, image_px: int,
                 sensor_rate_hz: float, seed: int):
        self.joint_names = list(joint_names)
        # Joints swing +-0.3 rad (or less in a narrow range) around the middle of their range at
        # 0.5 Hz: peak speed ~0.94 rad/s, so between two joint states the target moves more than
        # the filter's step at peak speed and the rate limit is exercised every swing.
        self.centre = (lower + upper) / 2.0
        self.amplitude = np.minimum(0.3, 0.4 * (upper - lower))
        self.phase = np.linspace(0.0, np.pi, len(joint_names))
        self.image_px = image_px
        self.audio_samples = int(AUDIO_RATE_HZ / sensor_rate_hz)
        self.rng = np.random.default_rng(seed + 1)
        yy, xx = np.mgrid[0:image_px, 0:image_px]
        self._rgb = np.stack([xx * 255 // image_px, yy * 255 // image_px, np.full_like(xx, 128)], -1).astype(np.uint8)
        self._depth = (1.0 + 0.5 * xx / image_px).astype(np.float32)

    def positions(self, t_s: float) -> np.ndarray:
        return self.centre + self.amplitude * np.sin(2.0 * np.pi * 0.5 * t_s + self.phase)

    def joint_state(self, t_s: float) -> JointState:
        msg = JointState()
        msg.header.stamp = _stamp(t_s)
        msg.name = list(self.joint_names)
        msg.position = _f64(self.positions(t_s))
        msg.velocity = _f64(np.zeros(len(self.joint_names)))
        return msg

    def camera(self, t_s: float) -> Image:
        return convert.numpy_to_image(np.roll(self._rgb, int(t_s * 10) % self.image_px, axis=1), "rgb8", _stamp(t_s))

    def depth(self, t_s: float) -> Image:
        return convert.numpy_to_image(self._depth, "32FC1", _stamp(t_s))

    def audio(self, t_s: float) -> Float32MultiArray:
        return convert.numpy_to_float32_multiarray(0.1 * self.rng.standard_normal(self.audio_samples), "samples")

    def tactile(self, t_s: float) -> Float32MultiArray:
        return convert.numpy_to_float32_multiarray(self.rng.uniform(0.0, 1.0, TACTILE_TAXELS), "taxels")


class MalformedMessages:
    """Generators of bad messages, one per (topic, kind); ``draw`` picks uniformly among them.

    Kinds marked "plausible" are well-formed but lie (reordered names with consistent values,
    stamps far in the past or future, finite 1e30 values): the nodes may accept them, and the
    command stream must still be safe.
    """

    def __init__(self, valid: ValidMessages, seed: int):
        self.valid = valid
        self.rng = np.random.default_rng(seed)
        self.kinds: list[tuple[str, str, Callable[[float], object]]] = []
        for topic, table in (("camera", self._camera()), ("depth", self._depth()), ("audio", self._audio()),
                             ("tactile", self._tactile()), ("joint_states", self._joints()),
                             ("latent", self._latent())):
            self.kinds += [(topic, kind, fn) for kind, fn in table.items()]

    def draw(self, t_s: float) -> tuple[str, str, object]:
        topic, kind, fn = self.kinds[int(self.rng.integers(len(self.kinds)))]
        return topic, kind, fn(t_s)

    def _bytes(self, n: int) -> bytes:
        return self.rng.integers(0, 256, max(0, n), dtype=np.uint8).tobytes()

    def _some_bytes(self, needed: int) -> bytes:
        """Fewer bytes than ``needed`` (a truncated payload)."""
        return self._bytes(int(self.rng.integers(0, needed)))

    def _camera(self) -> dict:
        px, r = self.valid.image_px, self.rng
        st = _stamp
        return {
            "truncated": lambda t: _raw_image(px, px, "rgb8", px * 3, self._some_bytes(px * px * 3), st(t)),
            "step_short": lambda t: _raw_image(px, px, "rgb8", px * 3 - 1, self._bytes((px * 3 - 1) * px), st(t)),
            "step_huge": lambda t: _raw_image(px, px, "rgb8", 2**31, self._bytes(px * px * 3), st(t)),
            "step_unaligned": lambda t: _raw_image(px, px, "rgba8", px * 4 + 3, self._bytes((px * 4 + 3) * px), st(t)),
            "zero_size": lambda t: _raw_image(0, px, "rgb8", px * 3, b"", st(t)),
            "huge_dims": lambda t: _raw_image(65535, 65535, "rgb8", 65535 * 3, self._bytes(64), st(t)),
            "bad_encoding": lambda t: _raw_image(px, px, str(r.choice(["bayer_rggb8", "yuv422", "", "8UC3", "RGB8",
                                                                        "rgb16", "x" * 300])),
                                                 px * 3, self._bytes(px * px * 3), st(t)),
            "float_nan": lambda t: convert.numpy_to_image(np.full((px, px), np.nan, np.float32), "32FC1", st(t)),
            "data_long": lambda t: _raw_image(px, px, "bgr8", px * 3, self._bytes(px * px * 3 + 999), st(t)),
            "bigendian_mono16": lambda t: _raw_image(px, px, "mono16", px * 2, self._bytes(px * px * 2), st(t), 1),
            "odd_size": lambda t: convert.numpy_to_image(
                self.rng.integers(0, 256, (int(r.integers(1, 97)), int(r.integers(1, 97)), 3), dtype=np.uint8),
                "rgb8", st(t)),
        }

    def _depth(self) -> dict:
        px, r = self.valid.image_px, self.rng
        st = _stamp

        def f32(value):
            return lambda t: convert.numpy_to_image(np.full((px, px), value, np.float32), "32FC1", st(t))

        def mixed(t):
            d = np.full((px, px), 1.0, np.float32)
            d.flat[r.integers(0, px * px, 50)] = r.choice([np.nan, np.inf, -np.inf, 1e30, -1e30, -5.0], 50)
            return convert.numpy_to_image(d, "32FC1", st(t))

        return {
            "nan": f32(np.nan), "inf": f32(np.inf), "neg_inf": f32(-np.inf), "huge": f32(1e30),
            "neg_huge": f32(-1e30), "negative": f32(-5.0), "mixed": mixed,
            "truncated": lambda t: _raw_image(px, px, "32FC1", px * 4, self._some_bytes(px * px * 4), st(t)),
            "wrong_encoding": lambda t: _raw_image(px, px, "rgb8", px * 3, self._bytes(px * px * 3), st(t)),
            "u16_bad_step": lambda t: _raw_image(px, px, "16UC1", px * 2 + 1, self._bytes(px * px * 2), st(t)),
            "zero_size": lambda t: _raw_image(px, 0, "32FC1", 0, b"", st(t)),
            "u16_max": lambda t: convert.numpy_to_image(np.full((px, px), 65535, np.uint16), "16UC1", st(t)),
        }

    def _floats(self, n_valid: int, label: str) -> dict:
        r = self.rng

        def fill(value, n=n_valid):
            return lambda t: _multiarray(np.full(n, value, np.float32), label)

        def mixed(t):
            v = r.uniform(-1, 1, n_valid).astype(np.float32)
            v[r.integers(0, n_valid, max(1, n_valid // 4))] = r.choice([np.nan, np.inf, -np.inf, 1e30, -1e30])
            return _multiarray(v, label)

        return {
            "nan": fill(np.nan), "inf": fill(np.inf), "huge": fill(1e30), "neg_huge": fill(-1e30), "mixed": mixed,
            "max_float32": fill(np.finfo(np.float32).max),
            "empty": lambda t: _multiarray(np.zeros(0), label),
            "size_mismatch": lambda t: _multiarray(np.zeros(n_valid), label, size=n_valid + 7),
            "offset_past_end": lambda t: _multiarray(np.zeros(n_valid), label, offset=n_valid + 1),
            "dims_product": lambda t: _multiarray(np.zeros(n_valid), label, dims=[(label, 3), ("x", 5)]),
        }

    def _audio(self) -> dict:
        n = self.valid.audio_samples
        table = self._floats(n, "samples")
        table["long"] = lambda t: _multiarray(self.rng.uniform(-1, 1, 50_000), "samples")
        return table

    def _tactile(self) -> dict:
        table = self._floats(TACTILE_TAXELS, "taxels")
        table["short"] = lambda t: _multiarray(np.zeros(TACTILE_TAXELS - 1), "taxels")
        table["long"] = lambda t: _multiarray(np.zeros(TACTILE_TAXELS + 1), "taxels")
        return table

    def _joints(self) -> dict:
        names, r = self.valid.joint_names, self.rng
        n = len(names)

        def js(t, nm, pos, vel=None, stamp_s=None):
            msg = JointState()
            msg.header.stamp = _stamp(t if stamp_s is None else stamp_s)
            msg.name = list(nm)
            msg.position = _f64(pos)
            msg.velocity = _f64(np.zeros(len(pos)) if vel is None else vel)
            return msg

        def good(t):
            return self.valid.positions(t)

        def reordered(t, consistent: bool):
            perm = r.permutation(n)
            pos = good(t)
            return js(t, [names[i] for i in perm], pos[perm] if consistent else pos)

        def poison(value, where="position"):
            def make(t):
                pos, vel = good(t), np.zeros(n)
                target = pos if where == "position" else vel
                target[r.integers(0, n, int(r.integers(1, n + 1)))] = value
                return js(t, names, pos, vel)
            return make

        def missing(t):
            keep = np.sort(r.choice(n, n - 1, replace=False))
            return js(t, [names[i] for i in keep], good(t)[keep])

        return {
            "missing": missing,
            "extra": lambda t: js(t, names + ["joint99", "gripper"], np.r_[good(t), 5.0, -7.0]),
            "duplicate": lambda t: js(t, names + [names[0]], np.r_[good(t), 2.5]),
            "reordered_plausible": lambda t: reordered(t, True),
            "reordered_mislabelled": lambda t: reordered(t, False),
            "short_positions": lambda t: js(t, names, good(t)[:-2]),
            "short_velocities": lambda t: js(t, names, good(t), np.zeros(n - 3)),
            "nan_position": poison(np.nan), "inf_position": poison(-np.inf), "huge_position": poison(1e308),
            "neg_huge_position": poison(-1e308), "nan_velocity": poison(np.nan, "velocity"),
            "huge_velocity": poison(1e308, "velocity"),
            "empty": lambda t: js(t, [], np.zeros(0)),
            "empty_names": lambda t: js(t, [""] * n, good(t)),
            "old_stamp_plausible": lambda t: js(t, names, good(t), stamp_s=1.0),
            "future_stamp_plausible": lambda t: js(t, names, good(t), stamp_s=t + 3600.0),
        }

    def _latent(self) -> dict:
        r = self.rng
        d = LATENT_DIM

        def z(values, t, stamp_s=None):
            return convert.numpy_to_image(np.asarray(values, np.float32).reshape(1, -1), "32FC1",
                                          _stamp(t if stamp_s is None else stamp_s))

        def poison(value):
            def make(t):
                v = r.normal(0, 1, d).astype(np.float32)
                v[r.integers(0, d, int(r.integers(1, d)))] = value
                return z(v, t)
            return make

        return {
            "short": lambda t: z(np.zeros(d - 1), t), "long": lambda t: z(np.zeros(d + 1), t),
            "zero_width": lambda t: _raw_image(1, 0, "32FC1", 0, b"", _stamp(t)),
            "height_2": lambda t: convert.numpy_to_image(np.zeros((2, d), np.float32), "32FC1", _stamp(t)),
            "mono8": lambda t: _raw_image(1, d * 4, "mono8", d * 4, self._bytes(d * 4), _stamp(t)),
            "encoding_64FC1": lambda t: _raw_image(1, d, "64FC1", d * 8, self._bytes(d * 8), _stamp(t)),
            "nan": poison(np.nan), "inf": poison(np.inf), "huge_plausible": poison(1e30),
            "truncated": lambda t: _raw_image(1, d, "32FC1", d * 4, self._bytes(100), _stamp(t)),
            "step_short": lambda t: _raw_image(1, d, "32FC1", d * 4 - 4, self._bytes(d * 4 - 4), _stamp(t)),
            "bigendian": lambda t: _raw_image(1, d, "32FC1", d * 4, np.full(d, 0.5, ">f4").tobytes(), _stamp(t), 1),
            "old_stamp_plausible": lambda t: z(np.zeros(d), t, stamp_s=1.0),
            "future_stamp_plausible": lambda t: z(np.zeros(d), t, stamp_s=t + 3600.0),
        }


# --------------------------------------------------------------------------- checkpoint


def make_follow_checkpoint(directory: Path, joint_names: list[str], image_px: int = 32) -> Path:
    """A small checkpoint whose L-module outputs a zero joint delta: every OK command is the
    measured position, so from outside a hold (repeated command) and commanding (the command
    follows the moving joints) are told apart, and the rate limit decides every large step."""
    import torch

    from ..core.checkpoint import save_checkpoint
    from ..core.config import SageConfig
    from ..core.system import build_model

    cfg = SageConfig.from_dict({"observation": {
        "joint_names": list(joint_names), "image_height_px": image_px, "image_width_px": image_px,
        "depth_height_px": image_px, "depth_width_px": image_px, "audio_window_samples": 1024,
        "tactile_taxels": TACTILE_TAXELS, "audio_sample_rate_hz": AUDIO_RATE_HZ}})
    model = build_model(cfg)
    last = model.l_module.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    return save_checkpoint(model, directory)


# --------------------------------------------------------------------------- the run


def ros_isolation_env() -> None:
    """Keep the fuzz graph on this host and off other runs' domains (children inherit it)."""
    isolate_ros_graph(keep_existing=True)  # a domain id the user set stays; else one reserved here
    os.environ.setdefault("OMP_NUM_THREADS", "1")


class _Listener:
    """Thread-safe records of commands and control/context diagnostics."""

    def __init__(self, joint_names: list[str]):
        self.lock = threading.Lock()
        self.names = list(joint_names)
        self.cmd_stamps: list[int] = []
        self.cmd_positions: list[np.ndarray] = []
        self.bad_shape = 0
        self.control: list[tuple[float, int, int]] = []  # (stamp s, ticks, holding ticks)
        self.last_seen: dict[str, float] = {}  # node -> monotonic time of its last diagnostics
        self.latest: dict[str, dict[str, str]] = {}  # status name -> values (+ "_message", "_level")
        self.late_ticks = (0, 0)  # (missed ticks, ticks) from the control loop
        self.h_rates: list[float] = []  # the context node's H loop rate, per diagnostics message

    def on_command(self, msg: JointState) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        pos = np.frombuffer(msg.position, dtype=np.float64).copy() if len(msg.position) else np.zeros(0)
        with self.lock:
            if list(msg.name) != self.names or pos.shape != (len(self.names),):
                self.bad_shape += 1
                return
            self.cmd_stamps.append(stamp)
            self.cmd_positions.append(pos)

    def on_diagnostics(self, msg) -> None:
        now = time.monotonic()
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        with self.lock:
            for st in msg.status:
                values = {kv.key: kv.value for kv in st.values}
                node = st.name.split(":", 1)[0]
                self.last_seen[node] = now
                self.latest[st.name] = values | {"_message": st.message}
                if st.name.endswith(": control loop") and "ticks" in values:
                    try:
                        ticks = int(values["ticks"])
                        holding = sum(int(v) for k, v in values.items()
                                      if k.startswith("ticks.") and k != "ticks.ok")
                        self.control.append((stamp, ticks, holding))
                        self.late_ticks = (int(values.get("missed_ticks", "0")), ticks)
                    except ValueError:
                        pass
                elif st.name.endswith(": H loop") and "rate_hz" in values:
                    try:
                        self.h_rates.append(float(values["rate_hz"]))
                    except ValueError:
                        pass

    def commanding(self, since_s: float) -> bool:
        """Commands arrived after ``since_s`` and the last control interval was all OK ticks."""
        with self.lock:
            if len(self.control) < 2 or not self.cmd_stamps or self.cmd_stamps[-1] * 1e-9 <= since_s:
                return False
            (_, t0, h0), (s1, t1, h1) = self.control[-2], self.control[-1]
            return s1 > since_s and t1 > t0 and h1 == h0


def run_fuzz(cfg: FuzzConfig, log: Callable[[str], None] = print) -> FuzzResult:
    """Start both nodes, fuzz them, judge the records. Never raises for what the nodes do: a node
    that dies or never commands shows up in the result (dead, recovery inf, 0 commands)."""
    from ..safety import JointLimits

    ros_isolation_env()
    own_dir = not cfg.workdir
    workdir = Path(tempfile.mkdtemp(prefix="sage_fuzz_")) if own_dir else Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    limits_path = cfg.limits_path
    table = yaml.safe_load(limits_path.read_text()) or {}
    if not isinstance(table.get("joint_limits"), dict) or not table["joint_limits"]:
        raise ValueError(f"{limits_path}: no joint_limits mapping")
    joint_names = [str(n) for n in table["joint_limits"]]
    limits = JointLimits.from_yaml(limits_path, joint_names)
    result = FuzzResult(log_dir=str(workdir / "logs"))
    try:
        make_follow_checkpoint(workdir / "model", joint_names, cfg.image_px)
        nodes = _start_nodes(cfg, workdir, limits_path, joint_names)
        try:
            _fuzz(cfg, nodes, joint_names, limits, result, log)
        finally:
            result.exit_codes = nodes.stop(grace_s=10.0)
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
            result.log_dir = ""
    return result


def _start_nodes(cfg: FuzzConfig, workdir: Path, limits_path: Path, joint_names: list[str]) -> NodeProcesses:
    params = [config_file("sage_hl.yaml")]
    model = str((workdir / "model").resolve())
    overrides = {
        "sage_context": {"model_dir": model, "autostart": True, "diagnostics_period_s": 0.5},
        "sage_control": {"model_dir": model, "autostart": True, "enable_control": True,
                         "joint_limits_file": str(limits_path.resolve()), "joint_names": joint_names,
                         "command_interface": "joint_state", "joint_command_topic": COMMAND_TOPIC,
                         "control_rate_hz": cfg.control_rate_hz, "joint_state_timeout_s": cfg.joint_state_timeout_s,
                         "diagnostics_period_s": cfg.control_diagnostics_period_s},
    }
    nodes = NodeProcesses(workdir / "logs")
    for spec in RUNTIME_NODES:
        nodes.start(spec.name, node_command(spec, params, overrides[spec.name]))
    return nodes


def _fuzz(cfg: FuzzConfig, nodes: NodeProcesses, joint_names: list[str], limits, result: FuzzResult,
          log: Callable[[str], None]) -> None:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("sage_fuzz", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    listener = _Listener(joint_names)
    node.create_subscription(JointState, COMMAND_TOPIC, listener.on_command, reliable)
    node.create_subscription(DiagnosticArray, "/diagnostics", listener.on_diagnostics, reliable)
    pubs = {key: node.create_publisher(msg_type, topic, reliable) for key, (topic, msg_type) in TOPICS.items()}
    reset_pub = node.create_publisher(Empty, E_STOP_RESET_TOPIC, reliable)
    valid = ValidMessages(joint_names, limits.lower, limits.upper, cfg.image_px, cfg.sensor_rate_hz, cfg.seed)
    bad = MalformedMessages(valid, cfg.seed)

    def now_s() -> float:
        return node.get_clock().now().nanoseconds * 1e-9

    def stream(key: str, make: Callable[[float], object]):
        def tick():
            pubs[key].publish(make(now_s()))
            result.valid_sent[key] += 1
        return tick

    node.create_timer(1.0 / cfg.joint_rate_hz, stream("joint_states", valid.joint_state))
    for key in ("camera", "depth", "audio", "tactile"):
        node.create_timer(1.0 / cfg.sensor_rate_hz, stream(key, getattr(valid, key)))
    spin = threading.Thread(target=_spin, args=(executor,), name="sage_fuzz_spin", daemon=True)
    spin.start()
    bursts: list[tuple[float, float]] = []
    try:
        log(f"fuzz: waiting for commands (nodes' logs in {result.log_dir})")
        start = time.monotonic()
        t_start = now_s()
        while not listener.commanding(t_start):
            if nodes.exited() or time.monotonic() - start > cfg.startup_timeout_s:
                _note_dead(nodes, listener, cfg, result, startup=True)
                return
            time.sleep(0.1)
        log(f"fuzz: commanding after {time.monotonic() - start:.1f} s; sending {cfg.malformed_messages} "
            f"malformed messages in bursts of {cfg.burst_messages}")
        starts: list[float] = []
        ends: list[float] = []
        while result.sent < cfg.malformed_messages:
            n = min(cfg.burst_messages, cfg.malformed_messages - result.sent)
            estop = result.bursts % 3 == 2  # every third burst floods the e-stop, then resets it
            starts.append(now_s())
            _burst(cfg, n, estop, bad, pubs, reset_pub, now_s, result)
            ends.append(now_s())
            result.bursts += 1
            result.estop_bursts += estop
            # Another run on this domain would interleave its commands with ours: say so by name.
            result.command_publishers = max(result.command_publishers, node.count_publishers(COMMAND_TOPIC))
            if not _window(cfg, nodes, listener, result):
                break
            if result.bursts % 10 == 0:
                log(f"fuzz: {result.sent} sent, {len(listener.cmd_stamps)} commands")
        bursts = list(zip(ends, starts[1:] + [now_s()], strict=True))
        time.sleep(2 * cfg.control_diagnostics_period_s)  # the window's last diagnostics interval
    finally:
        executor.shutdown(timeout_sec=2.0)
        spin.join(5.0)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    _judge(listener, limits, bursts, cfg, result)


def _spin(executor) -> None:
    from rclpy.executors import ExternalShutdownException

    try:
        executor.spin()
    except (ExternalShutdownException, KeyboardInterrupt):
        pass


def _burst(cfg: FuzzConfig, n: int, estop: bool, bad: MalformedMessages, pubs, reset_pub, now_s,
           result: FuzzResult) -> None:
    flood = int(0.2 * n) if estop else 0
    slots = set(bad.rng.choice(n, flood, replace=False).tolist()) if flood else set()
    for i in range(n):
        t = now_s()
        if i in slots:
            msg = Bool(data=bool(bad.rng.random() < 0.9))  # mostly true; false must be ignored
            topic, kind = "e_stop", "flood_true" if msg.data else "flood_false"
        else:
            topic, kind, msg = bad.draw(t)
        pubs[topic].publish(msg)
        result.sent += 1
        result.sent_by_kind[f"{topic}.{kind}"] += 1
        if cfg.message_gap_s:
            time.sleep(cfg.message_gap_s)
    if flood:
        time.sleep(0.05)  # the reset must not overtake the flood (different topics, no common order)
        reset_pub.publish(Empty())


def _window(cfg: FuzzConfig, nodes: NodeProcesses, listener: _Listener, result: FuzzResult) -> bool:
    """Valid input only for ``window_s``; False when a node died or stopped answering."""
    end = time.monotonic() + cfg.window_s
    while time.monotonic() < end:
        if _note_dead(nodes, listener, cfg, result):
            return False
        time.sleep(0.05)
    return True


def _note_dead(nodes: NodeProcesses, listener: _Listener, cfg: FuzzConfig, result: FuzzResult,
               startup: bool = False) -> bool:
    """Record nodes that exited or went silent (and, at start-up, why commands never came)."""
    now = time.monotonic()
    gone = {name: f"{name} exited with code {code}" for name, code in nodes.exited().items()}
    with listener.lock:
        seen = dict(listener.last_seen)
    for spec in RUNTIME_NODES:
        last = seen.get(spec.name)
        if spec.name not in gone and last is not None and now - last > cfg.answer_timeout_s:
            gone[spec.name] = f"{spec.name} silent for {now - last:.1f} s"
    detail = list(gone.values())
    if startup:
        detail += [f"{spec.name} never published diagnostics" for spec in RUNTIME_NODES
                   if spec.name not in seen and spec.name not in gone]
        detail.append(f"no commands within {cfg.startup_timeout_s:g} s of start-up")
    if detail:
        result.dead = len(gone)
        result.dead_detail = detail
    return bool(detail)


def _judge(listener: _Listener, limits, bursts: list[tuple[float, float]], cfg: FuzzConfig,
           result: FuzzResult) -> None:
    with listener.lock:
        stamps = np.array(listener.cmd_stamps, dtype=np.int64)
        positions = np.array(listener.cmd_positions, dtype=np.float64).reshape(len(stamps), len(listener.names))
        control = list(listener.control)
        result.node_counters = dict(listener.latest)
        missed, ticks = listener.late_ticks
        bad_shape = listener.bad_shape
        h_rates = [x for x in listener.h_rates[2:] if math.isfinite(x)]  # the first ones cover start-up
    verdict = check_commands(stamps, positions, limits.lower, limits.upper, limits.velocity_max,
                             cfg.speed_tolerance_rad, cfg.speed_tolerance_s)
    result.commands = len(stamps) + bad_shape
    result.violations = verdict["violations"] + bad_shape
    result.nonfinite = verdict["nonfinite"]
    result.speed_pairs = verdict["pairs"]
    result.speed_violations = verdict["speed_violations"]
    result.max_speed_ratio = verdict["max_speed_ratio"]
    if len(stamps) > 1:
        floored = np.maximum(np.diff(stamps) * 1e-9, 1.0 / cfg.control_rate_hz)
        with np.errstate(invalid="ignore"):
            ratio = np.abs(np.diff(positions, axis=0)) / (floored[:, None] * limits.velocity_max[None, :])
        result.max_speed_ratio_period_floor = float(np.nanmax(ratio)) if np.isfinite(ratio).any() else math.nan
    result.late_tick_fraction = missed / ticks if ticks else 0.0
    result.burst_windows_s, result.control_diag = bursts, control
    result.recovery_s = recovery_times(bursts, control, stamps * 1e-9)
    periods = max(1, round(0.3 / cfg.control_diagnostics_period_s))
    result.resume_s = recovery_times(bursts, control, stamps * 1e-9, sustained=periods)
    result.h_rate_hz = float(np.median(h_rates)) if h_rates else math.nan
