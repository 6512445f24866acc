"""sage_replay: play a recorded bag back into the ROS graph, with ``/clock`` from its timeline.

    sage_replay --ros-args -p bag:=bags/run1 -p rate:=2.0
    sage-hl-bag replay bags/run1 --rate 2 --loop        # the same, from the CLI

Each message is published at its original offset from the start (receive timestamps of the
recording), divided by ``rate``. Messages are published as the serialized bytes stored in the
bag (rclpy's ``Publisher.publish`` takes ``bytes``: no deserialise/serialise round trip, so
what subscribers get is byte-for-byte what the recorder received).

``/clock`` (rosgraph_msgs/Clock) carries the bag's time at ``clock_rate_hz`` (wall rate), so
nodes started with ``use_sim_time:=true`` run on the bag's timeline: header stamps in the bag
and the clock agree, and their loops run ``rate`` times faster or slower with the replay.
When ``loop`` restarts the bag, ``/clock`` jumps back to the start (as with ``ros2 bag play
--loop``); ROS time users see a backwards jump and reset.

The node exits when the bag is done (unless ``loop``), after waiting up to ``ack_timeout_s``
for reliable subscribers to acknowledge the last messages.

Replay never commands the robot by default: command outputs (``/forward_position_controller/
commands``, ``.../joint_trajectory``, ``/joint_command``, any ``/<controller>/commands`` or
``/<controller>/joint_trajectory``, any JointTrajectory), ``/e_stop``, ``/e_stop/reset`` and
``/diagnostics`` are recorded by default, and republishing them would move the arm past the live
safety filter, latch or release the e-stop, or fake the robot's health. They are skipped, and the
log names each one and why (``sage_hl_ros.bags.topics.replay_hazard`` decides);
``include_commands:=true`` replays them too, with a warning naming them.

A damaged bag fails loudly: before the first message every storage file is checked (MCAP chunk
CRCs and summary, sqlite3 ``quick_check``; ``verify:=false`` skips it); a bag that fails, or a
read error during playback, ends the node with an error naming the storage file and the problem
(exit code 2 before playing, 1 during playback).

Services (std_srvs/Trigger): ``~/pause`` and ``~/resume``. While paused nothing is published
and ``/clock`` holds still. ``start_paused:=true`` waits for ``~/resume`` before the first
message (as ``ros2 bag play --start-paused``): the way to start a replay only once the nodes
that should receive it are up and matched, instead of guessing a ``start_delay_s``.

Parameters
    bag (str, "")                  bag directory (or a single .mcap / .db3 file)
    rate (float, 1.0)              playback speed factor
    loop (bool, false)             start again at the end
    start_offset_s (float, 0.0)    skip this much from the start of the bag
    topics (str[], [])             only these topics ([] = all)
    publish_clock (bool, true)     publish /clock from the bag's timeline
    clock_rate_hz (float, 100.0)   /clock messages per wall-clock second
    clock_topic (str, "/clock")
    qos_reliability (str, "reliable")  reliable (matches every subscriber) | best_effort | recorded
                                   (the first offered profile stored in the bag)
    queue_depth (int, 100)
    start_delay_s (float, 0.5)     wait after creating the publishers (discovery) before playing
    start_paused (bool, false)     wait for ~/resume before playing
    ack_timeout_s (float, 2.0)
    include_commands (bool, false) also replay command, e-stop and /diagnostics topics (see above)
    verify (bool, true)            check the storage files before playing
"""

from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from std_srvs.srv import Trigger

from ..bags.topics import replay_hazard
from ..bags.verify import read_failure, require_intact
from .msg_types import message_class
from .node_main import stop_on_signals

_RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}


