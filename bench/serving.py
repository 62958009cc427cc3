"""Serving latency: PolicyRuntime vs a bare onnxruntime session vs torch eager, and during hot-swaps.

Prints one JSON object. Same model (MLP 39->256->256->4, 5 heads), same process, single
observations. Arms are measured in interleaved blocks (the order rotates every round) so load from
other processes on a shared machine hits all of them alike. Two arms run while another thread
swaps every 10 ms: "during swaps" flips between two versions (after the first swap both
stay loaded, as in a rollback, so a swap is a reference switch); "during cold swaps" cycles
through more versions than the runtime keeps loaded, so every swap reads, hashes, builds, checks
and warms a new onnxruntime session and tears an old one down.

The output guard (PolicyRuntime's check of every action) is measured by three runtime arms over
the same model: "runtime" (the default guard: finiteness only), "runtime_bounded" (finiteness and
the bounds the policy server ships with, [-1, 1] ± 0.25) and "runtime_unguarded" (output_guard=None);
``guard_overhead_p50_ratio`` = bounded p50 / unguarded p50 (acceptance: <= 1.05).

    python bench/serving.py [--quick] [--rounds R] [--block B]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

from lifelong_ros.learning.model import ACTION_OUTPUT, OBS_INPUT, TASK_INPUT, PolicyConfig, PolicyNet, export_onnx
from lifelong_ros.serving.runtime import OutputGuard, PolicyRuntime, session_options

OBS_DIM, ACT_DIM, HIDDEN, HEADS = 39, 4, (256, 256), 5
SWAP_PERIOD_S = 0.010
KEEP_WARM = 2  # PolicyRuntime's default


def make_model(seed: int, obs: np.ndarray) -> tuple[PolicyNet, bytes]:
    torch.manual_seed(seed)
    net = PolicyNet(PolicyConfig(obs_dim=OBS_DIM, act_dim=ACT_DIM, hidden=HIDDEN, num_heads=HEADS))
    net.set_normalizer(obs)
    return net.eval(), export_onnx(net, {"version": f"v{seed}"})


class Swapper:
    """A thread that, while enabled, swaps the runtime between versions every ``period`` seconds."""

    def __init__(self, rt: PolicyRuntime, models: list[tuple[str, bytes]], period: float):
        self.rt, self.models, self.period = rt, models, period
        self.enabled = threading.Event()
        self.stop = threading.Event()
        self.total_ms: list[float] = []
        self.build_ms: list[float] = []
        self.reused = 0
        self.thread = threading.Thread(target=self._run, name="bench-swapper", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            if not self.enabled.wait(0.05):
                continue
            next_tick = time.perf_counter() + self.period
            i += 1
            version, data = self.models[i % len(self.models)]
            rep = self.rt.swap(data, version)
            self.total_ms.append(rep.total_ms)
            self.build_ms.append(rep.build_ms)
            self.reused += rep.reused
            delay = next_tick - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    def close(self) -> None:
        self.stop.set()
        self.enabled.clear()
        self.thread.join()


def measure(fn, obs_pool: np.ndarray, tasks: np.ndarray, n: int, out: list[float]) -> None:
    """Time ``n`` calls of fn(obs, task) (ns -> us) after a short warm-up."""
    pc = time.perf_counter_ns
    m = len(obs_pool)
    for i in range(50):
        fn(obs_pool[i % m], int(tasks[i % m]))
    ts = np.empty(n)
    for i in range(n):
        o, k = obs_pool[i % m], int(tasks[i % m])
        t0 = pc()
        fn(o, k)
        ts[i] = pc() - t0
    out.extend((ts / 1e3).tolist())


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short run (smoke test): fewer rounds and calls")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 30, quick 6)")
    p.add_argument("--block", type=int, default=None, help="calls per arm per round (default 2000, quick 500)")
    p.add_argument(
        "--build-niceness",
        type=int,
        default=10,
        help="PolicyRuntime build_niceness for the swapping runtime (0 = builder at normal priority)",
    )
    args = p.parse_args(argv)
    rounds = args.rounds or (6 if args.quick else 30)
    block = args.block or (500 if args.quick else 2000)
    torch.set_num_threads(1)

    rng = np.random.default_rng(0)
    obs_pool = rng.standard_normal((1024, OBS_DIM)).astype(np.float32)
    tasks = rng.integers(0, HEADS, size=len(obs_pool))
    net, v1 = make_model(1, obs_pool)
    others = [make_model(seed, obs_pool)[1] for seed in range(2, KEEP_WARM + 3)]
    v2 = others[0]

    rt = PolicyRuntime(v1, "v1")
    rt_unguarded = PolicyRuntime(v1, "v1", output_guard=None)
    rt_bounded = PolicyRuntime(v1, "v1", output_guard=OutputGuard(low=-1.0, high=1.0, slack=0.25))
    rt_swapping = PolicyRuntime(v1, "v1", build_niceness=args.build_niceness, keep_warm=KEEP_WARM)
    rt_cold = PolicyRuntime(v1, "v1", build_niceness=args.build_niceness, keep_warm=KEEP_WARM)
    sess = ort.InferenceSession(v1, sess_options=session_options(1), providers=["CPUExecutionProvider"])
    task_arrays = [np.full(1, k, np.int64) for k in range(HEADS)]
    task_tensors = [torch.full((1,), k, dtype=torch.int64) for k in range(HEADS)]

    def ort_call(o: np.ndarray, k: int) -> np.ndarray:
        return sess.run([ACTION_OUTPUT], {OBS_INPUT: o[None], TASK_INPUT: task_arrays[k]})[0][0]

    def torch_call(o: np.ndarray, k: int) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(o[None]), task_tensors[k])[0].numpy()

    # Same inputs, same answers (sanity: the arms compute the same thing).
    o, k = obs_pool[0], int(tasks[0])
    assert np.array_equal(rt.infer(o, k).action, ort_call(o, k))
    assert np.array_equal(rt_bounded.infer(o, k).action, rt_unguarded.infer(o, k).action)
    assert np.allclose(torch_call(o, k), ort_call(o, k), atol=1e-5)

    swappers = {
        "during_swaps": Swapper(rt_swapping, [("v1", v1), ("v2", v2)], SWAP_PERIOD_S),
        "during_cold_swaps": Swapper(
            rt_cold, [("v1", v1)] + [(f"v{i + 2}", m) for i, m in enumerate(others)], SWAP_PERIOD_S
        ),
    }
    arms = {
        "runtime": rt.infer,
        "runtime_unguarded": rt_unguarded.infer,
        "runtime_bounded": rt_bounded.infer,
        "ort": ort_call,
        "torch": torch_call,
        "during_swaps": rt_swapping.infer,
        "during_cold_swaps": rt_cold.infer,
    }
    samples: dict[str, list[float]] = {a: [] for a in arms}
    names = list(arms)
    try:
        for r in tqdm(range(rounds), desc="rounds", file=sys.stderr, disable=None):
            for j in range(len(names)):
                arm = names[(r + j) % len(names)]
                swapper = swappers.get(arm)
                if swapper is not None:
                    swapper.enabled.set()
                    time.sleep(SWAP_PERIOD_S)  # let the first swap get going
                measure(arms[arm], obs_pool, tasks, block, samples[arm])
                if swapper is not None:
                    swapper.enabled.clear()
    finally:
        for swapper in swappers.values():
            swapper.close()
    warm, cold = swappers["during_swaps"], swappers["during_cold_swaps"]
    assert cold.reused == 0, "the cold arm reused a loaded model: it must build every time"

    res = {
        "model": f"MLP {OBS_DIM}->{'->'.join(map(str, HIDDEN))}->{ACT_DIM}, {HEADS} heads",
        "calls_per_arm": rounds * block,
        "rounds": rounds,
        "runtime_p50_us": pct(samples["runtime"], 50),
        "runtime_p99_us": pct(samples["runtime"], 99),
        "runtime_unguarded_p50_us": pct(samples["runtime_unguarded"], 50),
        "runtime_unguarded_p99_us": pct(samples["runtime_unguarded"], 99),
        "runtime_bounded_p50_us": pct(samples["runtime_bounded"], 50),
        "runtime_bounded_p99_us": pct(samples["runtime_bounded"], 99),
        "guarded_outputs": rt.stats()["guarded"] + rt_bounded.stats()["guarded"],  # 0: all on the fast path
        "ort_p50_us": pct(samples["ort"], 50),
        "ort_p99_us": pct(samples["ort"], 99),
        "torch_p50_us": pct(samples["torch"], 50),
        "torch_p99_us": pct(samples["torch"], 99),
        "p50_during_swaps_us": pct(samples["during_swaps"], 50),
        "p99_during_swaps_us": pct(samples["during_swaps"], 99),
        "swaps": len(warm.total_ms),
        "swaps_reused": warm.reused,
        "swap_ms_p50": pct(warm.total_ms, 50),
        "swap_ms_p99": pct(warm.total_ms, 99),
        "p50_during_cold_swaps_us": pct(samples["during_cold_swaps"], 50),
        "p99_during_cold_swaps_us": pct(samples["during_cold_swaps"], 99),
        "cold_swaps": len(cold.total_ms),
        "cold_swap_ms_p50": pct(cold.total_ms, 50),
        "cold_swap_ms_p99": pct(cold.total_ms, 99),
        "build_niceness": args.build_niceness,
        "keep_warm": KEEP_WARM,
    }
    res["runtime_vs_ort_p50_ratio"] = res["runtime_p50_us"] / res["ort_p50_us"]
    res["runtime_vs_ort_p99_ratio"] = res["runtime_p99_us"] / res["ort_p99_us"]
    res["guard_overhead_p50_ratio"] = res["runtime_bounded_p50_us"] / res["runtime_unguarded_p50_us"]
    res["guard_finite_only_overhead_p50_ratio"] = res["runtime_p50_us"] / res["runtime_unguarded_p50_us"]
    res["accept_guard_overhead_p50_within_5pct"] = bool(res["guard_overhead_p50_ratio"] <= 1.05)
    res["torch_vs_ort_p50_ratio"] = res["torch_p50_us"] / res["ort_p50_us"]
    res["p99_swaps_vs_no_swaps_ratio"] = res["p99_during_swaps_us"] / res["runtime_p99_us"]
    res["p99_cold_swaps_vs_no_swaps_ratio"] = res["p99_during_cold_swaps_us"] / res["runtime_p99_us"]
    res["accept_runtime_p50_within_1.5x_ort"] = bool(res["runtime_vs_ort_p50_ratio"] <= 1.5)
    res["accept_p99_swaps_within_3x"] = bool(res["p99_swaps_vs_no_swaps_ratio"] <= 3.0)
    res["accept_p99_cold_swaps_within_3x"] = bool(res["p99_cold_swaps_vs_no_swaps_ratio"] <= 3.0)
    res["env"] = {
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
