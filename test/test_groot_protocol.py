"""GR00T wire protocol, client and modality map against the protocol stand-in over real ZeroMQ
(loopback), both protocol versions. No rclpy.

The layouts checked here are Isaac-GR00T's: ``gr00t/eval/service.py`` + ``gr00t/eval/robot.py``
(N1.5) and ``gr00t/policy/server_client.py`` (N1.6).
"""

from __future__ import annotations

import io
import os
import pickle
import socket
import subprocess
import sys
import threading
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from sage_hl_ros.core.config import ConfigError
from sage_hl_ros.groot import protocol
from sage_hl_ros.groot.client import GrootClient, GrootTeacher, GrootTimeout, map_problems
from sage_hl_ros.groot.modality_map import ModalityMap, load_modality_map
from sage_hl_ros.groot.protocol import N15, N16, ModalityConfig, ProtocolError, ServerError
from sage_hl_ros.groot.standin import StandinServer, _Unpickled
from sage_hl_ros.paths import config_file

os.environ.setdefault("MUJOCO_GL", "egl")

SIM_MAP = config_file("groot/sim_arm.yaml")
HOME = np.array([0.0, 0.35, 0.0, -2.1, 0.0, 2.45, 0.0])
TARGET = np.array([0.45, -0.1, 0.04])
IMAGE = np.zeros((32, 32, 3), dtype=np.uint8)
JOINTS = [f"joint{i}" for i in range(1, 8)]


@pytest.fixture(scope="module")
def sim_map() -> ModalityMap:
    return load_modality_map(SIM_MAP)


@pytest.fixture(scope="module")
def expert():
    from sage_hl_ros.sim.expert import ReachExpert

    return ReachExpert()


@pytest.fixture
def server(request, sim_map):
    srv = StandinServer(sim_map, getattr(request, "param", N16)).start()
    yield srv
    srv.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _expected_chunk(expert, q, target, k=16) -> np.ndarray:
    """The stand-in's policy, recomputed: the expert's command applied k times (float32 inputs, as sent)."""
    q = np.asarray(q, dtype=np.float32).astype(np.float64)
    target = np.asarray(target, dtype=np.float32).astype(np.float64)
    rows = []
    for _ in range(k):
        q = expert.command(q, target)
        rows.append(q)
    return np.array(rows)


# --------------------------------------------------------------------------- codec


def test_arrays_travel_as_tagged_npy_bytes():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    raw = msgpack.unpackb(protocol.encode({"a": arr}), raw=False)  # no hook: the frame as GR00T sees it
    assert raw["a"]["__ndarray_class__"] is True
    np.testing.assert_array_equal(np.load(io.BytesIO(raw["a"]["as_npy"]), allow_pickle=False), arr)
    back = protocol.decode(protocol.encode({"obs": {"v": [arr, np.float32(2.5)]}, "t": (1, 2)}))
    np.testing.assert_array_equal(back["obs"]["v"][0], arr)
    assert back["obs"]["v"][1] == 2.5 and back["t"] == [1, 2]


def test_object_arrays_are_never_sent():
    with pytest.raises(TypeError, match="pickle"):
        protocol.encode({"x": np.array([object()], dtype=object)})


def test_a_pickled_array_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    buf = io.BytesIO()
    np.save(buf, np.array([_Unpickled(str(marker))], dtype=object), allow_pickle=True)
    frame = msgpack.packb({"action.arm": {"__ndarray_class__": True, "as_npy": buf.getvalue()}})
    with pytest.raises(ProtocolError, match="unpickling"):
        protocol.decode(frame)
    assert not marker.exists()
    np.load(io.BytesIO(buf.getvalue()), allow_pickle=True)  # the payload is live: unpickling it would run
    assert marker.exists()


@pytest.mark.parametrize("frame", [
    pickle.dumps({"action.arm": np.zeros((16, 7))}),  # an old TorchSerializer-style pickled reply
    protocol.encode({"a": 1})[:-1],  # truncated
    protocol.encode({"a": 1}) + protocol.encode({"b": 2}),  # two frames glued together
    msgpack.packb({"x": {"__ndarray_class__": True, "as_npy": b"not npy"}}),
    msgpack.packb({"x": {"__ndarray_class__": True, "as_npy": "text"}}),
], ids=["pickle", "truncated", "two-values", "bad-npy", "npy-not-bytes"])
def test_undecodable_replies_are_protocol_errors(frame):
    with pytest.raises(ProtocolError):
        protocol.decode(frame)


