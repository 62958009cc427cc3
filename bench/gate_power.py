"""Power of the closed-loop safety gate: does it reject the updates that hurt and pass the ones that do not?

Builds a population of candidate updates for the fifth task of the default Meta-World sequence
on top of an active policy that serves the first four, measures every model's true per-task
success independently (``--truth-episodes`` closed-loop episodes per task, on variation seeds the
gate never uses), runs the gate (held-out BC stage + paired sequential closed-loop test) on each
candidate, and prints ONE JSON object:

* detection_rate: candidates that lower an earlier task by >= 0.2 (true success) and are rejected;
* false_rejection_rate: candidates within 0.05 of the active model on every earlier task, whose
  new task clearly clears the floor, that are rejected;
* gate time per update (median, p90, max), episodes per update;
* serving_during_gate: the active policy serves in closed loop in this process (PolicyRuntime and
  a simulator, at the demo's control rate) while every gate runs; the rate it achieved;
* the same rates for the candidates GateConfig.offline_reject_factor was not calibrated on
  (``not_in_calibration``), and for the offline checks deciding as they do without a simulator.

Candidates: good (replay consolidation at several step budgets and seeds) and bad (naive
fine-tuning, undertrained, weight noise at several scales, poisoned demonstrations of an earlier
task, noise on one earlier task's head only). Everything expensive is cached under ``--work``
(demonstrations, trained models, true successes by model sha256), so an interrupted run resumes;
``--truth-only`` builds the population and measures its truth without gating.

    nice -n 5 python bench/gate_power.py              # full population, 100 truth episodes per cell
    python bench/gate_power.py --quick                # smoke test: 4 candidates, 10 truth episodes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

TASKS = ["reach-v3", "push-v3", "pick-place-v3", "button-press-topdown-v3", "drawer-open-v3"]
TRAIN_SEED0, HELDOUT_SEED0, TRUTH_SEED0 = 0, 100_000, 300_000
# GateConfig.offline_reject_factor was calibrated on these candidates' offline reports (the full
# population's first 15); the rates are also given for the others alone, which it never saw
CALIBRATION = {
    *(f"replay-{b}-s{s}" for b, s in [(800, 0), (1500, 0), (1500, 1), (2500, 2)]),
    *("naive-1500", "naive-400", "undertrained-20", "poisoned-push", "noise-0.1", "noise-0.3", "noise-1.0"),
    *(f"head-noise-{t}" for t in TASKS[:4]),
}
SOFT = ("regression", "improvement", "action_bounds", "action_bounds_perturbed")  # gate._DEFERRABLE


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def demonstrations(work: Path, tasks: list[str], n_train: int, n_heldout: int, max_steps: int) -> dict:
    """Expert demonstrations per task, train and held-out, cached as npz."""
    from lifelong_ros.sim import metaworld as sim
    from lifelong_ros.sim.episodes import stack_episodes

    out = {}
    for t in tasks:
        f = work / f"demos-{t}-{n_train}-{n_heldout}.npz"
        if not f.exists():
            log(f"collecting demonstrations of {t}")
            env = sim.MetaWorldSim(t, steps_after_success=10, max_steps=max_steps)
            tr = sim.collect_demonstrations(t, range(TRAIN_SEED0, TRAIN_SEED0 + n_train), sim=env)
            ho = sim.collect_demonstrations(t, range(HELDOUT_SEED0, HELDOUT_SEED0 + n_heldout), sim=env)
            to, ta = stack_episodes(tr)
            hos, has = stack_episodes(ho)
            hep = np.concatenate([np.full(len(e.obs), k) for k, e in enumerate(ho)])
            np.savez(f, train_obs=to, train_act=ta, held_obs=hos, held_act=has, held_ep=hep)
        d = np.load(f)
        out[t] = {k: d[k] for k in d.files}
    return out


def train(model, data: list[tuple[np.ndarray, np.ndarray, int]], steps: int, seed: int, lr: float = 1e-3):
    import torch

    from lifelong_ros.learning.model import bc_loss

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    obs = torch.as_tensor(np.concatenate([d[0] for d in data]))
    act = torch.as_tensor(np.concatenate([d[1] for d in data]))
    head = torch.as_tensor(np.concatenate([np.full(len(d[0]), d[2], np.int64) for d in data]))
    # balanced: every task the same share of each batch
    weights = torch.as_tensor(np.concatenate([np.full(len(d[0]), 1.0 / len(d[0])) for d in data]))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.multinomial(weights, 256, replacement=True, generator=g)
        loss = bc_loss(model, obs[idx], head[idx], act[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def build_population(work: Path, demos: dict, quick: bool) -> tuple[dict, list[dict]]:
    """The active model (tasks 1-4) and the candidates (tasks 1-5), as ONNX bytes; cached on disk."""
    import torch

    from lifelong_ros.learning.model import PolicyConfig, PolicyNet, export_onnx

    torch.set_num_threads(1)  # the bench shares 2 cores with serving and the episode workers

    mdir = work / "models"
    mdir.mkdir(exist_ok=True)
    earlier, new = TASKS[:4], TASKS[4]

    def data(tasks, poison: str | None = None):
        out = []
        for t in tasks:
            o, a = demos[t]["train_obs"], demos[t]["train_act"]
            if t == poison:
                a = a[np.random.default_rng(5).permutation(len(a))]
            out.append((o, a, TASKS.index(t)))
        return out

    def export(model, tasks) -> bytes:
        return export_onnx(model, {"tasks": json.dumps(tasks)})

    def cached(name: str, make) -> bytes:
        f = mdir / f"{name}.onnx"
        w = mdir / f"{name}.pt"
        if not f.exists():
            t0 = time.perf_counter()
            model, tasks = make()
            f.write_bytes(export(model, tasks))
            torch.save(model.state_dict(), w)
            log(f"trained {name} in {time.perf_counter() - t0:.1f} s")
        return f.read_bytes()

    def fresh():
        torch.manual_seed(0)
        m = PolicyNet(PolicyConfig(obs_dim=39, act_dim=4, hidden=(256, 256), num_heads=len(TASKS)))
        m.set_normalizer(np.concatenate([demos[t]["train_obs"] for t in TASKS]))
        return m

    active_steps = 1500 if quick else 4000
    active = cached(f"active-{active_steps}", lambda: (train(fresh(), data(earlier), active_steps, 0), earlier))

    def load_active():
        m = fresh()
        m.load_state_dict(torch.load(mdir / f"active-{active_steps}.pt"))
        return m

    def from_active(steps, seed, tasks_data, lr=1e-3):
        return train(load_active(), tasks_data, steps, seed, lr), TASKS

    specs: list[tuple[str, str, object]] = []
    budgets = [(600, 0)] if quick else [(800, 0), (1500, 0), (1500, 1), (2500, 2)]
    base_name = f"replay-{budgets[-1][0]}-s{budgets[-1][1]}"  # the noisy candidates start from it
    # More consolidations, for the false-rejection rate: a 95 % bound of 0.05 needs 59 safe updates
    # without a rejection, but most consolidations land 0.05-0.15 below the active model on an
    # earlier task (in between): 16 of the 71 consolidations came out safe (README)
    if not quick:
        budgets += [(2500, s) for s in range(3, 9)] + [(3000, s) for s in range(3)] + [(4000, 0)]
        budgets += [(2500, s) for s in range(9, 29)] + [(1500, s) for s in range(2, 12)]
    for steps, seed in budgets:
        specs.append(
            (
                f"replay-{steps}-s{seed}",
                "good: replay consolidation",
                lambda s=steps, sd=seed: from_active(s, sd, data(TASKS)),
            )
        )
    if not quick:  # gentler: a tenth of the learning rate keeps the earlier tasks' behaviour closer
        for steps, seed in [(300, s) for s in range(5)] + [(600, 0), (600, 1)] + [(1000, s) for s in range(20)]:
            specs.append(
                (
                    f"replay-lr1e-4-{steps}-s{seed}",
                    "good: replay consolidation, lr 1e-4",
                    lambda st=steps, sd=seed: from_active(st, sd, data(TASKS), lr=1e-4),
                )
            )
    specs.append(("naive-1500", "bad: naive fine-tuning", lambda: from_active(1500, 0, data([new]))))
    if not quick:
        specs.append(("naive-400", "bad: naive fine-tuning", lambda: from_active(400, 1, data([new]))))
        specs.append(("undertrained-20", "bad: undertrained", lambda: from_active(20, 0, data(TASKS))))
        specs.append(
            (
                "poisoned-push",
                "bad: poisoned demonstrations (push actions shuffled)",
                lambda: from_active(1500, 0, data(TASKS, poison="push-v3")),
            )
        )

    def noisy(scale: float, head: int | None, seed: int):
        m = fresh()
        m.load_state_dict(torch.load(mdir / f"{base_name}.pt"))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in m.named_parameters():
                if head is not None and not name.startswith("head"):
                    continue
                noise = torch.randn(p.shape, generator=g) * scale * (p.std() if p.numel() > 1 else 1.0)
                if head is not None:  # only the rows of one task's head
                    mask = torch.zeros_like(p)
                    mask[head] = 1.0
                    noise = noise * mask
                p.add_(noise)
        return m.eval(), TASKS

    for scale in [0.5] if quick else [0.03, 0.1, 0.3, 1.0]:
        specs.append((f"noise-{scale}", f"bad: weight noise x{scale} std", lambda sc=scale: noisy(sc, None, 1)))
    for j in [1] if quick else range(4):
        specs.append((f"head-noise-{TASKS[j]}", f"bad: regression on {TASKS[j]} only", lambda jj=j: noisy(1.0, jj, 2)))
    if not quick:  # milder: a BC error the offline stage sees, with a closed-loop effect to be measured
        for j in (1, 3):
            specs.append(
                (
                    f"head-noise-0.5-{TASKS[j]}",
                    f"mild: noise x0.5 on {TASKS[j]}'s head",
                    lambda jj=j: noisy(0.5, jj, 3),
                )
            )
    cands = []
    # good candidates first: the noisy ones are made from the last of them
    for name, kind, make in specs:
        cands.append({"name": name, "kind": kind, "onnx": cached(name, make)})
    return {"name": "active", "onnx": active, "tasks": earlier}, cands


def _upper_bound(k: int, n: int, alpha: float = 0.05) -> float | None:
    """One-sided (1 - alpha) Clopper-Pearson upper bound on a rate of ``k`` in ``n``."""
    if n == 0:
        return None
    if k == n:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(1 - alpha, k + 1, n - k))


def true_success(work: Path, pool, onnx: bytes, episodes: int, label: str) -> dict[str, float]:
    """Success per task over ``episodes`` variations from TRUTH_SEED0, cached by model sha256."""
    import hashlib

    sha = hashlib.sha256(onnx).hexdigest()
    f = work / "truth.json"
    cache = json.loads(f.read_text()) if f.exists() else {}
    key = f"{sha}:{episodes}:{pool.max_steps}"
    if key in cache:
        return cache[key]
    tasks = json.loads(_meta_tasks(onnx))
    t0 = time.perf_counter()
    futures = {t: [pool.submit({"m": onnx}, t, TRUTH_SEED0 + k) for k in range(episodes)] for t in tasks}
    out = {t: float(np.mean([fu.result()["m"] for fu in fs])) for t, fs in futures.items()}
    log(f"true success of {label}: {out} ({time.perf_counter() - t0:.0f} s)")
    cache = json.loads(f.read_text()) if f.exists() else {}
    cache[key] = out
    f.write_text(json.dumps(cache, indent=1))
    return out


class Serving:
    """The active policy serving in closed loop in this process while the gate runs, as in the demo:
    PolicyRuntime.infer and a simulator step per tick at a fixed control rate (no catch-up burst
    after a late tick); every tick's end time is kept so the rate achieved during each gate can be read."""

    def __init__(self, onnx: bytes, tasks: list[str], rate_hz: float, max_steps: int):
        from lifelong_ros.serving.runtime import PolicyRuntime
        from lifelong_ros.sim.metaworld import MetaWorldSim

        self.runtime = PolicyRuntime(onnx, version="active")
        self.sims = [MetaWorldSim(t, steps_after_success=10, max_steps=max_steps) for t in tasks]
        self.period = 1.0 / rate_hz
        self.ticks: list[float] = []
        self.infer_us: list[float] = []
        self.late = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serving", daemon=True)

    def _run(self) -> None:
        next_tick, episode = time.perf_counter(), 0
        while not self._stop.is_set():
            head = episode % len(self.sims)
            sim = self.sims[head]
            obs, done = sim.reset(TRUTH_SEED0 + episode), False
            while not done and not self._stop.is_set():
                next_tick += self.period
                delay = next_tick - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                else:
                    self.late += 1
                    next_tick = max(next_tick, time.perf_counter() - self.period)
                t0 = time.perf_counter_ns()
                out = self.runtime.infer(obs, head)
                self.infer_us.append((time.perf_counter_ns() - t0) / 1e3)
                obs, _, done, _ = sim.step(out.action)
                self.ticks.append(time.perf_counter())
            episode += 1

    def __enter__(self) -> Serving:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.runtime.close()

    def rates(self, t0: float, t1: float) -> list[float]:
        """Ticks per second in each whole second of [t0, t1] (the whole span when shorter)."""
        ticks = np.asarray(self.ticks)
        ticks = ticks[(ticks >= t0) & (ticks < t1)]
        if t1 - t0 < 1.0:
            return [len(ticks) / (t1 - t0)]
        edges = t0 + np.arange(int(t1 - t0) + 1)
        return [float(n) for n in np.histogram(ticks, edges)[0]]


