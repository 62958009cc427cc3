"""Closed-loop episodes of an ONNX policy in the embedded simulator, through the serving path.

The safety gate's closed-loop test (through sim.pool) and the benchmarks measure success the way
the robot runs the policy: the same PolicyRuntime (validated, output-guarded inference) the policy
server uses, on the simulator.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from lifelong_ros.serving.runtime import PolicyRuntime
from lifelong_ros.sim.episodes import Simulator


def head_for(runtime: PolicyRuntime, task: str) -> int:
    """The model head serving ``task``: its index in the model's ``tasks`` metadata (0 when single-head)."""
    tasks = json.loads(runtime.metadata.get("tasks", "[]"))
    if tasks and task not in tasks:
        raise ValueError(f"the model's tasks {tasks} do not include {task!r}")
    return tasks.index(task) if tasks and runtime.num_heads > 1 else 0


def successes(runtime: PolicyRuntime, env: Simulator, seeds: Iterable[int]) -> list[bool]:
    """Closed-loop success of the served model on ``env``'s task, one episode per variation seed."""
    head = head_for(runtime, env.env_name)
    return [bool(env.run_episode(lambda o: runtime.infer(o, head).action, int(s)).success) for s in seeds]
