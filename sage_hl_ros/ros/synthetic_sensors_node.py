"""synthetic_sensors (console script ``sage_synthetic_sensors``): sensor streams for tests and demos.

Camera, depth, audio and tactile from ``SyntheticReachTask``.

A goal (a bright blob in the image, a bump in the depth image, a tone in the audio) moves to a
new random place every ``goal_period_s``. Frames are rendered once per goal and re-stamped on
each publish, so even 640x480 at 30 Hz costs little more than the byte copy. Every message is
stamped with the node clock (``use_sim_time`` honoured).

Published topics (QoS: ``qos.<name>.*``, preset "sensor": best-effort, keep-last 5)
    /camera/image_raw        sensor_msgs/Image rgb8, camera_width_px x camera_height_px, camera_rate_hz
    /camera/depth/image_raw  sensor_msgs/Image 32FC1 metres, same size, depth_rate_hz
    /audio/frames            std_msgs/Float32MultiArray dim "samples", audio_frame_samples per frame,
                             at audio_sample_rate_hz / audio_frame_samples frames/s (16000/4096 = 3.9 Hz)
    /tactile/array           std_msgs/Float32MultiArray dim "taxels", tactile_taxels values, tactile_rate_hz
    /synthetic/goal_joints   std_msgs/Float64MultiArray: the joint-space goal the expert would reach,
                             published when the goal moves (reliable, transient-local), so demos
                             can measure how close a learned controller gets
Parameters
    camera_width_px / camera_height_px (int, 128 / 128)   e.g. 640 x 480 for load tests
    camera_rate_hz (30.0), depth_rate_hz (30.0), tactile_rate_hz (100.0)
    audio_sample_rate_hz (int, 16000), audio_frame_samples (int, 4096), tactile_taxels (int, 16)
    rate_scale (float, 1.0)           multiplies every rate (e.g. 0.5 on a loaded machine)
    goal_period_s (float, 3.0)        how often the goal moves
    seed (int, 0)
    camera_topic, depth_topic, audio_topic, tactile_topic (the defaults above; "" = not published,
                                      as for a robot without that sensor)
    camera_frame_id (str, "camera")
    camera_compressed (bool, false)   publish JPEG sensor_msgs/CompressedImage on <camera_topic>/compressed
    extra_camera_topics (str, "")     further cameras, comma-separated (a robot contract's cameras[1:]):
                                      each shows the scene from its own side (SyntheticReachTask views)
                                      at camera_rate_hz; a topic ending in /compressed gets JPEG
"""

from __future__ import annotations

import time

import numpy as np
import torch
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float32MultiArray, Float64MultiArray

from ..core.config import ObservationConfig
from ..core.synthetic import SyntheticReachTask
from . import convert
from .node_main import run_node
from .qos import declare_qos