def _clock_msg(t_ns: int) -> Clock:
    msg = Clock()
    msg.clock.sec = int(t_ns // 1_000_000_000)
    msg.clock.nanosec = int(t_ns % 1_000_000_000)
    return msg


class ReplayNode(Node):
    def __init__(self, node_name: str = "sage_replay", **kwargs):
        super().__init__(node_name, **kwargs)

        def p(name, default, description):
            kw = {"dynamic_typing": True} if isinstance(default, list) else {}
            return self.declare_parameter(name, default, ParameterDescriptor(description=description, **kw)).value

        self.bag_path = str(p("bag", "", "bag directory or storage file"))
        self.rate = float(p("rate", 1.0, "playback speed factor"))
        self.loop = bool(p("loop", False, "start again at the end"))
        self.start_offset_s = float(p("start_offset_s", 0.0, "skip this much from the start [s]"))
        topics = [t for t in (p("topics", [""], "only these topics ([] = all)") or []) if t]
        self.publish_clock = bool(p("publish_clock", True, "publish /clock from the bag's timeline"))
        self.clock_rate_hz = float(p("clock_rate_hz", 100.0, "/clock messages per wall second"))
        clock_topic = str(p("clock_topic", "/clock", "clock topic"))
        reliability = str(p("qos_reliability", "reliable", "reliable | best_effort | recorded")).lower()
        depth = int(p("queue_depth", 100, "publisher keep-last depth"))
        self.start_delay_s = float(p("start_delay_s", 0.5, "wait for discovery before playing [s]"))
        self.ack_timeout_s = float(p("ack_timeout_s", 2.0, "wait for acknowledgements at the end [s]"))
        start_paused = bool(p("start_paused", False, "wait for ~/resume before playing"))
        include_commands = bool(p("include_commands", False,
                                  "also replay command, e-stop and /diagnostics topics (drives a live robot)"))
        verify = bool(p("verify", True, "check every storage file (chunk CRCs, sqlite3) before playing"))
        if not self.bag_path:
            raise ValueError("parameter 'bag' is empty: set it to a bag directory")
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if not (self.start_offset_s >= 0 and self.clock_rate_hz > 0 and depth >= 1):
            raise ValueError("start_offset_s must be >= 0, clock_rate_hz > 0, queue_depth >= 1")
        if reliability not in (*_RELIABILITY, "recorded"):
            raise ValueError(f"qos_reliability {reliability!r}: choose reliable, best_effort or recorded")

        from rosbags.rosbag2 import Reader

        path = Path(self.bag_path)
        self._path = path
        if not path.exists():
            raise ValueError(f"bag {path} does not exist")
        if verify:  # nothing is published from a bag that fails its check
            require_intact(path)
        self._reader = Reader(path)
        try:
            self._reader.open()
        except Exception as exc:
            raise read_failure(path, exc) from None
        self._log = self.get_logger()
        self._pubs = {}
        self._conns = []
        held_back: dict[str, str] = {}
        for conn in self._reader.connections:
            if topics and conn.topic not in topics:
                continue
            hazard = replay_hazard(conn.topic, conn.msgtype)
            if hazard and not include_commands:
                held_back[conn.topic] = hazard
                continue
            key = (conn.topic, conn.msgtype)
            if key not in self._pubs:
                try:
                    cls = message_class(conn.msgtype)
                except ValueError as exc:
                    self._log.warning(f"not replaying {conn.topic}: {exc}")
                    continue
                offered = list(getattr(conn.ext, "offered_qos_profiles", []) or [])
                rel = _RELIABILITY.get(reliability)
                dur = DurabilityPolicy.VOLATILE
                if offered:
                    if all(q.durability.name == "TRANSIENT_LOCAL" for q in offered):
                        dur = DurabilityPolicy.TRANSIENT_LOCAL
                    if rel is None:
                        rel = (ReliabilityPolicy.BEST_EFFORT if offered[0].reliability.name == "BEST_EFFORT"
                               else ReliabilityPolicy.RELIABLE)
                qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                                 reliability=rel or ReliabilityPolicy.RELIABLE, durability=dur)
                self._pubs[key] = (cls, self.create_publisher(cls, conn.topic, qos))
            self._conns.append(conn)
        if held_back:
            self._log.warning(
                f"not replaying {len(held_back)} topic(s) that would act on a live robot: "
                + ", ".join(f"{t} ({why})" for t, why in sorted(held_back.items()))
                + "; pass include_commands:=true (sage-hl-bag replay --include-commands) to replay them")
        unsafe = sorted({c.topic for c in self._conns if replay_hazard(c.topic, c.msgtype)})
        if unsafe:
            self._log.warning(f"REPLAYING COMMAND / E-STOP / DIAGNOSTICS TOPICS (include_commands): "
                              f"{', '.join(unsafe)}: a robot listening on them will act on the recording")
        self.held_back = sorted(held_back)
        if topics:
            missing = sorted(set(topics) - {c.topic for c in self._conns} - set(held_back))
            if missing:
                self._log.warning(f"topics not in the bag: {', '.join(missing)}")
        self._clock_pub = self.create_publisher(
            Clock, clock_topic, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)) \
            if self.publish_clock else None
        self.start_ns = self._reader.start_time if self._reader.message_count else 0
        self.end_ns = self._reader.end_time - 1 if self._reader.message_count else 0
        self.published = 0
        self.loops_done = 0
        self.error = ""  # why playback stopped early (read failure); exit code 1
        self.done = threading.Event()
        self._stop = threading.Event()
        self._pass = (0, 0.0)  # (bag time, wall time) the pass is anchored at; one attribute, swapped atomically
        self._frozen_ns: int | None = None  # bag time while paused (what /clock shows)
        self._paused = threading.Event()
        self._wake = threading.Event()  # interrupts waits on resume/stop
        if start_paused:
            self._paused.set()
        self._raw_ok = True
        self.create_service(Trigger, "~/pause", self._srv_pause)
        self.create_service(Trigger, "~/resume", self._srv_resume)
        self._log.info(f"replaying {path}: {len(self._conns)} connection(s), "
                       f"{(self.end_ns - self.start_ns) * 1e-9:.2f} s at rate {self.rate:g}"
                       + (", looping" if self.loop else ""))
        self._player = threading.Thread(target=self._play, name="sage_replay_player", daemon=True)
        self._clock_thread = threading.Thread(target=self._clock_loop, name="sage_replay_clock", daemon=True)
        self._player.start()

    # ------------------------------------------------------------------ playback
    def _publish(self, conn, data) -> None:
        cls, pub = self._pubs[(conn.topic, conn.msgtype)]
        raw = bytes(data)
        if self._raw_ok:
            try:
                pub.publish(raw)
                return
            except TypeError:  # an rclpy without raw publishing
                self._raw_ok = False
        from rclpy.serialization import deserialize_message

        pub.publish(deserialize_message(raw, cls))

    def _sleep_until(self, wall_target: float) -> bool:
        while not self._stop.is_set():
            remaining = wall_target - time.monotonic()
            if remaining <= 0:
                return True
            self._stop.wait(min(remaining, 0.05))
        return False

    def _bag_time(self) -> int:
        """The bag's time now (what /clock shows): frozen while paused, capped at the bag's end."""
        frozen = self._frozen_ns
        if frozen is not None:
            return frozen
        t0, wall0 = self._pass
        return max(t0, min(t0 + int((time.monotonic() - wall0) * self.rate * 1e9), self.end_ns))

    def _wait_due(self, t: int) -> bool:
        """Sleep until bag time ``t`` is due, holding while paused; False when stopping."""
        while not self._stop.is_set():
            if self._paused.is_set():
                t0, _wall0 = self._pass
                frozen = self._bag_time()
                self._frozen_ns = frozen
                while self._paused.is_set() and not self._stop.is_set():
                    self._wake.wait(0.1)
                    self._wake.clear()
                # Continue from where it stopped: re-anchor the pass, then unfreeze the clock.
                self._pass = (t0, time.monotonic() - (frozen - t0) * 1e-9 / self.rate)
                self._frozen_ns = None
                continue
            t0, wall0 = self._pass
            remaining = wall0 + (t - t0) * 1e-9 / self.rate - time.monotonic()
            if remaining <= 0:
                return True
            self._wake.wait(min(remaining, 0.05))
            self._wake.clear()
        return False

    def _srv_pause(self, request, response):
        if self.done.is_set():
            response.success, response.message = False, "replay has finished"
        elif self._paused.is_set():
            response.success, response.message = False, "already paused"
        else:
            self._paused.set()
            self._wake.set()
            response.success, response.message = True, "paused"
        return response

    def _srv_resume(self, request, response):
        if not self._paused.is_set():
            response.success, response.message = False, "not paused"
        else:
            self._paused.clear()
            self._wake.set()
            response.success, response.message = True, "resumed"
        return response

    def _play(self) -> None:
        try:
            if not self._sleep_until(time.monotonic() + self.start_delay_s):
                return
            first = self.start_ns + int(self.start_offset_s * 1e9)
            if self._paused.is_set():
                self._frozen_ns = first
            while not self._stop.is_set():
                self._pass = (first, time.monotonic())
                if self._clock_pub is not None:
                    self._clock_pub.publish(_clock_msg(self._bag_time()))
                    if not self._clock_thread.is_alive():
                        self._clock_thread.start()
                for conn, t, data in self._reader.messages(self._conns, start=first):
                    if not self._wait_due(t):
                        return
                    self._publish(conn, data)
                    self.published += 1
                self.loops_done += 1
                if not self.loop:
                    break
            # Let reliable subscribers acknowledge the tail before we exit.
            deadline = time.monotonic() + self.ack_timeout_s
            for _cls, pub in self._pubs.values():
                wait = getattr(pub, "wait_for_all_acked", None)
                remaining = deadline - time.monotonic()
                if wait is not None and remaining > 0:
                    try:
                        from rclpy.duration import Duration

                        wait(Duration(nanoseconds=int(remaining * 1e9)))
                    except Exception:
                        pass
            self._log.info(f"replay done: {self.published} messages")
        except Exception as exc:  # a damaged bag: say which file and why, exit non-zero
            self.error = str(read_failure(self._path, exc))
            self._log.error(f"replay stopped after {self.published} messages: {self.error}")
        finally:
            self.done.set()

    def _clock_loop(self) -> None:
        period = 1.0 / self.clock_rate_hz
        next_t = time.monotonic()
        while not self._stop.is_set() and not self.done.is_set():
            try:
                self._clock_pub.publish(_clock_msg(self._bag_time()))
            except Exception:  # context shutting down
                return
            next_t += period
            delay = next_t - time.monotonic()
            if delay < -period:  # fell behind (loaded machine): do not burst
                next_t = time.monotonic()
                delay = 0
            self._stop.wait(max(0.0, delay))

    def release(self) -> None:
        self._stop.set()
        self._wake.set()
        for th in (self._player, self._clock_thread):
            if th.is_alive():
                th.join(2.0)
        try:
            self._reader.close()
        except Exception:
            pass


def run(args=None) -> int:
    """Play the bag given by the ``bag`` parameter; returns the exit code: 0 done, 1 the bag could
    not be read to its end, 2 bad parameters or a bag that fails its check (nothing published)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init(args=args)
    stop = stop_on_signals()
    node = None
    executor = SingleThreadedExecutor()
    code = 0
    try:
        try:
            node = ReplayNode()
        except ValueError as exc:  # BagError too: it names the storage file
            print(f"[sage_replay] error: {exc}", file=sys.stderr, flush=True)
            return 2
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok() and not node.done.is_set():
            executor.spin_once(timeout_sec=0.1)
        if node.error:
            print(f"[sage_replay] error: {node.error}", file=sys.stderr, flush=True)
            code = 1
    finally:
        if node is not None:
            node.release()
            node.destroy_node()
        executor.shutdown(timeout_sec=1.0)
        rclpy.try_shutdown()
    return code


def main(args=None) -> None:
    raise SystemExit(run(args))


if __name__ == "__main__":
    main()