def test_modality_configs_in_both_encodings():
    cfg = {"action": ModalityConfig(tuple(range(16)), ("action.arm",))}
    for version in (N15, N16):
        frame = protocol.encode(protocol.encode_modality_configs(cfg, version))
        raw = msgpack.unpackb(frame, raw=False)["action"]
        assert raw["__ModalityConfig_class__"] is True
        assert isinstance(raw["as_json"], str if version == N15 else dict)  # N1.5 JSON text, N1.6 a map
        assert protocol.parse_modality_configs(protocol.decode(frame)) == cfg
    assert protocol.detect_version(cfg) == N15
    assert protocol.detect_version({"action": ModalityConfig((0,), ("arm",))}) == N16
    with pytest.raises(ProtocolError, match="mix"):
        protocol.detect_version({"action": ModalityConfig((0,), ("arm", "action.hand"))})
    bad = msgpack.packb({"action": {"__ModalityConfig_class__": True, "as_json": {"delta_indices": "x"}}})
    with pytest.raises(ProtocolError, match="delta_indices"):
        protocol.decode(bad)


def test_observation_layouts():
    video, state = {"ego_view": IMAGE}, {"arm": HOME}
    flat = protocol.observation_payload(N15, video, state, "annotation.human.action.task_description", "go")
    assert flat["video.ego_view"].shape == (1, 32, 32, 3) and flat["video.ego_view"].dtype == np.uint8
    assert flat["state.arm"].shape == (1, 7) and flat["state.arm"].dtype == np.float32
    assert flat["annotation.human.action.task_description"] == ["go"]
    nested = protocol.observation_payload(N16, video, state, "annotation.human.task_description", "go")
    obs = nested["observation"]
    assert set(nested) == {"observation", "options"}
    assert obs["video"]["ego_view"].shape == (1, 1, 32, 32, 3) and obs["state"]["arm"].shape == (1, 1, 7)
    assert obs["language"] == {"annotation.human.task_description": [["go"]]}
    for version, payload in ((N15, flat), (N16, nested)):
        v, s, _ = protocol.parse_observation(version, protocol.decode(protocol.encode(payload)))
        assert v["ego_view"].shape == (32, 32, 3) and s["arm"].shape == (7,)


def _reply(version, arm):
    """A reply as a server of ``version`` sends it, with ``arm`` as is (any dtype or shape)."""
    payload = {"action.arm": arm} if version == N15 else [{"arm": arm[None]}, {}]
    return protocol.decode(protocol.encode(payload))


@pytest.mark.parametrize("version", [N15, N16])
def test_action_replies_are_checked(version):
    good = np.ones((16, 7))
    assert protocol.parse_action(version, _reply(version, good), {"arm": 7}, 16)["arm"].shape == (16, 7)
    for arm, match in ((np.ones((16, 6)), "shape"), (np.full((16, 7), np.nan), "non-finite"),
                       (np.ones(7), "shape"), (np.array([["a"] * 7] * 16), "dtype")):
        with pytest.raises(ProtocolError, match=match):
            protocol.parse_action(version, _reply(version, arm), {"arm": 7}, 16)
    with pytest.raises(ProtocolError, match="steps"):
        protocol.parse_action(version, _reply(version, np.ones((8, 7))), {"arm": 7}, 16)
    with pytest.raises(ProtocolError, match="lacks"):
        protocol.parse_action(version, _reply(version, good), {"hand": 2}, 16)
    with pytest.raises(ProtocolError):
        protocol.parse_action(version, "ok", {"arm": 7}, 16)
    two = protocol.action_payload(version, {"arm": good, "hand": np.ones((8, 2))})
    with pytest.raises(ProtocolError, match="other groups"):
        protocol.parse_action(version, protocol.decode(protocol.encode(two)), {"arm": 7, "hand": 2})


def test_n16_batch_dimension_is_required():
    with pytest.raises(ProtocolError, match="shape"):
        protocol.parse_action(N16, [{"arm": np.ones((2, 16, 7))}, {}], {"arm": 7})
    with pytest.raises(ProtocolError, match="action_map, info"):
        protocol.parse_action(N16, {"arm": np.ones((1, 16, 7))}, {"arm": 7})


# --------------------------------------------------------------------------- modality map


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "map.yaml"
    path.write_text(text)
    return path


BASE = ("cameras: {ego_view: /rgb}\nstate: {arm: [joint1, joint2]}\n"
        "state_points: {target: /sim/target}\naction: {arm: [joint1, joint2]}\n")


