"""PROTOCOL STAND-IN for a GR00T policy server: a test fixture and a development tool, NOT GR00T.

It speaks the same wire protocol as Isaac-GR00T's servers (N1.5 ``RobotInferenceServer``, N1.6
``PolicyServer``: ZeroMQ REP, msgpack frames, tagged ``np.save`` arrays, endpoints ``ping``,
``kill``, ``get_modality_config``, ``get_action`` and, in N1.6, ``reset``; optional API token), so
the teacher node and the tests run the real exchange without a GPU. Its "policy" is the sim's
scripted IK expert (:class:`sage_hl_ros.sim.expert.ReachExpert`): it reads the arm's joint
positions and the privileged target from the observation's state keys (``state_points.target``
of the modality map: GR00T itself would see the target in the camera; the stand-in ignores the
images) and returns a chunk of K joint-position targets, the expert's command applied K times as
if the arm reached each one (chunk[0] is exactly the sim expert's label for that state).

Faults (``fault``/``--fault``) make it misbehave the ways a real server can, for the tests:
``error`` ({"error": ...}), ``wrong_shape`` (one action column short), ``nan``, ``pickle`` (an
object array that only unpickling could read), ``garbage`` (a pickled reply instead of msgpack),
``slow`` (reply after ``delay_s``).

    python -m sage_hl_ros.groot.standin --port 5555 --protocol n1.6
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
import zmq

from ..core.config import load_yaml
from ..paths import config_file
from . import protocol
from .client import API_TOKEN_ENV
from .modality_map import ModalityMap, load_modality_map
from .protocol import N15, N16, PROTOCOLS, ModalityConfig, ProtocolError

__all__ = ["StandinServer", "FAULTS", "TARGET_KEY", "main"]

FAULTS = ("none", "error", "wrong_shape", "nan", "pickle", "garbage", "slow")
TARGET_KEY = "target"
DEFAULT_MAP = "groot/sim_arm.yaml"


class _Unpickled:
    """What the ``pickle`` fault's array holds: unpickling it creates ``marker`` (a test can check
    that the client never unpickled it)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        if self.marker:
            return (Path.touch, (Path(self.marker),))
        return (str, ("unpickled",))


