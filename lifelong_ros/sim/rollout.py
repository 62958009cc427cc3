"""Closed-loop episodes of an ONNX policy in the embedded simulator, through the serving path.

The safety gate's rollout check and the benchmarks measure success the way the robot runs the
policy: the same PolicyRuntime (validated inference) the policy server uses, on the simulator.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from lifelong_ros.serving.runtime import PolicyRuntime
from lifelong_ros.sim.metaworld import MetaWorldSim


def head_for(runtime: PolicyRuntime, task: str) -> int:
    """The model head serving ``task``: its index in the model's ``tasks`` metadata (0 when single-head)."""
    tasks = json.loads(runtime.metadata.get("tasks", "[]"))
    if tasks and task not in tasks:
        raise ValueError(f"the model's tasks {tasks} do not include {task!r}")
    return tasks.index(task) if tasks and runtime.num_heads > 1 else 0


def sim_rollout_fn(seed_base: int = 100_000, max_steps: int = 500) -> Callable[[bytes, str, int], int]:
    """A gate ``rollout_fn(onnx_bytes, task, n) -> successes`` backed by the embedded Meta-World simulator.

    Runs the policy closed loop on the variations ``seed_base .. seed_base + n - 1`` (far from the
    seeds demonstrations are collected with): the same seeds for every model, so candidate and
    active are compared on identical variations.
    """
    envs: dict[str, MetaWorldSim] = {}

    def rollout(onnx: bytes, task: str, n: int) -> int:
        with PolicyRuntime(onnx, version="rollout") as runtime:
            head = head_for(runtime, task)
            if task not in envs:
                envs[task] = MetaWorldSim(task, steps_after_success=0, max_steps=max_steps)
            env = envs[task]
            return sum(
                bool(env.run_episode(lambda o: runtime.infer(o, head).action, seed_base + k).success) for k in range(n)
            )

    return rollout