class SyntheticSensors(Node):
    def __init__(self, node_name: str = "synthetic_sensors", **kwargs):
        super().__init__(node_name, **kwargs)
        torch.set_num_threads(1)

        def p(name, default, description):
            return self.declare_parameter(name, default, ParameterDescriptor(description=description)).value

        width = int(p("camera_width_px", 128, "camera image width [px]"))
        height = int(p("camera_height_px", 128, "camera image height [px]"))
        scale = float(p("rate_scale", 1.0, "multiplies every publishing rate"))
        cam_hz = float(p("camera_rate_hz", 30.0, "camera rate [Hz]")) * scale
        depth_hz = float(p("depth_rate_hz", 30.0, "depth rate [Hz]")) * scale
        tactile_hz = float(p("tactile_rate_hz", 100.0, "tactile rate [Hz]")) * scale
        self.sample_rate = int(p("audio_sample_rate_hz", 16000, "audio sample rate [Hz]"))
        self.frame_samples = int(p("audio_frame_samples", 4096, "samples per audio frame"))
        taxels = int(p("tactile_taxels", 16, "values per tactile array"))
        self.goal_period_s = float(p("goal_period_s", 3.0, "the goal moves this often [s]"))
        seed = int(p("seed", 0, "random seed"))
        topics = {k: str(p(f"{k}_topic", v, f"{k} topic")) for k, v in (
            ("camera", "/camera/image_raw"), ("depth", "/camera/depth/image_raw"),
            ("audio", "/audio/frames"), ("tactile", "/tactile/array"))}
        # A robot whose camera publishes compressed (robot contract cameras[0].compressed): JPEG
        # sensor_msgs/CompressedImage on <camera_topic>/compressed instead of the raw Image.
        self.compressed = bool(p("camera_compressed", False, "JPEG CompressedImage on <camera_topic>/compressed"))
        if self.compressed and topics["camera"]:
            topics["camera"] = topics["camera"].rstrip("/") + "/compressed"
        self._jpeg = b""
        extra = [t.strip() for t in str(p("extra_camera_topics", "", "further cameras' topics, comma-separated"))
                 .split(",") if t.strip()]
        self.frame_id = str(p("camera_frame_id", "camera", "frame_id of camera and depth images"))
        if min(width, height) < 16 or min(cam_hz, depth_hz, tactile_hz, scale) <= 0:
            raise ValueError("camera size must be >= 16 px and every rate > 0")
        if self.sample_rate <= 0 or self.frame_samples <= 0 or taxels <= 0:
            raise ValueError("audio_sample_rate_hz, audio_frame_samples and tactile_taxels must be > 0")
        audio_hz = self.sample_rate / self.frame_samples * scale

        cfg = ObservationConfig(image_height_px=height, image_width_px=width, depth_height_px=height,
                                depth_width_px=width, audio_sample_rate_hz=self.sample_rate,
                                audio_window_samples=max(self.frame_samples, 512), tactile_taxels=taxels,
                                num_cameras=1 + len(extra))
        self.task = SyntheticReachTask(cfg, seed=seed)
        self._rng = np.random.default_rng(seed)
        self._goal_t = -1e9
        self._audio_phase = 0
        self.goal = None
        topics = {k: t for k, t in topics.items() if t}
        self.published = {k: 0 for k in topics}
        types = {"camera": CompressedImage if self.compressed else Image, "depth": Image,
                 "audio": Float32MultiArray, "tactile": Float32MultiArray}
        self._pubs = {k: self.create_publisher(types[k], t, declare_qos(self, k, "sensor")) for k, t in topics.items()}
        self._extra = [(t, self.create_publisher(CompressedImage if t.endswith("/compressed") else Image, t,
                                                 declare_qos(self, "camera", "sensor"))) for t in extra]
        self._views: list[np.ndarray] = []
        self._view_jpegs: list[bytes] = []
        self.published.update(dict.fromkeys(extra, 0))
        if self._extra:
            self.create_timer(1.0 / cam_hz, self._pub_extra_cameras)
        self._goal_pub = self.create_publisher(Float64MultiArray, "/synthetic/goal_joints",
                                               declare_qos(self, "goal", "status"))
        self._maybe_new_goal()
        streams = {"camera": (cam_hz, self._pub_camera, f"camera {width}x{height} @ {cam_hz:g} Hz"),
                   "depth": (depth_hz, self._pub_depth, f"depth @ {depth_hz:g} Hz"),
                   "audio": (audio_hz, self._pub_audio, f"audio {self.frame_samples} samples @ {audio_hz:.2f} Hz"),
                   "tactile": (tactile_hz, self._pub_tactile, f"tactile {taxels} @ {tactile_hz:g} Hz")}
        for key in topics:
            self.create_timer(1.0 / streams[key][0], streams[key][1])
        self.create_timer(0.1, self._maybe_new_goal)  # the goal moves whether or not there is a camera
        self.get_logger().info("synthetic sensors: " + (", ".join(f"{streams[k][2]} on {t}" for k, t in topics.items())
                                                        or "none (every topic empty)")
                               + "".join(f", camera view {k} on {t}" for k, (t, _) in enumerate(self._extra, 1)))

    def _maybe_new_goal(self) -> None:
        now = time.monotonic()
        if now - self._goal_t < self.goal_period_s:
            return
        self._goal_t = now
        self.goal = self.task.sample_goal(1)[0]
        obs = self.task.observation(self.goal, torch.zeros(self.task.cfg.num_joints))
        self._image = np.ascontiguousarray(obs.image)
        self._views = [np.ascontiguousarray(v) for v in obs.extra_views]
        self._view_jpegs = [_jpeg(v) if t.endswith("/compressed") else b""
                            for v, (t, _) in zip(self._views, self._extra, strict=True)]
        if self.compressed:
            self._jpeg = _jpeg(self._image)
        self._depth = np.ascontiguousarray(obs.depth, dtype=np.float32)
        # One second of the goal's tone; frames are consecutive slices of it (continuous phase).
        freq = 300.0 + 400.0 * float(self.goal[2])
        t = np.arange(self.sample_rate) / self.sample_rate
        self._tone = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
        self._tactile = (0.05 * self._rng.random(self.task.cfg.tactile_taxels)).astype(np.float32)
        goal_joints = self.task.joint_goal(self.goal[None])[0].double().numpy()
        self._goal_pub.publish(Float64MultiArray(data=goal_joints.tolist()))

    def _stamp(self):
        return self.get_clock().now().to_msg()

    def _pub_camera(self) -> None:
        if self.compressed:
            msg = CompressedImage(format="jpeg", data=self._jpeg)
            msg.header.stamp, msg.header.frame_id = self._stamp(), self.frame_id
            self._pubs["camera"].publish(msg)
            self.published["camera"] += 1
            return
        self._pubs["camera"].publish(convert.numpy_to_image(self._image, "rgb8", self._stamp(), self.frame_id))
        self.published["camera"] += 1

    def _pub_extra_cameras(self) -> None:
        stamp = self._stamp()
        for (topic, pub), view, jpeg in zip(self._extra, self._views, self._view_jpegs, strict=True):
            if jpeg:
                msg = CompressedImage(format="jpeg", data=jpeg)
                msg.header.stamp, msg.header.frame_id = stamp, self.frame_id
            else:
                msg = convert.numpy_to_image(view, "rgb8", stamp, self.frame_id)
            pub.publish(msg)
            self.published[topic] += 1

    def _pub_depth(self) -> None:
        self._pubs["depth"].publish(convert.numpy_to_image(self._depth, "32FC1", self._stamp(), self.frame_id))
        self.published["depth"] += 1

    def _pub_audio(self) -> None:
        n, tone = self.frame_samples, self._tone
        idx = (self._audio_phase + np.arange(n)) % tone.size
        self._audio_phase = (self._audio_phase + n) % tone.size
        self._pubs["audio"].publish(convert.numpy_to_float32_multiarray(tone[idx], "samples"))
        self.published["audio"] += 1

    def _pub_tactile(self) -> None:
        noise = (0.005 * self._rng.standard_normal(self._tactile.size)).astype(np.float32)
        self._pubs["tactile"].publish(convert.numpy_to_float32_multiarray(self._tactile + noise, "taxels"))
        self.published["tactile"] += 1


def _jpeg(rgb: np.ndarray) -> bytes:
    import io

    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main(args=None) -> None:
    raise SystemExit(run_node(SyntheticSensors, args))


if __name__ == "__main__":
    main()
