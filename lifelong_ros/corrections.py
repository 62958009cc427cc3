"""Corrections (DAgger): the served policy drives, the teacher labels every state it visits.

A few demonstrations show a task only along the expert's own path; once the policy drifts off
it, it sees states nobody demonstrated and compounds its error. A correction round runs the
current ONNX model through ``PolicyRuntime`` (the serving path the robot uses) in the simulator,
labels each visited observation with the scripted expert's action, and appends those episodes to
the experience store with source ``correction``. ``correction`` is a training source
(experience/sources.py), so the next adaptation of the task trains on demonstrations plus
corrections (learning/recipes.py: ``shots`` counts the demonstrations, every correction comes on
top).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from lifelong_ros.experience.sources import CORRECTION
from lifelong_ros.experience.store import ExperienceStore
from lifelong_ros.serving.runtime import PolicyRuntime
from lifelong_ros.sim.episodes import Simulator
from lifelong_ros.sim.metaworld import MetaWorldSim
from lifelong_ros.sim.rollout import head_for


@dataclass
class CorrectionRound:
    """What one round of corrections recorded."""

    task: str
    version: str  # the model version that drove
    episodes: list[str] = field(default_factory=list)  # episode names in the store
    records: int = 0
    successes: list[bool] = field(default_factory=list)  # did the policy succeed while it drove
    seconds: float = 0.0

    @property
    def policy_success(self) -> float:
        return sum(self.successes) / len(self.successes) if self.successes else float("nan")

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "version": self.version,
            "episodes": len(self.episodes),
            "records": self.records,
            "policy_success": self.policy_success,
            "seconds": round(self.seconds, 3),
        }


def correction_episode_name(version: str, seed: int) -> str:
    return f"correction-{version}-{int(seed)}"


def collect_corrections(
    runtime: PolicyRuntime,
    task: str,
    store: ExperienceStore,
    seeds: Iterable[int],
    *,
    sim: Simulator | None = None,
    steps_after_success: int = 10,
    max_steps: int = 500,
    split: Literal["train", "heldout"] = "train",
) -> CorrectionRound:
    """Run ``runtime``'s model on ``task`` for one episode per variation seed; record each visited
    state with the scripted expert's action (source ``correction``) into ``store``. ``sim``: the
    task's simulator (any robot's; default a Meta-World one).

    The policy's actions go through the runtime's output guard, exactly as served. An episode of a
    seed this version already corrected is not recorded twice (its name is taken).
    """
    if store.obs_dim != runtime.obs_dim or store.act_dim != runtime.act_dim:
        raise ValueError(
            f"store {store.path} holds {store.obs_dim}->{store.act_dim} records but the model maps "
            f"{runtime.obs_dim}->{runtime.act_dim}"
        )
    t0 = time.perf_counter()
    own = sim is None
    sim = sim or MetaWorldSim(task, steps_after_success, max_steps)
    if sim.env_name != task:
        raise ValueError(f"the simulator runs {sim.env_name!r}, not {task!r}")
    head = head_for(runtime, task)
    expert = sim.expert()
    done = {e.episode for e in store.episodes(task)} if task in store.tasks() else set()
    out = CorrectionRound(task, runtime.version)
    try:
        for seed in seeds:
            name = correction_episode_name(runtime.version, seed)
            if name in done:
                continue
            ep = sim.run_episode(lambda o: runtime.infer(o, head).action, int(seed), label=expert)
            store.append_episode(task, name, ep.obs, ep.action, ep.reward, ep.done, source=CORRECTION, split=split)
            out.episodes.append(name)
            out.records += len(ep.obs)
            out.successes.append(ep.success)
    finally:
        if own:
            sim.close()
    out.seconds = time.perf_counter() - t0
    return out
