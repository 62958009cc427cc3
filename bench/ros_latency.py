"""Observation -> action latency through DDS: the policy server beside a bare rclpy echo node and PolicyRuntime alone.

Prints one JSON object. Needs a sourced ROS 2 workspace with lifelong_ros built (`colcon build`)
and torch (to make the two models). Everything runs on this machine, over loopback:

- ``runtime``: PolicyRuntime.infer alone, in this process (no ROS): the model's own cost.
- ``echo``: a bare rclpy node in its own process that publishes every observation it receives,
  cut to the action's length, as the action (same QoS as the policy server): the floor of a
  Python ROS 2 node here. Measured with the default executor (``rclpy.spin``, SingleThreadedExecutor)
  and with the one the policy server uses (``--executor``).
- ``server``: the real policy server node (`lifelong_ros.nodes.policy_server`, default parameters,
  so it also publishes ~/output and ~/experience for every action), in its own process.
- ``server_swapping``: the same while this process announces a new active version every
  ``--swap-period`` seconds (alternating two approved versions: each announcement is checked
  against the registry — approval and sha256 — and swapped in on the server's swap thread).

Latency = the action's arrival in this process's subscription callback minus the observation's
``publish()`` call, on one monotonic clock. Two modes, each with ``--n`` observations per arm:
``rate_hz`` (open loop at ``--rate``, 100 Hz by default; an action that has not arrived within
0.9 of the period is counted lost) and ``max_rate`` (closed loop: the next observation is published
as soon as the previous action arrives, i.e. the highest rate the node sustains with nothing
dropped; its rate is reported). The arms run in interleaved blocks (order rotating each round) so
load from other processes hits them alike.

    python bench/ros_latency.py [--n 10000] [--rate 100] [--executor events|single|multi] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

OBS_TOPIC, ACT_TOPIC = "/lifelong_ros/observation", "/lifelong_ros/action"  # config/spec_metaworld.yaml
ECHO_OBS, ECHO_ACT = "/bench/echo/observation", "/bench/echo/action"
ECHO_EV_OBS, ECHO_EV_ACT = "/bench/echo_ev/observation", "/bench/echo_ev/action"
OBS_DIM, ACT_DIM, TASK = 39, 4, "reach-v3"


# --------------------------------------------------------------------------- the echo node (own process)
def echo_main(executor: str, obs_topic: str, act_topic: str) -> None:
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from std_msgs.msg import Float32MultiArray

    from lifelong_ros.nodes import _common as c

    rclpy.init()
    c.sigterm_like_sigint()
    node = rclpy.create_node("bench_echo")
    pub = node.create_publisher(Float32MultiArray, act_topic, c.COMMAND_QOS)

    def on_obs(msg: Any) -> None:
        pub.publish(Float32MultiArray(data=msg.data[:ACT_DIM]))

    node.create_subscription(Float32MultiArray, obs_topic, on_obs, c.SENSOR_QOS)
    try:
        rclpy.spin(node, executor=c.make_executor(executor))
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        c.ignore_signals()
        node.destroy_node()
        rclpy.try_shutdown()


# --------------------------------------------------------------------------- models and registry
def make_registry(data: Path) -> tuple[Any, list[str]]:
    import torch

    from lifelong_ros.learning.model import PolicyConfig, PolicyNet, export_onnx
    from lifelong_ros.safety.registry import ModelRegistry

    reg = ModelRegistry(data / "registry")
    obs = np.random.default_rng(0).normal(size=(256, OBS_DIM)).astype(np.float32)
    versions = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        cfg = PolicyConfig(obs_dim=OBS_DIM, act_dim=ACT_DIM, hidden=(256, 256), num_heads=1)
        net = PolicyNet(cfg)
        net.set_normalizer(obs)
        v = reg.register(export_onnx(net.eval()), tasks=[TASK], method="bench", config={"policy": cfg.to_dict()})
        reg.set_decision(v, "approved", reason="benchmark model")
        versions.append(v)
    reg.promote(versions[0], reason="benchmark")
    return reg, versions


def stats(ns: list[int], lost: int, elapsed_s: float | None = None) -> dict[str, Any]:
    a = np.asarray(ns, dtype=np.float64) / 1e6
    out: dict[str, Any] = {
        "n": len(ns),
        "lost": lost,
        "p50_ms": round(float(np.percentile(a, 50)), 4) if len(a) else None,
        "p99_ms": round(float(np.percentile(a, 99)), 4) if len(a) else None,
        "mean_ms": round(float(a.mean()), 4) if len(a) else None,
        "max_ms": round(float(a.max()), 4) if len(a) else None,
    }
    if elapsed_s:
        out["rate_hz"] = round(len(ns) / elapsed_s, 1)
    return out


def runtime_alone(reg: Any, version: str, n: int) -> dict[str, Any]:
    from lifelong_ros.serving.runtime import PolicyRuntime

    data, sha = reg.load_for_serving(version)
    rt = PolicyRuntime(data, version, expected_sha256=sha, intra_op_threads=1)
    obs = np.random.default_rng(1).normal(size=(n, OBS_DIM)).astype(np.float32)
    for o in obs[:200]:
        rt.infer(o, 0)
    lat = []
    for o in obs:
        t0 = time.perf_counter_ns()
        rt.infer(o, 0)
        lat.append(time.perf_counter_ns() - t0)
    return stats(lat, 0)


# --------------------------------------------------------------------------- the driver
class Arm:
    """One observation publisher + action subscription pair; ``ping`` publishes and waits for the answer."""

    def __init__(self, node: Any, executor: Any, obs_topic: str, act_topic: str):
        from std_msgs.msg import Float32MultiArray

        from lifelong_ros.nodes import _common as c

        self.executor = executor
        self.pub = node.create_publisher(Float32MultiArray, obs_topic, c.SENSOR_QOS)
        self.arrived = 0
        self.got = False
        node.create_subscription(Float32MultiArray, act_topic, self._on_action, c.COMMAND_QOS)
        rng = np.random.default_rng(2)
        self.msgs = [Float32MultiArray(data=rng.normal(size=OBS_DIM).astype(np.float32).tolist()) for _ in range(64)]
        self.k = 0

    def _on_action(self, _msg: Any) -> None:
        self.arrived = time.perf_counter_ns()
        self.got = True

    def ping(self, timeout_s: float) -> int | None:
        """Publish one observation; the latency in ns, or None when no action came within ``timeout_s``."""
        self.got = False
        msg = self.msgs[self.k % len(self.msgs)]
        self.k += 1
        t0 = time.perf_counter_ns()
        self.pub.publish(msg)
        deadline = t0 + int(timeout_s * 1e9)
        while not self.got:
            left = (deadline - time.perf_counter_ns()) / 1e9
            if left <= 0:
                return None
            self.executor.spin_once(timeout_sec=left)
        return self.arrived - t0

    def drain(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            self.executor.spin_once(timeout_sec=0.005)

    def run(self, n: int, period_s: float) -> tuple[list[int], int, float]:
        """``n`` observations, one every ``period_s`` (0 = closed loop); (latencies, lost, elapsed s)."""
        lat, lost = [], 0
        start = next_t = time.perf_counter()
        for _ in range(n):
            if period_s:
                delay = next_t - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                next_t += period_s
            got = self.ping(0.9 * period_s if period_s else 0.5)
            if got is None:
                lost += 1
                self.drain(0.002)  # a late answer must not be taken for the next observation's
            else:
                lat.append(got)
        return lat, lost, time.perf_counter() - start


class Announcer:
    """Announces the two versions as active in turn, every ``period_s``, while enabled (continuous hot-swaps)."""

    def __init__(self, node: Any, reg: Any, versions: list[str], period_s: float):
        from lifelong_ros.msg import ModelVersion
        from lifelong_ros.nodes import _common as c
        from lifelong_ros.nodes import messages as m

        self.pub = node.create_publisher(ModelVersion, "/active_version", c.LATCHED_QOS)
        self.msgs = [m.model_version_msg(c.KIT, reg.info(v), time.time_ns()) for v in versions]
        self.period_s = period_s
        self.enabled = threading.Event()
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._loop, daemon=True, name="announcer")
        self.thread.start()

    def _loop(self) -> None:
        i = 0
        while not self.stop.is_set():
            if not self.enabled.wait(0.05):
                continue
            i += 1
            self.pub.publish(self.msgs[i % 2])
            self.sent += 1
            time.sleep(self.period_s)


def server_swaps(node: Any, executor: Any) -> int:
    """The policy server's swap count, from its ~/get_status."""
    from lifelong_ros.srv import GetStatus

    client = node.create_client(GetStatus, "/policy_server/get_status")
    if not client.wait_for_service(timeout_sec=10.0):
        return -1
    fut = client.call_async(GetStatus.Request())
    executor.spin_until_future_complete(fut, timeout_sec=10.0)
    res = fut.result()
    node.destroy_client(client)
    return int({kv.key: kv.value for kv in res.values}.get("swaps", -1)) if res else -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="observations per arm and mode (default 10000)")
    ap.add_argument("--rate", type=float, default=100.0, help="open-loop observation rate (Hz)")
    ap.add_argument(
        "--executor", default="events", choices=["events", "single", "multi"], help="policy server executor"
    )
    ap.add_argument("--swap-period", type=float, default=0.05, help="seconds between announced swaps")
    ap.add_argument("--block", type=int, default=1000, help="observations per interleaved block")
    ap.add_argument("--quick", action="store_true", help="--n 1000 --block 250 (a smoke run, not a measurement)")
    ap.add_argument("--echo", nargs=3, metavar=("EXECUTOR", "OBS", "ACT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo:
        echo_main(*args.echo)
        return
    if args.quick:
        args.n, args.block = 1000, 250

    import rclpy

    from lifelong_ros.nodes import _common as c

    tmp = Path(tempfile.mkdtemp(prefix="ros_latency_"))
    reg, versions = make_registry(tmp)
    result: dict[str, Any] = {
        "bench": "ros_latency",
        "n_per_arm": args.n,
        "rate_hz": args.rate,
        "server_executor": args.executor,
        "rmw": os.environ.get("RMW_IMPLEMENTATION", ""),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "runtime": runtime_alone(reg, versions[0], args.n),
    }
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "lifelong_ros.nodes.policy_server", "--ros-args"),
            *("-p", f"data_dir:={tmp}", "-p", f"executor:={args.executor}", "-p", "autostart:=true"),
            *("--log-level", "warn"),
        ],
        env=env,
    )
    echoes = {
        "echo": subprocess.Popen([sys.executable, __file__, "--echo", "single", ECHO_OBS, ECHO_ACT], env=env),
        "echo_same_executor": subprocess.Popen(
            [sys.executable, __file__, "--echo", args.executor, ECHO_EV_OBS, ECHO_EV_ACT], env=env
        ),
    }
    rclpy.init()
    node = rclpy.create_node("bench_ros_latency")
    executor = c.make_executor("events")
    executor.add_node(node)
    try:
        arms = {
            "server": Arm(node, executor, OBS_TOPIC, ACT_TOPIC),
            "echo": Arm(node, executor, ECHO_OBS, ECHO_ACT),
            "echo_same_executor": Arm(node, executor, ECHO_EV_OBS, ECHO_EV_ACT),
        }
        for name, arm in arms.items():  # up, discovered, model loaded, warm
            end = time.monotonic() + 60
            while arm.ping(0.1) is None:
                if time.monotonic() > end:
                    raise SystemExit(f"{name}: no action within 60 s of publishing observations")
            arm.run(300, 0.0)
        announcer = Announcer(node, reg, versions, args.swap_period)
        swaps_before = server_swaps(node, executor)
        period = 1.0 / args.rate
        modes: dict[str, dict[str, list]] = {}
        for mode, per in (("rate_hz", period), ("max_rate", 0.0)):
            names = ["server", "echo", "echo_same_executor"] + (["server_swapping"] if mode == "rate_hz" else [])
            acc: dict[str, list] = {k: [[], 0, 0.0] for k in names}
            rounds = max(1, args.n // args.block)
            for r in range(rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    swapping = name == "server_swapping"
                    if swapping:
                        announcer.enabled.set()
                    lat, lost, el = arms["server" if swapping else name].run(args.block, per)
                    announcer.enabled.clear()
                    acc[name][0] += lat
                    acc[name][1] += lost
                    acc[name][2] += el
            modes[mode] = acc
        announcer.stop.set()
        swaps = server_swaps(node, executor) - swaps_before
        for mode, acc in modes.items():
            result[mode] = {k: stats(v[0], v[1], v[2] if mode == "max_rate" else None) for k, v in acc.items()}
            s, e = result[mode]["server"], result[mode]["echo"]
            result[mode]["server_vs_echo"] = {
                "p50_ratio": round(s["p50_ms"] / e["p50_ms"], 3),
                "p99_ratio": round(s["p99_ms"] / e["p99_ms"], 3),
            }
            e2 = result[mode]["echo_same_executor"]
            result[mode]["server_vs_echo_same_executor"] = {
                "p50_ratio": round(s["p50_ms"] / e2["p50_ms"], 3),
                "p99_ratio": round(s["p99_ms"] / e2["p99_ms"], 3),
            }
        result["swaps"] = {"announced": announcer.sent, "server_swaps": swaps, "period_s": args.swap_period}
        result["loadavg_end"] = os.getloadavg()
    finally:
        for p in (server, *echoes.values()):
            p.send_signal(signal.SIGINT)
        codes = {}
        for name, p in (("server", server), *echoes.items()):
            try:
                codes[name] = p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                codes[name] = "killed"
        result["exit_codes"] = codes
        node.destroy_node()
        rclpy.try_shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