@pytest.mark.parametrize("extra,match", [
    ("protocol: n2\n", "protocol"),
    ("action_step_s: 0\n", "action_step_s"),
    ("label_step: 16\n", "label_step"),
    ("bogus: 1\n", "unknown key 'bogus'"),
])
def test_bad_modality_maps_name_the_file_and_key(tmp_path, extra, match):
    path = _write(tmp_path, BASE + extra)
    with pytest.raises(ConfigError, match=match) as info:
        load_modality_map(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text,match", [
    ("cameras: {video.ego_view: /rgb}\nstate: {arm: [j1]}\naction: {arm: [j1]}\n", "bare GR00T key"),
    ("cameras: {ego_view: /rgb}\nstate: {arm: [j1]}\naction: {a: [j1], b: [j1]}\n", "already in action.a"),
    ("cameras: {ego_view: /rgb}\nstate: {arm: [j1]}\nstate_points: {arm: /p}\naction: {a: [j1]}\n", "both"),
    ("cameras: {ego_view: /rgb}\nstate: {arm: [j1]}\n", "action: declare"),
])
def test_inconsistent_modality_maps_are_refused(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_modality_map(_write(tmp_path, text))


def test_map_problems_against_the_server(sim_map, server):
    configs = {"video": ModalityConfig((0,), ("video.ego_view", "video.wrist")),
               "state": ModalityConfig((0,), ("state.arm", "state.target")),
               "action": ModalityConfig(tuple(range(8)), ("action.arm",)),
               "language": ModalityConfig((0,), ("annotation.human.action.task_description",))}
    problems = map_problems(sim_map, configs, N15)
    assert any("video.wrist" in p for p in problems)
    assert any("language_key" in p for p in problems)
    assert any("8 steps" in p for p in problems)
    assert map_problems(sim_map, server.modality_configs(), server.version) == []


# --------------------------------------------------------------------------- client <-> stand-in


@pytest.mark.parametrize("server", [N15, N16], indirect=True)
def test_client_against_the_standin(server, sim_map, expert):
    client = GrootClient(server.endpoint, 5.0)
    try:
        assert client.ping() == {"status": "ok", "message": "Server is running"}
        configs = client.get_modality_config()
        prefix = "video." if server.version == N15 else ""
        assert configs["video"].modality_keys == (f"{prefix}ego_view",)
        assert len(configs["action"].delta_indices) == 16
        teacher = GrootTeacher(client, sim_map, "auto")
        teacher.connect()
        assert teacher.version == server.version and teacher.problems == [] and teacher.horizon == 16
        chunk = teacher.query({"ego_view": IMAGE}, HOME, {"target": TARGET})
        np.testing.assert_allclose(chunk, _expected_chunk(expert, HOME, TARGET), atol=1e-5)
        if server.version == N16:
            assert client.reset() == {} and server.counts["resets"] == 1
        else:
            with pytest.raises(ServerError, match="Unknown endpoint"):
                client.reset()
    finally:
        client.close()


@pytest.mark.parametrize("version", [N15, N16])
def test_actions_map_back_to_joint_names_in_order(tmp_path, version, expert):
    """Groups list joints in another order than the robot: every column lands on its joint by name."""
    path = _write(tmp_path, "cameras: {ego_view: /rgb}\n"
                            "state: {wrist: [joint7, joint5, joint6], base: [joint3, joint1, joint2, joint4]}\n"
                            "state_points: {target: /sim/target}\n"
                            "action: {hand: [joint6, joint7], body: [joint4, joint2, joint1, joint3, joint5]}\n")
    mmap = load_modality_map(path)
    server = StandinServer(mmap, version).start()
    client = GrootClient(server.endpoint, 5.0)
    try:
        q = HOME + 0.1 * np.arange(7)
        positions = np.array([q[JOINTS.index(j)] for j in mmap.state_joint_names])
        chunk = GrootTeacher(client, mmap, version).query({"ego_view": IMAGE}, positions, {"target": TARGET})
        want = _expected_chunk(expert, q, TARGET)
        assert mmap.action_joint_names == ["joint6", "joint7", "joint4", "joint2", "joint1", "joint3", "joint5"]
        for col, name in enumerate(mmap.action_joint_names):
            np.testing.assert_allclose(chunk[:, col], want[:, JOINTS.index(name)], atol=1e-5)
    finally:
        client.close()
        server.stop()


def test_timeout_rebuilds_the_socket_and_the_next_call_works(server):
    client = GrootClient(server.endpoint, 0.2)
    try:
        server.fault, server.delay_s = "slow", 0.6
        with pytest.raises(GrootTimeout, match="0.2 s"):
            client.get_action(protocol.observation_payload(N16, {"ego_view": IMAGE},
                                                           {"arm": HOME, "target": TARGET},
                                                           "annotation.human.task_description", "go"))
        assert client.timeouts == 1 and client.rebuilds == 1
        server.fault = "none"
        for _ in range(20):  # the server is still sleeping on the first request for a while
            try:
                assert client.ping()["status"] == "ok"  # a plain REQ socket would raise EFSM here
                break
            except GrootTimeout:
                continue
        else:
            pytest.fail("no reply after the slow one")
    finally:
        client.close()


def test_server_down_then_back(sim_map):
    port = _free_port()
    client = GrootClient(f"tcp://127.0.0.1:{port}", 0.2)
    try:
        with pytest.raises(GrootTimeout):
            client.ping()
        server = StandinServer(sim_map, N15, port=port).start()
        try:
            assert client.ping()["status"] == "ok"
        finally:
            server.stop()
    finally:
        client.close()


def test_error_replies_raise_server_errors(server):
    client = GrootClient(server.endpoint, 5.0)
    try:
        with pytest.raises(ServerError, match="Unknown endpoint"):
            client.call("no_such_endpoint", requires_input=False)
        with pytest.raises(ServerError, match="state 'target'"):  # a bad observation, as a real server says
            client.get_action(protocol.observation_payload(N16, {"ego_view": IMAGE}, {"arm": HOME},
                                                           "annotation.human.task_description", "go"))
        assert client.ping()["status"] == "ok"
    finally:
        client.close()


def test_bare_error_frame():
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    port = rep.bind_to_random_port("tcp://127.0.0.1")

    def answer():
        rep.recv()
        rep.send(b"ERROR")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    client = GrootClient(f"tcp://127.0.0.1:{port}", 5.0)
    try:
        with pytest.raises(ServerError, match="ERROR"):
            client.ping()
    finally:
        client.close()
        thread.join(5.0)
        rep.close()
        ctx.term()


def test_api_token(sim_map):
    token = "tok-PROTOCOL-secret-123"
    server = StandinServer(sim_map, N16, api_token=token).start()
    try:
        bad = GrootClient(server.endpoint, 5.0, "wrong")
        good = GrootClient(server.endpoint, 5.0, token)
        try:
            with pytest.raises(ServerError, match="Unauthorized"):
                bad.ping()
            assert good.ping()["status"] == "ok"
            assert token not in repr(good) and "api_token=set" in repr(good)
        finally:
            bad.close()
            good.close()
    finally:
        server.stop()


def test_endpoint_and_timeout_are_validated():
    with pytest.raises(ValueError, match="tcp://"):
        GrootClient("localhost:5555", 1.0)
    with pytest.raises(ValueError, match="timeout_s"):
        GrootClient("tcp://127.0.0.1:5555", 0.0)


def test_standin_cli_serves_and_stops_on_kill():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sage_hl_ros.groot.standin", "--port", str(port),
                             "--protocol", "n1.6"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = GrootClient(f"tcp://127.0.0.1:{port}", 30.0)
    try:
        assert client.ping()["status"] == "ok"
        assert protocol.detect_version(client.get_modality_config()) == N16
        client.call("kill", requires_input=False)
        assert proc.wait(30) == 0
        assert "STAND-IN (not GR00T" in proc.stdout.read()
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_groot_package_is_pure():
    """sage_hl_ros.groot never imports rclpy: the client and stand-in run on a GPU host without ROS."""
    code = ("import sys, sage_hl_ros.groot.protocol, sage_hl_ros.groot.client, sage_hl_ros.groot.modality_map, "
            "sage_hl_ros.groot.standin; print('rclpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


class _NoModalityConfig(StandinServer):
    """An N1.6 PolicyServer whose policy has no get_modality_config answers {}."""

    def modality_configs(self):
        return {}


def test_explicit_protocol_works_without_a_modality_config(sim_map, expert):
    server = _NoModalityConfig(sim_map, N16).start()
    client = GrootClient(server.endpoint, 5.0)
    try:
        with pytest.raises(ProtocolError, match="empty"):
            GrootTeacher(client, sim_map, "auto").connect()
        teacher = GrootTeacher(client, sim_map, N16)
        chunk = teacher.query({"ego_view": IMAGE}, HOME, {"target": TARGET})
        assert teacher.version == N16 and teacher.horizon == 16
        np.testing.assert_allclose(chunk, _expected_chunk(expert, HOME, TARGET), atol=1e-5)
    finally:
        client.close()
        server.stop()