def _rates(rows: list[dict], key: str, safe: list[dict], regressed: list[dict]) -> dict:
    sub_r = [r for r in regressed if r in rows]
    sub_s = [r for r in safe if r in rows]
    return {
        "candidates": len(rows),
        "detection_rate": (sum(r[key] == "rejected" for r in sub_r) / len(sub_r)) if sub_r else None,
        "regressed_candidates": len(sub_r),
        "false_rejection_rate": (sum(r[key] == "rejected" for r in sub_s) / len(sub_s)) if sub_s else None,
        "safe_candidates": len(sub_s),
    }


def _meta_tasks(onnx: bytes) -> str:
    import onnx as onnx_lib

    m = onnx_lib.load_from_string(onnx)
    return {p.key: p.value for p in m.metadata_props}["tasks"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: 4 candidates, 10 truth episodes per cell")
    ap.add_argument("--work", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "lifelong_gate_power"))
    ap.add_argument("--truth-episodes", type=int, default=None, help="episodes per (model, task) for the truth")
    ap.add_argument("--truth-workers", type=int, default=2)
    ap.add_argument(
        "--truth-only",
        action="store_true",
        help="build the population and measure (cache) its true success, then stop without gating",
    )
    ap.add_argument("--max-steps", type=int, default=150, help="episode cap, the same for truth and gate")
    ap.add_argument("--max-pairs", type=int, default=50)
    ap.add_argument(
        "--gate-workers",
        type=int,
        default=0,
        help="episode workers of the gate (default: cores - 1, the product's default; they run at nice +5)",
    )
    ap.add_argument(
        "--serve-rate-hz",
        type=float,
        default=None,
        help="control rate of the active policy served in this process while the gate runs (default: the demo's)",
    )
    ap.add_argument(
        "--gate-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a gate setting (repeatable), e.g. regression_rel_tol=3",
    )
    args = ap.parse_args()
    truth_n = args.truth_episodes or (10 if args.quick else 100)

    from lifelong_ros.demo import DemoSettings
    from lifelong_ros.safety.gate import GateConfig, RegressionSuite, SafetyGate
    from lifelong_ros.safety.registry import ModelRegistry
    from lifelong_ros.sim.pool import RolloutPool, default_workers

    work = Path(args.work) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    demos = demonstrations(work, TASKS, 15 if args.quick else 50, 5 if args.quick else 10, 500)
    active, cands = build_population(work, demos, args.quick)
    suites = [
        RegressionSuite(t, demos[t]["held_obs"], demos[t]["held_act"], demos[t]["held_ep"], source="heldout")
        for t in TASKS
    ]
    truth_pool = RolloutPool(args.truth_workers, max_steps=args.max_steps)
    gate_pool = RolloutPool(args.gate_workers or default_workers(), max_steps=args.max_steps)
    overrides = {}
    for item in args.gate_set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    cfg = GateConfig.from_dict(
        {"latency_budget_ms": 50.0, "closed_loop_max_pairs": args.max_pairs, "closed_loop_seed": HELDOUT_SEED0}
        | overrides
    )
    rows = []
    with truth_pool, gate_pool, contextlib.ExitStack() as stack:
        active_truth = true_success(work, truth_pool, active["onnx"], truth_n, "active")
        truths = [true_success(work, truth_pool, c["onnx"], truth_n, c["name"]) for c in cands]
        if args.truth_only:
            print(json.dumps({"active": active_truth} | {c["name"]: t for c, t in zip(cands, truths)}, indent=1))
            return 0
        serve_hz = args.serve_rate_hz or DemoSettings.serve_rate_hz
        for f in gate_pool.warm(TASKS):  # workers up before the first gate, as in the running loop
            f.result()
        serving = stack.enter_context(Serving(active["onnx"], active["tasks"], serve_hz, args.max_steps))
        time.sleep(2.0)  # the serving loop settles before the first gate
        window_rates: list[float] = []
        for i, (c, truth) in enumerate(zip(cands, truths)):
            reg = ModelRegistry(work / "registries" / c["name"])
            if reg.active() is None:
                v1 = reg.register(active["onnx"], tasks=active["tasks"], method="joint", target_task=TASKS[3])
                reg.set_decision(v1, "approved", "bench")
                reg.promote(v1)
            vid = reg.register(c["onnx"], tasks=TASKS, method=c["name"], target_task=TASKS[4])
            late0 = serving.late
            t0 = time.perf_counter()
            run_before = gate_pool.episodes_run
            rep = SafetyGate(reg, cfg).evaluate(vid, suites, TASKS[4], episodes=gate_pool, decide=False)
            t1 = time.perf_counter()
            gate_s = t1 - t0
            rates = serving.rates(t0, t1)
            window_rates += rates
            soft = [ch for ch in rep.checks if ch.kind in SOFT and isinstance(ch.threshold, float) and ch.threshold]
            worst = max(soft, key=lambda ch: ch.value / ch.threshold) if soft else None
            drops = {t: active_truth[t] - truth[t] for t in TASKS[:4]}
            row = {
                "name": c["name"],
                "kind": c["kind"],
                "true_success": truth,
                "true_drop": drops,
                "class": (
                    "regressed"
                    if max(drops.values()) >= 0.2
                    else "safe"
                    if max(drops.values()) <= 0.05 and truth[TASKS[4]] >= cfg.closed_loop_min_success + 0.05
                    else "in_between"
                ),
                "decision": rep.decision,
                "failed": rep.failed,
                "deferred": rep.deferred,
                # the offline stage's worst BC / out-of-bounds finding, as a multiple of its threshold
                "offline_worst": None if worst is None else [worst.name, round(worst.value / worst.threshold, 2)],
                "rejected_before_closed_loop": any(
                    not ch.passed for ch in rep.checks if not ch.kind.startswith("closed_loop")
                ),
                # the same checks deciding as they do without a simulator (nothing deferred)
                "decision_without_simulator": (
                    "rejected"
                    if rep.deferred or any(not ch.passed for ch in rep.checks if not ch.kind.startswith("closed_loop"))
                    else "approved"
                ),
                "calibration": c["name"] in CALIBRATION,
                "gate_s": round(gate_s, 2),
                "episodes_run": gate_pool.episodes_run - run_before,
                "serving_hz_min": round(min(rates), 1),
                "serving_late_ticks": serving.late - late0,
                "pairs": {c2.task: c2.detail.get("pairs") for c2 in rep.checks if c2.kind.startswith("closed_loop")},
            }
            rows.append(row)
            log(
                f"[{i + 1}/{len(cands)}] {c['name']}: {row['class']} -> {rep.decision} {rep.failed} "
                f"(deferred {rep.deferred}) in {gate_s:.1f} s, serving {min(rates):.0f}-{max(rates):.0f} Hz"
            )
    regressed = [r for r in rows if r["class"] == "regressed"]
    safe = [r for r in rows if r["class"] == "safe"]
    times = np.array([r["gate_s"] for r in rows])
    lat = np.asarray(serving.infer_us)
    result = {
        "bench": "gate_power",
        "quick": args.quick,
        "population": len(rows),
        "truth_episodes_per_cell": truth_n,
        "max_steps": args.max_steps,
        "gate_workers": gate_pool.workers,
        "gate_overrides": overrides,
        "active_true_success": active_truth,
        "detection_rate": (sum(r["decision"] == "rejected" for r in regressed) / len(regressed)) if regressed else None,
        "regressed_candidates": len(regressed),
        "false_rejection_rate": (sum(r["decision"] == "rejected" for r in safe) / len(safe)) if safe else None,
        "false_rejection_upper_95": _upper_bound(sum(r["decision"] == "rejected" for r in safe), len(safe)),
        "safe_candidates": len(safe),
        "in_between_candidates": len(rows) - len(regressed) - len(safe),
        "gate_s_per_update": {
            "median": float(np.median(times)),
            "p90": float(np.percentile(times, 90)),
            "max": float(times.max()),
        },
        "episodes_per_update_median": float(np.median([r["episodes_run"] for r in rows])),
        "serving_during_gate": {
            "target_hz": serve_hz,
            "achieved_hz_median": float(np.median(window_rates)),
            "achieved_hz_min": float(np.min(window_rates)),
            "statistic": "ticks in each whole second while a gate ran",
            "late_ticks": serving.late,
            "ticks": len(serving.ticks),
            "infer_us_p50": float(np.percentile(lat, 50)),
            "infer_us_p99": float(np.percentile(lat, 99)),
        },
        "offline_reject_factor": cfg.offline_reject_factor,
        "rejected_before_closed_loop": sum(r["rejected_before_closed_loop"] for r in rows),
        "deferred_to_closed_loop": sum(bool(r["deferred"]) for r in rows),
        "not_in_calibration": _rates([r for r in rows if not r["calibration"]], "decision", safe, regressed),
        "offline_checks_without_simulator": _rates(rows, "decision_without_simulator", safe, regressed),
        "targets": {"detection_rate": ">= 0.95", "false_rejection_rate": "<= 0.05", "gate_s_per_update": "<= 15"},
        "candidates": rows,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "note": "gate episodes of the active model are cached across candidates (as in the running loop)",
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