class StandinServer:
    """REP server on ``tcp://host:port`` (port 0: a free one, see ``endpoint``); ``start()`` serves
    from a thread, ``serve()`` in the caller's thread until ``stop()`` or the ``kill`` endpoint."""

    def __init__(self, mmap: ModalityMap, version: str, port: int = 0, host: str = "127.0.0.1",
                 api_token: str = "", sim_config_path: str | Path | None = None, fault: str = "none",
                 delay_s: float = 0.0, pickle_marker: str = ""):
        if version not in PROTOCOLS:
            raise ValueError(f"protocol {version!r}; choose one of {', '.join(PROTOCOLS)}")
        if TARGET_KEY not in mmap.state_points:
            raise ValueError(f"the stand-in's expert needs the target: the modality map must have "
                             f"state_points.{TARGET_KEY}")
        self.map, self.version = mmap, version
        self.horizon = mmap.action_horizon or 16
        self.fault, self.delay_s, self.pickle_marker = fault, float(delay_s), pickle_marker
        self._token = api_token
        self._expert, self._joint_names = _make_expert(sim_config_path)
        missing = [j for j in self._joint_names if j not in mmap.state_joint_names]
        if missing:
            raise ValueError(f"the modality map's state lacks the sim's joints {missing}")
        self.counts = {"requests": 0, "get_action": 0, "errors": 0, "faults": 0, "resets": 0}
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        if port == 0:
            port = self._socket.bind_to_random_port(f"tcp://{host}")
        else:
            self._socket.bind(f"tcp://{host}:{port}")
        self.port = port
        self.endpoint = f"tcp://{host}:{port}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ serving
    def start(self) -> StandinServer:
        self._thread = threading.Thread(target=self.serve, name="groot-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        self._socket.close(linger=0)
        self._context.term()

    def serve(self) -> None:
        while not self._stop.is_set():
            if not self._socket.poll(100):
                continue
            frame = self._socket.recv()
            self.counts["requests"] += 1
            self._socket.send(self._answer(frame))

    def _answer(self, frame: bytes) -> bytes:
        try:
            request = protocol.decode(frame)
            if not isinstance(request, dict):
                raise ProtocolError("request is not a map")
            if self._token and request.get("api_token") != self._token:
                return protocol.encode({"error": "Unauthorized: Invalid API token"})
            endpoint = request.get("endpoint", "get_action")
            if endpoint == "ping":
                return protocol.encode(protocol.PING_REPLY)
            if endpoint == "kill":
                self._stop.set()
                return protocol.encode({})
            if endpoint == "get_modality_config":
                return protocol.encode(protocol.encode_modality_configs(self.modality_configs(), self.version))
            if endpoint == "reset" and self.version == N16:
                self.counts["resets"] += 1
                return protocol.encode({})
            if endpoint == "get_action":
                self.counts["get_action"] += 1
                return self._get_action(request.get("data", {}))
            raise ValueError(f"Unknown endpoint: {endpoint}")
        except Exception as exc:  # a real server answers every failure with {"error": ...}
            self.counts["errors"] += 1
            return protocol.encode({"error": str(exc)})

    # ------------------------------------------------------------------ the policy
    def modality_configs(self) -> dict[str, ModalityConfig]:
        def prefix(modality, keys):
            return tuple(f"{modality}.{k}" if self.version == N15 else k for k in keys)

        return {
            "video": ModalityConfig((0,), prefix("video", self.map.cameras)),
            "state": ModalityConfig((0,), prefix("state", list(self.map.state) + list(self.map.state_points))),
            "action": ModalityConfig(tuple(range(self.horizon)), prefix("action", self.map.action)),
            "language": ModalityConfig((0,), (self.map.language_key,)),
        }

    def _get_action(self, data: Any) -> bytes:
        if self.delay_s > 0 and self.fault == "slow":
            time.sleep(self.delay_s)
        video, state, language = protocol.parse_observation(self.version, data)
        for cam in self.map.cameras:
            frame = video.get(cam)
            if frame is None or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"video {cam!r} must be uint8 (H, W, 3), got "
                                 f"{None if frame is None else (frame.dtype, frame.shape)}")
        if self.map.language_key not in language:
            raise ValueError(f"language {self.map.language_key!r} missing")
        positions: dict[str, float] = {}
        for key, joints in self.map.state.items():
            values = state.get(key)
            if values is None or values.shape != (len(joints),):
                raise ValueError(f"state {key!r} must have shape ({len(joints)},), got "
                                 f"{None if values is None else values.shape}")
            positions.update(zip(joints, values.astype(np.float64), strict=True))
        target = state.get(TARGET_KEY)
        if target is None or target.shape != (3,):
            raise ValueError(f"state {TARGET_KEY!r} must be (x, y, z), got {None if target is None else target.shape}")
        q = np.array([positions[j] for j in self._joint_names])
        rows = []
        for _ in range(self.horizon):
            q = self._expert.command(q, target.astype(np.float64))
            rows.append(q)
        by_name = dict(zip(self._joint_names, np.array(rows).T, strict=True))
        actions = {key: np.stack([by_name[j] for j in joints], axis=1) for key, joints in self.map.action.items()}
        return self._with_fault(actions)

    def _with_fault(self, actions: dict[str, np.ndarray]) -> bytes:
        fault = self.fault
        if fault not in ("none", "slow"):
            self.counts["faults"] += 1
        if fault == "error":
            return protocol.encode({"error": "stand-in fault: injected server error"})
        if fault == "garbage":
            return pickle.dumps(protocol.action_payload(self.version, actions))
        if fault == "wrong_shape":
            actions = {k: v[:, :-1] for k, v in actions.items()}
        elif fault == "nan":
            actions = {k: np.full_like(v, np.nan) for k, v in actions.items()}
        payload = protocol.action_payload(self.version, actions)
        if fault == "pickle":
            buf = io.BytesIO()
            np.save(buf, np.array([_Unpickled(self.pickle_marker)], dtype=object), allow_pickle=True)
            tagged = {protocol.NDARRAY_TAG: True, "as_npy": buf.getvalue()}
            first = next(iter(self.map.action))
            if self.version == N15:
                payload[f"action.{first}"] = tagged
            else:
                payload[0][first] = tagged
        return protocol.encode(payload)


def _make_expert(sim_config_path):
    from ..sim.expert import ExpertConfig, ReachExpert
    from ..sim.world import SimConfig

    path = Path(sim_config_path) if sim_config_path else config_file("sim.yaml")
    sim_cfg = SimConfig.from_yaml(path, section="sim")
    raw = yaml.safe_load(path.read_text())
    has_expert = isinstance(raw, dict) and "expert" in raw
    expert_cfg = load_yaml(ExpertConfig, path, "expert") if has_expert else ExpertConfig()
    expert = ReachExpert(expert_cfg, sim_cfg)
    return expert, list(expert.joint_names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sage_hl_ros.groot.standin",
        description="GR00T protocol STAND-IN (test fixture / dev tool, not GR00T): answers get_action "
                    "from the sim's IK expert over the GR00T N1.5/N1.6 ZeroMQ protocol.")
    parser.add_argument("--port", type=int, default=5555)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (* = all interfaces)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default=N16)
    parser.add_argument("--modality-map", default="", help=f"modality map YAML (default config/{DEFAULT_MAP})")
    parser.add_argument("--sim-config", default="", help="sim YAML for the expert (default config/sim.yaml)")
    parser.add_argument("--fault", choices=FAULTS, default="none")
    parser.add_argument("--delay-s", type=float, default=0.0, help="reply delay for --fault slow [s]")
    args = parser.parse_args(argv)
    token = os.environ.get(API_TOKEN_ENV, "")  # from the environment only: argv is visible in ps
    try:
        mmap = load_modality_map(args.modality_map or config_file(DEFAULT_MAP))
        server = StandinServer(mmap, args.protocol, args.port, args.host, token, args.sim_config or None,
                               args.fault, args.delay_s)
    except (ValueError, zmq.ZMQError) as exc:  # ConfigError is a ValueError
        print(f"groot stand-in: {exc}", flush=True)
        return 2
    print(f"GR00T protocol STAND-IN (not GR00T; IK expert) {args.protocol} listening on {server.endpoint}"
          f"{' (api token required)' if token else ''}", flush=True)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
