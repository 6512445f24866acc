"""sage_sleeper: online sleep on the robot. Between tasks it trains on what the robot just did,
and promotes the result only if it is not worse.

Every ``check_period_s`` the node decides (``training.online.SleeperStep``): when the robot is idle
(no episode open on ``/sage/episode`` and ``enable_control`` false on every runtime node, or
``/sage/idle`` true) and enough new experience is recorded (closed bags under ``bags_dir`` it has
not trained on, with ``min_new_episodes`` episodes or more), it runs a sleep cycle
(``sage-hl-sleep``: wake on the new bags, sleep and dream with replay of the older ones, from the
running checkpoint) in a **separate process at low priority** (``nice``, a torch thread cap, an
address-space cap). When the robot becomes busy the cycle is stopped at once (SIGINT: the trainer
saves its resumable state) and resumed when it is idle again. A finished candidate is judged by the
gate (``training.online.gate``: held-out action error of the candidate vs the running model on the
recent episodes it did not train on, and on the replayed data); a promoted one is loaded by the
runtime nodes through their ``model_dir`` parameter (their hot reload), only while idle, so never
during an episode. The last ``keep_checkpoints`` promoted checkpoints stay under ``store_dir``.

Subscribed topics
    /sage/episode       std_msgs/String: start[:task] / end[:outcome] markers (an open episode = busy)
    /sage/idle          std_msgs/Bool: an explicit idle (true) or busy (false); overrides the rule
    /diagnostics        diagnostic_msgs/DiagnosticArray: each runtime node's enable_control and
                        model_sha256 (what it is running)
Published topics
    /diagnostics        this node's state, cycles, promotions, refusals, gate numbers, stop latency
Services
    ~/sleep_now         std_srvs/Trigger: run a cycle at the next idle moment, whatever the count
    ~/rollback          std_srvs/Trigger: load the previous promoted checkpoint on the runtime nodes
Parameters (read at start-up)
    model_dir (str, required)          the checkpoint the runtime nodes run now
    bags_dir (str, required)           where the recorder writes bags (closed bags: with metadata.yaml)
    store_dir (str, "sleep")           candidates, promoted checkpoints, the promotion history
    runtime_nodes (str[], [sage_context, sage_control])   nodes whose model_dir the sleeper sets
    min_new_episodes (int, 5), idle_settle_s (float, 2.0), max_error_ratio (float, 1.0),
    keep_checkpoints (int, 5)          see training.online.SleeperConfig
    sleep_config (str, "")             trainer YAML (sage-hl-sleep --config); "" = config/sleep.yaml
    dataset_config (str, "")           dataset YAML (sage-hl-sleep --dataset-config; its val split is
                                       the gate's held-out recent episodes); "" = config/dataset.yaml
    sleep_set (str[], [])              trainer overrides (sage-hl-sleep --set), e.g. [wake.steps=200]
    train_threads (int, 1)             torch threads of the training process
    train_nice (int, 10)               niceness added to the training process (lower priority)
    train_memory_limit_mb (int, 0)     address-space cap of the training process; 0 = none
    check_period_s (float, 0.5), diagnostics_period_s (float, 1.0)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from ..training.online import (
    CheckpointStore,
    SleeperConfig,
    SleeperInputs,
    SleeperStep,
    gate,
    has_trainer_state,
    is_idle,
    report_errors,
)
from .diagnostics import diagnostic_array, status
from .node_main import DeclaredParams, run_node
from .qos import declare_qos

CYCLE_FILE = "cycle.json"  # the cycle in progress: its number, bags, output and state
TRAINED_FILE = "trained_bags.json"  # bags a cycle has taken (never taken twice)


class SleeperNode(DeclaredParams, Node):
    def __init__(self, node_name: str = "sage_sleeper", **kwargs):
        super().__init__(node_name, **kwargs)
        p = self._param
        p("model_dir", "", "checkpoint the runtime nodes run now (required)")
        p("bags_dir", "", "folder the recorder writes bags into (required)")
        p("store_dir", "sleep", "candidates, promoted checkpoints and the promotion history")
        p("runtime_nodes", ["sage_context", "sage_control"], "nodes whose model_dir a promotion sets")
        p("min_new_episodes", 5, "new recorded episodes before a cycle")
        p("idle_settle_s", 2.0, "idle this long before training starts [s]")
        p("max_error_ratio", 1.0, "promote when candidate error <= ratio x running error (held out)")
        p("keep_checkpoints", 5, "promoted checkpoints kept")
        p("sleep_config", "", "trainer YAML (sage-hl-sleep --config); '' = config/sleep.yaml")
        p("dataset_config", "", "dataset YAML (sage-hl-sleep --dataset-config); '' = config/dataset.yaml")
        p("sleep_set", [], "trainer overrides (sage-hl-sleep --set KEY=VALUE)")
        p("train_threads", 1, "torch threads of the training process")
        p("train_nice", 10, "niceness added to the training process")
        p("train_memory_limit_mb", 0, "address-space cap of the training process [MB]; 0 = none")
        p("check_period_s", 0.5, "decision period [s]")
        p("diagnostics_period_s", 1.0, "period of /diagnostics [s]")
        self._log = self.get_logger()
        self.cfg = SleeperConfig(min_new_episodes=int(self._get("min_new_episodes")),
                                 idle_settle_s=float(self._get("idle_settle_s")),
                                 max_error_ratio=float(self._get("max_error_ratio")),
                                 keep_checkpoints=int(self._get("keep_checkpoints")))
        model_dir, bags_dir = str(self._get("model_dir")), str(self._get("bags_dir"))
        for key, value in (("model_dir", model_dir), ("bags_dir", bags_dir)):
            if not value:
                raise ValueError(f"{key} is required")
        if not (Path(model_dir) / "config.json").is_file():
            raise ValueError(f"model_dir {model_dir}: not a checkpoint directory (no config.json)")
        self.bags_dir = Path(bags_dir)
        self.store = CheckpointStore(self._get("store_dir"), self.cfg.keep_checkpoints)
        self.store.start(str(Path(model_dir).resolve()), _sha(model_dir))
        self._step = SleeperStep(self.cfg)
        self._runtime = [str(n) for n in self._get("runtime_nodes")]
        self._trained = set(self._read_json(TRAINED_FILE, []))
        self._trained.update(_trained_on(self.store.current["model_dir"]))
        self._cycle: dict | None = self._read_json(CYCLE_FILE, None)  # in progress (resumable / to judge)
        self._proc: subprocess.Popen | None = None
        self._stop_sent_s: float | None = None
        self._episode_active = False
        self._idle_flag: bool | None = None
        self._idle_since: float | None = None
        self._enabled: dict[str, bool] = {}  # runtime node -> enable_control (from /diagnostics)
        self._running_sha: dict[str, str] = {}  # runtime node -> model_sha256 (from /diagnostics)
        self._new_bags: list[str] = []
        self._new_episodes = 0
        self._forced = False
        self._counts = {"cycles": 0, "promoted": 0, "refused": 0, "failed": 0, "stopped": 0, "rollbacks": 0}
        self._last = {"decision": "", "gate": "", "error": "", "stop_latency_s": float("nan")}
        self._reloads: list[dict] = []  # promotions / rollbacks sent: when, which model, episode state
        self.create_subscription(String, "/sage/episode", self._on_episode, declare_qos(self, "episode", "reliable"))
        self.create_subscription(Bool, "/sage/idle", self._on_idle, declare_qos(self, "idle", "reliable"))
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics,
                                 declare_qos(self, "diagnostics", "reliable"))
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics",
                                               declare_qos(self, "diagnostics_out", "reliable"))
        self.create_service(Trigger, "~/sleep_now", self._on_sleep_now)
        self.create_service(Trigger, "~/rollback", self._on_rollback)
        self.create_timer(float(self._get("check_period_s")), self._tick)
        self.create_timer(float(self._get("diagnostics_period_s")), self._publish_diagnostics)
        self._scan_bags()
        self._log.info(f"sleeping for {self._runtime} from {self.store.current['model_dir']}; bags in {self.bags_dir}; "
                       f"store {self.store.root}" + (f"; cycle {self._cycle['n']} to finish" if self._cycle else ""))

    # ------------------------------------------------------------------ inputs
    def _on_episode(self, msg: String) -> None:
        text = msg.data.strip()
        if text.startswith("start"):
            self._episode_active = True
        elif text.startswith("end"):
            self._episode_active = False

    def _on_idle(self, msg: Bool) -> None:
        self._idle_flag = bool(msg.data)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for st in msg.status:
            node, _, _ = st.name.partition(": ")
            if node not in self._runtime and f"/{node}" not in self._runtime:
                continue
            values = {kv.key: kv.value for kv in st.values}
            if "enable_control" in values:
                self._enabled[node] = values["enable_control"].lower() == "true"
            if values.get("model_sha256"):
                self._running_sha[node] = values["model_sha256"]

    def _scan_bags(self) -> None:
        """Closed bags not trained on yet, and how many episodes they hold."""
        from ..bags.info import bag_info

        if not self.bags_dir.is_dir():
            self._new_bags, self._new_episodes = [], 0
            return
        new, episodes = [], 0
        for bag in sorted(d for d in self.bags_dir.iterdir() if (d / "metadata.yaml").is_file()):
            if str(bag.resolve()) in self._trained:
                continue
            try:
                info = bag_info(bag, verify=False)
            except Exception as exc:  # a damaged bag is skipped with its reason, never a crash
                self._last["error"] = f"{bag}: {exc}"
                continue
            new.append(str(bag.resolve()))
            episodes += len(info.episodes)
        self._new_bags, self._new_episodes = new, episodes

    # ------------------------------------------------------------------ decisions
    def _now(self) -> float:
        return time.monotonic()

    def _tick(self) -> None:
        try:
            self._tick_inner()
        except Exception as exc:  # the sleeper must never take the robot down with it
            self._last["error"] = f"{type(exc).__name__}: {exc}"
            self._log.error(f"sleeper step failed: {self._last['error']}")

    def _tick_inner(self) -> None:
        now = self._now()
        idle = is_idle(self._episode_active, any(self._enabled.values()), self._idle_flag)
        if idle and self._idle_since is None:
            self._idle_since = now
        elif not idle:
            self._idle_since = None
        self._poll_child(now)
        if self._proc is None and not (self._cycle and self._cycle["state"] in ("interrupted", "done")):
            self._scan_bags()
        cycle = self._cycle
        inputs = SleeperInputs(
            now_s=now, idle=idle, idle_since_s=self._idle_since,
            new_episodes=self._new_episodes if self._new_bags else 0,
            training=self._proc is not None and self._stop_sent_s is None,
            resumable=bool(cycle and cycle["state"] == "interrupted"),
            candidate_ready=bool(cycle and cycle["state"] == "done"))
        if self._forced and self._new_bags and not inputs.training and not inputs.resumable:
            inputs = SleeperInputs(**{**inputs.__dict__, "new_episodes": max(inputs.new_episodes,
                                                                             self.cfg.min_new_episodes)})
        decision = self._step(inputs)
        self._last["decision"] = f"{decision.action}: {decision.reason}"
        if decision.action == "stop":
            self._stop_child(now)
        elif decision.action == "start":
            self._forced = False
            self._start_cycle()
        elif decision.action == "resume":  # stopped before its first saved state: start it over
            self._launch(resume=has_trainer_state(self._cycle["out"]))
        elif decision.action == "judge":
            self._judge()

    # ------------------------------------------------------------------ the training process
    def _start_cycle(self) -> None:
        made = [int(d.name[6:]) for d in self.store.root.glob("cycle-*") if d.is_dir() and d.name[6:].isdigit()]
        n = max(made, default=0) + 1
        out = self.store.root / f"cycle-{n:03d}"
        old = sorted(self._trained)
        self._cycle = {"n": n, "bags": list(self._new_bags), "replay_bags": old, "out": str(out),
                       "init": self.store.current["model_dir"], "state": "running"}
        self._trained.update(self._new_bags)  # taken: a failed cycle does not retry them forever
        self._write_json(TRAINED_FILE, sorted(self._trained))
        self._counts["cycles"] += 1
        self._log.info(f"cycle {n}: training on {len(self._new_bags)} new bags ({self._new_episodes} episodes), "
                       f"replaying {len(old)}, from {self._cycle['init']}")
        self._new_bags, self._new_episodes = [], 0
        self._launch(resume=False)

    def _launch(self, resume: bool) -> None:
        c = self._cycle
        cmd = [sys.executable, "-m", "sage_hl_ros.tools.sleep_cli", "--bags", *c["bags"], "--init", c["init"],
               "--out", c["out"], "--threads", str(int(self._get("train_threads"))), "--no-progress"]
        if c["replay_bags"]:
            cmd += ["--replay-bags", *c["replay_bags"]]
        for param, flag in (("sleep_config", "--config"), ("dataset_config", "--dataset-config")):
            if self._get(param):
                cmd += [flag, str(self._get(param))]
        for item in self._get("sleep_set"):
            if str(item).strip():
                cmd += ["--set", str(item)]
        cmd += ["--set", "eval.after_each_phase=true"]  # the gate needs the running model's error ("initial")
        if resume:
            cmd.append("--resume")
        c["state"] = "running"
        self._write_json(CYCLE_FILE, c)
        nice, mem_mb = int(self._get("train_nice")), int(self._get("train_memory_limit_mb"))

        def lower_priority() -> None:  # in the child, before exec
            os.nice(nice)
            if mem_mb > 0:
                import resource

                resource.setrlimit(resource.RLIMIT_AS, (mem_mb << 20, mem_mb << 20))

        env = {**os.environ, "OMP_NUM_THREADS": str(int(self._get("train_threads"))), "PYTHONUNBUFFERED": "1"}
        log = open(Path(c["out"] + ".log"), "a")  # noqa: SIM115 - the child writes it; closed in _poll_child
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=lower_priority,
                                      start_new_session=True)
        self._proc_log = log
        self._stop_sent_s = None
        self._log.info(f"cycle {c['n']}: {'resumed' if resume else 'started'} training (pid {self._proc.pid}, "
                       f"nice +{nice}); log {c['out']}.log")

    def _stop_child(self, now: float) -> None:
        if self._proc is not None and self._stop_sent_s is None:
            self._proc.send_signal(signal.SIGINT)  # the trainer saves its state and exits 130
            self._stop_sent_s = now
            self._log.info(f"cycle {self._cycle['n']}: the robot is busy: stopping the training (state kept)")

    def _poll_child(self, now: float) -> None:
        proc = self._proc
        if proc is None or proc.poll() is None:
            if proc is not None and self._stop_sent_s is not None and now - self._stop_sent_s > 30.0:
                proc.kill()  # saving the state should take seconds; never leave it running
            return
        self._proc = None
        self._proc_log.close()
        c = self._cycle
        code = proc.returncode
        if self._stop_sent_s is not None:
            self._last["stop_latency_s"] = now - self._stop_sent_s
            self._stop_sent_s = None
        if code == 0:
            c["state"] = "done"
        elif code == 130 or code == -signal.SIGINT:
            c["state"] = "interrupted"
            self._counts["stopped"] += 1
        else:
            c["state"] = "failed"
            self._counts["failed"] += 1
            self._last["error"] = f"cycle {c['n']}: sage-hl-sleep exited {code} (see {c['out']}.log)"
            self._log.error(self._last["error"])
            self._cycle = None
            (self.store.root / CYCLE_FILE).unlink(missing_ok=True)
            return
        self._write_json(CYCLE_FILE, c)
        self._log.info(f"cycle {c['n']}: training {c['state']} (exit {code})")

    # ------------------------------------------------------------------ gate and promotion
    def _judge(self) -> None:
        c = self._cycle
        out = Path(c["out"])
        try:
            report = json.loads((out / "report" / "report.json").read_text())
            result = gate(report_errors(report), self.cfg.max_error_ratio)
        except (OSError, ValueError) as exc:
            result = None
            self._last["gate"] = f"cycle {c['n']}: no usable report ({exc})"
        self._cycle = None
        (self.store.root / CYCLE_FILE).unlink(missing_ok=True)
        if result is None or not result.promote:
            self._counts["refused"] += 1
            if result is not None:
                self._last["gate"] = f"cycle {c['n']}: {result.reason}"
            self._log.warning(f"{self._last['gate']}; still running {self.store.current['model_dir']}")
            return
        sha = _sha(out)
        deleted = self.store.promote(str(out.resolve()), sha, result.reason)
        self._counts["promoted"] += 1
        self._last["gate"] = f"cycle {c['n']}: {result.reason}"
        self._log.info(f"{self._last['gate']} (sha256 {sha[:12]})" + (f"; removed {deleted}" if deleted else ""))
        self._reload(str(out.resolve()), sha, "promote")

    def _reload(self, model_dir: str, sha: str, why: str) -> None:
        """Set model_dir on every runtime node (their hot reload); logged with the episode state."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        entry = {"why": why, "model_dir": model_dir, "sha256": sha, "episode_active": self._episode_active,
                 "stamp_ns": self.get_clock().now().nanoseconds, "answers": {}}
        self._reloads.append(entry)
        for name in self._runtime:
            fq = name if name.startswith("/") else f"{self.get_namespace().rstrip('/')}/{name}"
            client = self.create_client(SetParameters, f"{fq}/set_parameters")
            if not client.service_is_ready() and not client.wait_for_service(timeout_sec=2.0):
                entry["answers"][name] = "no set_parameters service"
                self._log.error(f"{why}: {fq} has no set_parameters service: it keeps its model")
                self.destroy_client(client)
                continue
            request = SetParameters.Request()
            request.parameters = [Parameter("model_dir", value=model_dir).to_parameter_msg()]
            future = client.call_async(request)

            def done(fut, name=name, client=client):
                res = fut.result()
                answer = res.results[0] if res is not None and res.results else None
                entry["answers"][name] = ("accepted" if answer is not None and answer.successful
                                          else f"refused: {answer.reason if answer else 'no answer'}")
                self.destroy_client(client)

            future.add_done_callback(done)

    def _on_sleep_now(self, request, response):
        self._forced = True
        self._scan_bags()
        response.success = bool(self._new_bags) or bool(self._cycle)
        response.message = (f"a cycle runs at the next idle moment ({len(self._new_bags)} new bags)"
                            if response.success else f"no new closed bag under {self.bags_dir}")
        return response

    def _on_rollback(self, request, response):
        if self._proc is not None:
            response.success, response.message = False, "a cycle is training: stop it first (make the robot busy)"
            return response
        try:
            back = self.store.rollback()
        except ValueError as exc:
            response.success, response.message = False, str(exc)
            return response
        self._counts["rollbacks"] += 1
        self._reload(back["model_dir"], back["sha256"], "rollback")
        response.success, response.message = True, f"rolling back to {back['model_dir']} (sha256 {back['sha256'][:12]})"
        self._log.info(response.message)
        return response

    # ------------------------------------------------------------------ bookkeeping
    def _read_json(self, name: str, default):
        path = self.store.root / name
        if not path.exists():
            return default
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable ({exc}); remove it to start over") from None

    def _write_json(self, name: str, value) -> None:
        path = self.store.root / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value, indent=1))
        tmp.replace(path)

    def reload_log(self) -> list[dict]:
        return list(self._reloads)

    def _publish_diagnostics(self) -> None:
        c = self._cycle
        state = ("training" if self._proc is not None else c["state"] if c else "waiting")
        level = "error" if self._last["error"] and state != "training" and self._counts["failed"] else "ok"
        values = {"state": state, "cycle": c["n"] if c else 0, "training_pid": self._proc.pid if self._proc else 0,
                  **self._counts, "new_bags": len(self._new_bags), "new_episodes": self._new_episodes,
                  "episode_active": self._episode_active, "control_enabled": any(self._enabled.values()),
                  "idle_flag": "" if self._idle_flag is None else self._idle_flag,
                  "current_model_dir": self.store.current["model_dir"], "current_sha256": self.store.current["sha256"],
                  "running_sha256": ",".join(f"{n}={s[:12]}" for n, s in sorted(self._running_sha.items())),
                  "last_decision": self._last["decision"], "last_gate": self._last["gate"],
                  "last_error": self._last["error"], "stop_latency_s": self._last["stop_latency_s"]}
        try:
            self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), [
                status(f"{self.get_name()}: sleep", level, f"{state}; {self._last['decision']}", values)]))
        except Exception as exc:  # diagnostics never take the node down
            self._log.error(f"diagnostics failed: {exc}")

    def destroy_node(self):
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)  # state saved: the next start resumes it
            try:
                self._proc.wait(timeout=30.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            if self._cycle:
                self._cycle["state"] = "interrupted"
                self._write_json(CYCLE_FILE, self._cycle)
        return super().destroy_node()


def _sha(model_dir) -> str:
    from ..core.checkpoint_files import verify_weights

    return verify_weights(model_dir)


def _trained_on(model_dir: str) -> list[str]:
    """The bags a checkpoint was trained on, resolved ([] when its config.json cannot tell)."""
    from ..core.checkpoint_files import CheckpointError, trained_on

    try:
        return [str(Path(b).resolve()) for b in trained_on(model_dir) if isinstance(b, str)]
    except CheckpointError:
        return []


def main(args=None) -> None:
    raise SystemExit(run_node(SleeperNode, args))


if __name__ == "__main__":
    main()
