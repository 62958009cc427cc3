"""The embedded simulator: Meta-World manipulation tasks behind a small interface of ours.

A task is data (an environment name plus a variation seed), not a code path. Demonstrations come
from Meta-World's scripted experts. Episodes end a configurable number of steps after the first
success, so evaluation costs tens of steps instead of 500.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from lifelong_ros.sim.episodes import Episode, expert_episodes, record_episode, success_rate

OBS_DIM = 39
ACT_DIM = 4
ACTION_LOW = -1.0
ACTION_HIGH = 1.0

# gymnasium/Meta-World are chatty about things that do not concern us (deprecations, float64 obs).
warnings.filterwarnings("ignore", module="gymnasium")
warnings.filterwarnings("ignore", module="metaworld")
# Meta-World renders nothing here, but importing it loads MuJoCo's GL backend: EGL by default, or the
# platform PyOpenGL is already bound to in this process (OSMesa after the head camera rendered), so
# the two never conflict ("Cannot use EGL rendering platform": seen in rollout workers spawned from it).
os.environ.setdefault("MUJOCO_GL", os.environ.get("PYOPENGL_PLATFORM") or "egl")


def _metaworld():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import metaworld
        import metaworld.env_dict
        import metaworld.policies
        import metaworld.types
    return metaworld


def available_tasks() -> list[str]:
    return sorted(_metaworld().env_dict.ALL_V3_ENVIRONMENTS)


def benchmark_tasks(benchmark: str = "ML45", split: str = "train") -> list[str]:
    """The tasks of a Meta-World meta-learning benchmark split (ML10/ML45, ``train`` or ``test``)."""
    table = getattr(_metaworld().env_dict, f"{benchmark}_V3", None)
    if table is None or split not in table:
        raise ValueError(f"unknown benchmark split {benchmark}/{split}; expected ML10 or ML45, train or test")
    return sorted(table[split])


class MetaWorldSim:
    """One Meta-World environment; ``reset(seed)`` picks the variation deterministically.

    The goal is part of the observation (Meta-World's multi-task setting), so one policy can
    serve every variation of a task.
    """

    def __init__(self, env_name: str, steps_after_success: int = 10, max_steps: int = 500):
        mw = _metaworld()
        if env_name not in mw.env_dict.ALL_V3_ENVIRONMENTS:
            raise ValueError(f"unknown Meta-World task {env_name!r}; expected one of {available_tasks()}")
        if steps_after_success < 0 or max_steps < 1:
            raise ValueError(
                f"need steps_after_success >= 0 and max_steps >= 1, got {steps_after_success}, {max_steps}"
            )
        self.env_name = env_name
        self.steps_after_success = steps_after_success
        self.max_steps = min(max_steps, 500)
        self._cls = mw.env_dict.ALL_V3_ENVIRONMENTS[env_name]
        self._kwargs = dict(mw.env_dict.ML1_ARGS_KWARGS[env_name]["kwargs"])
        self._kwargs.pop("task_id", None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._env = self._cls()
        # Multi-task setting: the goal is observed (partially_observable=False), so one policy
        # serves every variation. set_task needs a placeholder variation; reset() replaces it.
        space = self._env._random_reset_space
        data = dict(self._kwargs, rand_vec=(space.low + space.high) / 2, env_cls=self._cls, partially_observable=False)
        self._env.set_task(mw.types.Task(env_name=env_name, data=pickle.dumps(data)))
        self._t = 0
        self._success_at: int | None = None

    def reset(self, seed: int, placement: np.ndarray | None = None) -> np.ndarray:
        """Start an episode of variation ``seed``; returns the first observation (float32 [39]).

        Meta-World samples the variation itself (object/goal placement, resampling invalid ones)
        from its np_random, which we seed: the same seed always gives the same variation.
        ``placement`` instead gives the variation explicitly, as Meta-World's placement vector
        (object coordinates, then goal coordinates; see ``placement_space``), e.g. to keep one goal
        while moving the object. ValueError if the task's placement rules reject it.
        """
        env = self._env
        if placement is None:
            env._freeze_rand_vec = False
            env.seeded_rand_vec = True
            env.seed(int(seed))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obs, _ = env.reset()
        else:
            obs = self._reset_to(np.asarray(placement, dtype=np.float64))
        self._t = 0
        self._success_at = None
        return obs.astype(np.float32)

    @property
    def placement_space(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(low, high, goal_dims) of placement vectors: the last ``goal_dims`` entries place the goal."""
        space = self._env._random_reset_space
        return space.low.copy(), space.high.copy(), int(np.asarray(self._env.goal_space.low).size)

    def _reset_to(self, vec: np.ndarray) -> np.ndarray:
        low, high, _ = self.placement_space
        if vec.shape != low.shape or not np.all((vec >= low - 1e-9) & (vec <= high + 1e-9)):
            raise ValueError(
                f"placement {vec.tolist()} is outside {self.env_name}'s placement space "
                f"[{low.tolist()}, {high.tolist()}]"
            )
        env = self._env
        calls = [0]

        def fixed() -> np.ndarray:
            # Meta-World redraws placements that break a task rule (e.g. object too near the goal);
            # with a fixed vector that loop would never end, so many draws in one reset mean
            # "rejected" (a valid reset draws a few times at most).
            calls[0] += 1
            if calls[0] > 20:
                raise ValueError(f"placement {vec.tolist()} breaks {self.env_name}'s placement rules")
            return vec.copy()

        env._freeze_rand_vec = True
        env._last_rand_vec = vec.copy()
        env._get_state_rand_vec = fixed  # instance attribute: shadows the method for this reset
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obs, _ = env.reset()
        finally:
            del env._get_state_rand_vec
            env._freeze_rand_vec = False
        return obs

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, dict]:
        """Apply ``action`` (clipped to [-1, 1]); ``done`` once max_steps or success + grace elapsed."""
        a = np.asarray(action, dtype=np.float64).reshape(ACT_DIM)
        if not np.isfinite(a).all():  # MuJoCo would go unstable (and print to stdout) on NaN controls
            raise ValueError(f"action {a.tolist()} is not finite; expected {ACT_DIM} finite values in [-1, 1]")
        a = np.clip(a, ACTION_LOW, ACTION_HIGH)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obs, reward, _, _, info = self._env.step(a)
        self._t += 1
        if self._success_at is None and info.get("success", 0.0) >= 1.0:
            self._success_at = self._t
        success = self._success_at is not None
        done = self._t >= self.max_steps or (
            self._success_at is not None and self._t - self._success_at >= self.steps_after_success
        )
        return obs.astype(np.float32), float(reward), done, {"success": success}

    def expert(self) -> Callable[[np.ndarray], np.ndarray]:
        """Meta-World's scripted expert for this task."""
        policy = _metaworld().policies.ENV_POLICY_MAP[self.env_name]()
        return lambda obs: np.asarray(policy.get_action(np.asarray(obs, dtype=np.float64)), dtype=np.float32)

    def run_episode(
        self,
        policy: Callable[[np.ndarray], np.ndarray],
        seed: int,
        placement: np.ndarray | None = None,
        *,
        label: Callable[[np.ndarray], np.ndarray] | None = None,
        takeover_after: int | None = None,
    ) -> Episode:
        """``policy`` drives; with ``label`` each step records ``label``'s action, and with
        ``takeover_after`` it drives once the policy stalls (see record_episode)."""
        return record_episode(
            self,
            policy,
            seed,
            (ACTION_LOW, ACTION_HIGH, ACT_DIM),
            placement,
            label=label,
            takeover_after=takeover_after,
        )

    def close(self) -> None:
        self._env.close()


def collect_demonstrations(
    env_name: str,
    seeds: Iterable[int],
    steps_after_success: int = 10,
    max_steps: int = 500,
    only_successful: bool = True,
    sim: MetaWorldSim | None = None,
    progress: bool = False,
) -> list[Episode]:
    """Expert episodes for each seed (failed expert episodes dropped unless ``only_successful`` is False)."""
    sim = sim or MetaWorldSim(env_name, steps_after_success, max_steps)
    return expert_episodes(sim, seeds, only_successful, progress)


def evaluate(
    policy: Callable[[np.ndarray], np.ndarray],
    env_name: str,
    seeds: Sequence[int],
    steps_after_success: int = 0,
    max_steps: int = 500,
    sim: MetaWorldSim | None = None,
) -> float:
    """Closed-loop success rate of ``policy`` over the variations ``seeds``."""
    if len(seeds) == 0:
        raise ValueError("evaluate needs at least one seed")
    return success_rate(sim or MetaWorldSim(env_name, steps_after_success, max_steps), policy, seeds)
