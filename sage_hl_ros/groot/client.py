"""ZeroMQ REQ client for a GR00T policy server, and the teacher session on top of it.

Why not the reference clients: they set no socket timeout, so a server that dies mid-request
blocks the caller forever, and a REQ socket whose request got no answer cannot send again. Here
every call has a receive (and send) timeout, LINGER is 0 (closing never waits for a dead peer),
and after a timeout the REQ socket is closed and a fresh one connected: the next call works as
soon as the server is back, with nothing queued from before.

The API token is sent in each request and kept out of ``repr`` and every message raised here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import zmq

from . import protocol
from .modality_map import ModalityMap
from .protocol import N15, N16, ModalityConfig, ProtocolError, ServerError

__all__ = ["GrootClient", "GrootTeacher", "GrootTimeout", "map_problems", "API_TOKEN_ENV"]

API_TOKEN_ENV = "SAGE_GROOT_API_TOKEN"
_SCHEMES = ("tcp://", "ipc://", "inproc://")


class GrootTimeout(TimeoutError):
    """No reply within the timeout (server down, overloaded or unreachable); the socket was rebuilt."""


class GrootClient:
    """One REQ socket to ``endpoint`` (e.g. ``tcp://gpu-host:5555``); not thread-safe (use one per thread)."""

    def __init__(self, endpoint: str, timeout_s: float, api_token: str = "", context: zmq.Context | None = None):
        if not isinstance(endpoint, str) or not endpoint.startswith(_SCHEMES):
            raise ValueError(f"endpoint {endpoint!r}: expected tcp://host:port (or ipc://, inproc://)")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.endpoint = endpoint
        self.timeout_s = float(timeout_s)
        self._token = api_token or ""
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._socket: zmq.Socket | None = None
        self.requests = 0
        self.timeouts = 0
        self.rebuilds = 0
        self.last_rtt_s = math.nan
        self._connect()

    def __repr__(self) -> str:
        token = "set" if self._token else "none"
        return f"GrootClient({self.endpoint!r}, timeout_s={self.timeout_s:g}, api_token={token})"

    def _connect(self) -> None:
        sock = self._context.socket(zmq.REQ)
        ms = max(1, int(round(self.timeout_s * 1000)))
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, ms)
        sock.setsockopt(zmq.SNDTIMEO, ms)
        sock.connect(self.endpoint)
        self._socket = sock

    def _rebuild(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
        self._connect()
        self.rebuilds += 1

    def call(self, endpoint: str, data: Any = None, requires_input: bool = True) -> Any:
        """Send one request and return the decoded reply.

        Raises GrootTimeout (socket rebuilt), ServerError for ``{"error": ...}``, ProtocolError for a
        reply that is not the protocol's (the socket stays usable: the exchange completed).
        """
        if self._socket is None:
            raise RuntimeError("client is closed")
        frame = protocol.encode(protocol.make_request(endpoint, data, self._token, requires_input))
        self.requests += 1
        t0 = time.perf_counter()
        try:
            self._socket.send(frame, copy=False)
            reply = self._socket.recv(copy=True)
        except zmq.Again:
            self.timeouts += 1
            self._rebuild()
            raise GrootTimeout(f"{self.endpoint}: no reply to {endpoint!r} within {self.timeout_s:g} s") from None
        except zmq.ZMQError as exc:  # e.g. EFSM after an interrupted exchange: start over
            self._rebuild()
            raise GrootTimeout(f"{self.endpoint}: {endpoint!r} failed ({exc}); socket rebuilt") from None
        self.last_rtt_s = time.perf_counter() - t0
        if reply == b"ERROR":  # some servers' bare failure reply
            raise ServerError("server replied ERROR (is it the right policy server?)")
        return protocol.check_reply(protocol.decode(reply))

    def ping(self) -> Any:
        return self.call("ping", requires_input=False)

    def get_modality_config(self) -> dict[str, ModalityConfig]:
        return protocol.parse_modality_configs(self.call("get_modality_config", requires_input=False))

    def get_action(self, data: Any) -> Any:
        return self.call("get_action", data)

    def reset(self) -> Any:
        """N1.6 only: clear the policy's per-episode state."""
        return self.call("reset", {"options": None})

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        if self._own_context:
            self._context.term()


def map_problems(mmap: ModalityMap, configs: Mapping[str, ModalityConfig], version: str) -> list[str]:
    """Where the modality map and the server's modality config disagree (empty: they agree)."""
    prefix = (lambda modality: f"{modality}.") if version == N15 else (lambda modality: "")
    wanted = {
        "video": list(mmap.cameras),
        "state": list(mmap.state) + list(mmap.state_points),
        "action": list(mmap.action),
    }
    problems = []
    for modality, keys in wanted.items():
        cfg = configs.get(modality)
        if cfg is None:
            continue
        server = set(cfg.modality_keys)
        ours = {prefix(modality) + k for k in keys}
        if modality in ("video", "state") and server - ours:
            problems.append(f"the server wants {modality} keys the map lacks: {sorted(server - ours)}")
        if ours - server:
            problems.append(f"the map sends {modality} keys the server does not know: {sorted(ours - server)}")
    lang = configs.get("language")
    if lang is not None and mmap.language_key not in lang.modality_keys:
        problems.append(f"language_key {mmap.language_key!r} is not the server's {list(lang.modality_keys)}")
    horizon = protocol.action_horizon(configs)
    if mmap.action_horizon and horizon is not None and horizon != mmap.action_horizon:
        problems.append(f"action_horizon {mmap.action_horizon} but the server returns {horizon} steps")
    obs = protocol.observation_horizon_problem(configs)
    if obs:
        problems.append(obs)
    return problems


class GrootTeacher:
    """Observation (camera frames, joint positions, points) -> action chunk (K, N) by joint name.

    ``connect`` resolves the protocol (``auto``: from the server's modality config) and checks the
    map against the server; it raises like :meth:`GrootClient.call` and can simply be called again
    (after the server was down, it should be: the server may have come back with another model).
    """

    def __init__(self, client: GrootClient, mmap: ModalityMap, protocol_version: str = "auto"):
        if protocol_version not in ("auto", N15, N16):
            raise ValueError(f"protocol {protocol_version!r}; choose auto, n1.5 or n1.6")
        self.client = client
        self.map = mmap
        self.requested = protocol_version
        self.version: str | None = None if protocol_version == "auto" else protocol_version
        self.server_configs: dict[str, ModalityConfig] = {}
        self.problems: list[str] = []
        self.horizon: int | None = mmap.action_horizon or None
        self.connected = False

    def connect(self) -> None:
        note = ""
        try:
            configs = self.client.get_modality_config()
        except (ServerError, ProtocolError) as exc:  # a timeout propagates: nothing to check against
            if self.requested == "auto":
                raise type(exc)(f"protocol auto needs get_modality_config, which failed ({exc}); "
                                "set protocol to n1.5 or n1.6") from None
            configs, note = {}, f"no usable modality config from the server ({exc}); keys not checked"
        if self.requested == "auto":
            if not configs:
                raise ProtocolError("protocol auto: the server's modality config is empty; set protocol")
            self.version = protocol.detect_version(configs)
        self.server_configs = configs
        assert self.version is not None
        self.problems = map_problems(self.map, configs, self.version) if configs else ([note] if note else [])
        self.horizon = self.map.action_horizon or protocol.action_horizon(configs)
        self.connected = True

    def observation(self, images: Mapping[str, np.ndarray], positions: np.ndarray,
                    points: Mapping[str, np.ndarray]) -> Any:
        state = self.map.split_state(np.asarray(positions, dtype=np.float64))
        state.update({k: np.asarray(points[k], dtype=np.float64) for k in self.map.state_points})
        assert self.version is not None
        return protocol.observation_payload(self.version, {k: images[k] for k in self.map.cameras}, state,
                                            self.map.language_key, self.map.task_instruction)

    def query(self, images: Mapping[str, np.ndarray], positions: np.ndarray,
              points: Mapping[str, np.ndarray]) -> np.ndarray:
        """(K, N) joint positions in ``map.action_joint_names`` order; connects first if needed."""
        if not self.connected:
            self.connect()
        assert self.version is not None
        reply = self.client.get_action(self.observation(images, positions, points))
        return self.map.chunk(protocol.parse_action(self.version, reply, self.map.action_dims, self.horizon))
