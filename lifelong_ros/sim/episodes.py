"""What every simulator behind our interface shares: task variations, recorded episodes, and the
loops that run a policy or a scripted expert through one (Meta-World's arm, the G1 humanoid).

A simulator needs ``env_name``, ``reset(seed, placement) -> obs``, ``step(action) -> (obs, reward,
done, info)`` with ``info["success"]``, and ``expert()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class SimTask:
    """One task variation: an environment (task) name and the seed that places objects/goal."""

    env_name: str
    seed: int


@dataclass
class Episode:
    obs: np.ndarray  # [T, obs_dim] float32, the observation each action was taken from
    action: np.ndarray  # [T, act_dim] float32, what the policy commanded (clipped to the action range)
    reward: np.ndarray  # [T] float32
    done: np.ndarray  # [T] bool, True on the last step
    success: bool
    task: SimTask
    takeover: int | None = None  # the step at which the teacher (``label``) took over driving, if it did


@dataclass
class StallWatch:
    """Has the driving policy stalled? ``patience`` steps in a row without a new best reward and no
    success. Fed every step's reward; a teacher takes over once it says so (HG-DAgger)."""

    patience: int
    best: float = -np.inf
    best_at: int = 0
    steps: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.patience, int) and self.patience >= 1):
            raise ValueError(f"takeover_after={self.patience}: expected an int >= 1")

    def stalled(self, reward: float, success: bool) -> bool:
        self.steps += 1
        if reward > self.best + 1e-6:
            self.best, self.best_at = reward, self.steps
        return not success and self.steps - self.best_at >= self.patience


class Simulator(Protocol):
    """What every embedded simulator offers (``MetaWorldSim``, ``G1Sim``; by robot name: ``sim.backends``)."""

    env_name: str

    def reset(self, seed: int, placement: Any = None) -> np.ndarray: ...

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, dict[str, Any]]: ...

    def expert(self) -> Callable[[np.ndarray], np.ndarray]: ...

    def run_episode(
        self,
        policy: Callable[[np.ndarray], np.ndarray],
        seed: int,
        placement: Any = None,
        *,
        label: Callable[[np.ndarray], np.ndarray] | None = None,
        takeover_after: int | None = None,
    ) -> Episode: ...

    def close(self) -> None: ...


def record_episode(
    sim: Simulator,
    policy: Callable[[np.ndarray], np.ndarray],
    seed: int,
    action_range: tuple[float, float, int],
    placement: Any = None,
    noise: float = 0.0,
    label: Callable[[np.ndarray], np.ndarray] | None = None,
    takeover_after: int | None = None,
) -> Episode:
    """One episode of variation ``seed``; ``action_range`` = (low, high, act_dim). ``noise`` > 0 adds
    Gaussian noise of that standard deviation to every executed action while the policy's own action
    is recorded (DART: demonstrations that show how the expert recovers from small deviations).

    ``label`` (e.g. the scripted expert): ``policy`` drives, but every visited state is recorded with
    ``label``'s action instead of the executed one (DAgger: corrections on the policy's own states).
    ``takeover_after`` (with ``label``): once that many steps pass without a new best reward (the
    policy is stuck), ``label`` drives for the rest of the episode, as a teacher at a teleoperation
    device takes over a robot that stalls (HG-DAgger); the step is ``Episode.takeover``."""
    if not noise >= 0:
        raise ValueError(f"noise={noise}: expected a standard deviation >= 0")
    watch = None if takeover_after is None else StallWatch(takeover_after)
    if watch is not None and label is None:
        raise ValueError(f"takeover_after={takeover_after}: a takeover needs a teacher (label)")
    low, high, act_dim = action_range
    rng = np.random.default_rng([int(seed), 7]) if noise > 0 else None
    obs = sim.reset(seed, placement)
    rows_obs, rows_act, rewards = [], [], []
    done, info = False, {"success": False}
    takeover = None
    while not done:
        taught = None if label is None else np.asarray(label(obs), dtype=np.float32).reshape(act_dim)
        if takeover is not None and taught is not None:  # the teacher drives
            act = np.clip(taught, low, high)
        else:
            act = np.asarray(policy(obs), dtype=np.float32).reshape(act_dim)
        rows_obs.append(obs)
        rows_act.append(act if taught is None else taught)
        if rng is not None:
            act = np.clip(act + rng.normal(0.0, noise, act_dim), low, high).astype(np.float32)
        obs, reward, done, info = sim.step(act)
        rewards.append(reward)
        if watch is not None and takeover is None and watch.stalled(reward, bool(info["success"])):
            takeover = len(rewards)
    done_flags = np.zeros(len(rows_obs), dtype=bool)
    done_flags[-1] = True
    return Episode(
        obs=np.stack(rows_obs),
        action=np.clip(np.stack(rows_act), low, high),
        reward=np.asarray(rewards, dtype=np.float32),
        done=done_flags,
        success=bool(info["success"]),
        task=SimTask(sim.env_name, int(seed)),
        takeover=takeover,
    )


def expert_episodes(
    sim: Any, seeds: Iterable[int], only_successful: bool = True, progress: bool = False, **episode_kw: Any
) -> list[Episode]:
    """The scripted expert's episodes for each seed (failed ones dropped unless ``only_successful`` is False)."""
    expert = sim.expert()
    seeds = list(seeds)
    iterator: Iterable[int] = seeds
    if progress:
        from tqdm import tqdm

        iterator = tqdm(seeds, desc=f"demos {sim.env_name}", unit="ep", leave=False)
    episodes = [sim.run_episode(expert, s, **episode_kw) for s in iterator]
    return [e for e in episodes if e.success or not only_successful]


def success_rate(sim: Any, policy: Callable[[np.ndarray], np.ndarray], seeds: Sequence[int]) -> float:
    """Closed-loop success rate of ``policy`` over the variations ``seeds``."""
    if len(seeds) == 0:
        raise ValueError("evaluate needs at least one seed")
    return float(np.mean([sim.run_episode(policy, s).success for s in seeds]))


def stack_episodes(episodes: Sequence[Episode]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate episodes into (obs [N, obs_dim], action [N, act_dim]) training arrays."""
    if not episodes:
        raise ValueError("no episodes to stack")
    return np.concatenate([e.obs for e in episodes]), np.concatenate([e.action for e in episodes])
