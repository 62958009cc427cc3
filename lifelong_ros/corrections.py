"""Corrections (DAgger): the served policy drives, the teacher labels every state it visits.

A few demonstrations show a task only along the expert's own path; once the policy drifts off
it, it sees states nobody demonstrated and compounds its error. A correction round runs the
current ONNX model through ``PolicyRuntime`` (the serving path the robot uses) in the simulator,
labels each visited observation with the scripted expert's action, and appends those episodes to
the experience store with source ``correction``. When the policy stalls (``takeover_after`` steps
without a new best reward) the teacher takes over and finishes the episode, as a person at a
teleoperation device would (HG-DAgger): the episode then shows the way out of the stuck state
instead of hundreds of steps of it — pure DAgger's 500-step stalls outnumbered a single
demonstration ten to one and lowered success (bench/fewshot_newtask.py, README). ``correction`` is a training source
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

# Steps without a new best reward before the teacher takes over. Meta-World's scripted experts go up
# to ~100 steps without one in their slowest phases (box-close, measured over 10 seeds), so a teacher
# may take over an episode the policy would still have finished; that costs nothing but policy states.
TAKEOVER_AFTER = 60


@dataclass
class CorrectionRound:
    """What one round of corrections recorded."""

    task: str
    version: str  # the model version that drove
    episodes: list[str] = field(default_factory=list)  # episode names in the store
    records: int = 0
    successes: list[bool] = field(default_factory=list)  # did the episode succeed (the teacher may have finished it)
    takeovers: list[int | None] = field(default_factory=list)  # the step the teacher took over, per episode
    discarded: int = 0  # failed episodes not stored (with a takeover)
    seconds: float = 0.0

    @property
    def policy_success(self) -> float:
        """Episodes the policy finished on its own (the teacher never took over), as a fraction."""
        alone = [ok and t is None for ok, t in zip(self.successes, self.takeovers)]
        return sum(alone) / len(alone) if alone else float("nan")

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "version": self.version,
            "episodes": len(self.episodes),
            "records": self.records,
            "policy_success": self.policy_success,
            "takeovers": sum(t is not None for t in self.takeovers),
            "discarded": self.discarded,
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
    takeover_after: int = TAKEOVER_AFTER,
) -> CorrectionRound:
    """Run ``runtime``'s model on ``task`` for one episode per variation seed; record each visited
    state with the scripted expert's action (source ``correction``) into ``store``. ``sim``: the
    task's simulator (any robot's; default a Meta-World one). ``takeover_after``: steps without a new
    best reward before the expert takes over (0: never; the policy drives to the end, pure DAgger).
    With a takeover, an episode that still fails is not stored: the teacher
    could take over and did not finish, so its labels lead nowhere (Meta-World's box-close expert
    fails from 4 of 5 states a one-demonstration policy left it in). Pure DAgger keeps every episode.

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
    patience = takeover_after if takeover_after > 0 else None
    try:
        for seed in seeds:
            name = correction_episode_name(runtime.version, seed)
            if name in done:
                continue
            ep = sim.run_episode(
                lambda o: runtime.infer(o, head).action, int(seed), label=expert, takeover_after=patience
            )
            out.successes.append(ep.success)
            out.takeovers.append(ep.takeover)
            if not ep.success and patience is not None:
                out.discarded += 1
                continue
            store.append_episode(task, name, ep.obs, ep.action, ep.reward, ep.done, source=CORRECTION, split=split)
            out.episodes.append(name)
            out.records += len(ep.obs)
    finally:
        if own:
            sim.close()
    out.seconds = time.perf_counter() - t0
    return out
