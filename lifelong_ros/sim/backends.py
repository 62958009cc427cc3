"""The embedded simulators by robot name, behind one interface, so a front end can take ``--robot``.

``backend("metaworld")`` is Meta-World's Sawyer arm (39 -> 4), ``backend("g1")`` the Unitree G1
humanoid with hands at a table (50 -> 17). Both simulators have the same methods (``Simulator``):
tasks are data (a task name plus a variation seed), ``reset``/``step``/``run_episode``/``expert``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from lifelong_ros.sim.episodes import Episode, Simulator, expert_episodes


@dataclass(frozen=True)
class SimBackend:
    name: str
    label: str  # what messages call its tasks: "unknown G1 task 'g1-rech'"
    description: str
    obs_dim: int
    act_dim: int
    default_tasks: tuple[str, ...]
    # Noise on the executed action while recording expert demonstrations (DART); 0 = clean.
    demo_noise: float
    available_tasks: Callable[[], list[str]]
    _make: Callable[[str, int, int | None], Simulator]
    # What a new policy takes from the robot: its observation scale, the prior action that holds the
    # commanded joints, the relative positions it is given (learning.jobs.ModelPrior's fields). None =
    # nothing: the normaliser is fitted to the first task's demonstrations and the network predicts
    # the action (Meta-World keeps that: these were measured only on the G1, bench/humanoid_bc.py).
    _model_prior: Callable[[], dict[str, Any]] | None = None

    def model_prior(self) -> dict[str, Any] | None:
        """The fields of the ModelPrior a model trained from scratch for this robot starts from."""
        return None if self._model_prior is None else self._model_prior()

    def make(self, task: str, steps_after_success: int = 10, max_steps: int | None = None) -> Simulator:
        """A simulator of ``task``; ``max_steps`` caps the task's own episode length (None = no cap)."""
        return self._make(task, steps_after_success, max_steps)

    def collect_demonstrations(
        self, task: str, seeds: Iterable[int], sim: Simulator, progress: bool = False
    ) -> list[Episode]:
        """Successful expert episodes of ``sim``'s task on ``seeds`` (with this backend's demo noise)."""
        if sim.env_name != task:
            raise ValueError(f"collect_demonstrations({task!r}) with a simulator of {sim.env_name!r}")
        noise = {"noise": self.demo_noise} if self.demo_noise > 0 else {}
        return expert_episodes(sim, seeds, only_successful=True, progress=progress, **noise)


def _metaworld_sim(task: str, steps_after_success: int, max_steps: int | None) -> Simulator:
    from lifelong_ros.sim.metaworld import MetaWorldSim

    return MetaWorldSim(task, steps_after_success, 500 if max_steps is None else max_steps)


def _metaworld_tasks() -> list[str]:
    from lifelong_ros.sim.metaworld import available_tasks

    return available_tasks()


def _g1_sim(task: str, steps_after_success: int, max_steps: int | None) -> Simulator:
    from lifelong_ros.sim.humanoid.env import G1Sim
    from lifelong_ros.sim.humanoid.tasks import check_task

    own = check_task(task).max_steps  # each G1 task has its own episode length; max_steps only caps it
    return G1Sim(task, steps_after_success, own if max_steps is None else min(own, max_steps))


def _g1_model_prior() -> dict[str, Any]:
    from lifelong_ros.sim.humanoid.env import INPUT_DIFFERENCES, action_prior, observation_scale

    (mean, std), (gain, bias) = observation_scale(), action_prior()
    return {
        "obs_scale": ([float(v) for v in mean], [float(v) for v in std]),
        "action_prior": ([float(v) for v in gain], [float(v) for v in bias]),
        "differences": INPUT_DIFFERENCES,
    }


def _g1_tasks() -> list[str]:
    from lifelong_ros.sim.humanoid.tasks import available_tasks

    return available_tasks()


BACKENDS: dict[str, SimBackend] = {
    "metaworld": SimBackend(
        "metaworld",
        "Meta-World",
        "Meta-World's Sawyer arm (MuJoCo), 39-d observation, 4-d action",
        39,
        4,
        ("reach-v3", "push-v3", "pick-place-v3", "button-press-topdown-v3", "drawer-open-v3"),
        0.0,
        _metaworld_tasks,
        _metaworld_sim,
    ),
    "g1": SimBackend(
        "g1",
        "G1",
        "Unitree G1 with hands at a table (MuJoCo Menagerie), 50-d observation, 17 joint position targets",
        50,
        17,
        ("g1-reach", "g1-lift", "g1-place", "g1-push", "g1-button"),
        0.015,
        _g1_tasks,
        _g1_sim,
        _g1_model_prior,
    ),
}


def backend(name: str) -> SimBackend:
    """The simulator backend called ``name``; ValueError naming the choices otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"unknown robot {name!r}; expected one of {sorted(BACKENDS)}")
    return BACKENDS[name]


def robot_for_tasks(tasks: Iterable[str]) -> str:
    """The robot whose simulator has every one of ``tasks`` (a registry version's heads, say);
    ValueError when none has them all."""
    tasks = list(tasks)
    for name in sorted(BACKENDS, key=lambda n: n != "g1"):  # the G1's task list is the cheaper import
        if tasks and set(tasks) <= set(BACKENDS[name].available_tasks()):
            return name
    raise ValueError(f"no simulated robot has all of the tasks {tasks}; robots: {sorted(BACKENDS)}")
