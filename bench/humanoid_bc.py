"""Behaviour cloning on the G1 humanoid tasks: one policy per task from 50 expert demonstrations.

For each task: the scripted expert's episodes on variation seeds 0..N-1 (failed ones dropped),
recorded with DART noise (``--noise``: Gaussian noise added to the executed action, the expert's
clean action recorded; without it the cloned policy drifts off the demonstrated states at once),
a PolicyNet (the project's model: observation normalisation inside, MLP 50(+6)->256->256->17; by default
normalised by the G1's own observation scale, given the hand and the target relative to the object
beside the observation, and predicting the change to the action that holds the joints;
``--normalizer data`` / ``--no-differences`` / ``--action absolute`` for the alternatives) trained
with the project's ContinualTrainer on the BC loss, then closed-loop success on held-out
variations (seeds from 200_000, the demo's evaluation range). Baseline in the same process: the
expert on the same held-out seeds. Prints ONE JSON object.

    python bench/humanoid_bc.py                         # 50 demonstrations, 20 held-out episodes per task
    python bench/humanoid_bc.py --tasks g1-lift --steps 2000
    python bench/humanoid_bc.py --tasks g1-place --steps 3000 --no-differences   # the recipe before
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from lifelong_ros.learning.model import PolicyConfig, PolicyNet, bc_loss
from lifelong_ros.learning.recipes import NORMALIZER_STD_FLOOR
from lifelong_ros.learning.trainer import ContinualTrainer, Experience, TrainOptions
from lifelong_ros.sim.episodes import stack_episodes
from lifelong_ros.sim.humanoid.env import (
    ACT_DIM,
    INPUT_DIFFERENCES,
    OBS_DIM,
    G1Sim,
    action_prior,
    available_tasks,
    collect_demonstrations,
    evaluate,
    observation_scale,
)

EVAL_SEED0 = 200_000
HIDDEN = (256, 256)


def run(
    task: str,
    demos: int,
    episodes: int,
    steps: int,
    seed: int,
    noise: float,
    normalizer: str,
    action: str,
    differences: bool,
) -> dict:
    sim = G1Sim(task, steps_after_success=10)
    t0 = time.perf_counter()
    eps: list = []
    tried = 0
    while len(eps) < demos and tried < 3 * demos:  # `demos` successful ones: the expert fails a few under noise
        n = demos - len(eps)
        eps += collect_demonstrations(task, range(tried, tried + n), sim=sim, noise=noise)
        tried += n
    demo_s = time.perf_counter() - t0
    obs, act = stack_episodes(eps)
    torch.manual_seed(seed)
    diffs = INPUT_DIFFERENCES if differences else ()
    model = PolicyNet(PolicyConfig(OBS_DIM, ACT_DIM, HIDDEN, 1, residual=action == "residual", differences=diffs))
    if action == "residual":
        model.set_action_prior(*action_prior())
    if normalizer == "robot":
        model.set_input_scale(*observation_scale())
    else:
        model.set_normalizer(obs)
        with torch.no_grad():
            model.obs_std.clamp_(min=NORMALIZER_STD_FLOOR)
    exp = Experience.from_arrays(obs, act, 0, name=task)
    options = TrainOptions(steps=steps, batch_size=256, lr=1e-3, lr_final=1e-5, seed=seed)
    t0 = time.perf_counter()
    result = ContinualTrainer(model, bc_loss, (), options).train_exp(exp)
    train_s = time.perf_counter() - t0
    model.eval()
    head = torch.zeros(1, dtype=torch.int64)

    def policy(o: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(o).unsqueeze(0), head)[0].numpy()

    seeds = list(range(EVAL_SEED0, EVAL_SEED0 + episodes))
    eval_sim = G1Sim(task, steps_after_success=0)
    t0 = time.perf_counter()
    bc = evaluate(policy, task, seeds, sim=eval_sim)
    eval_s = time.perf_counter() - t0
    expert = evaluate(eval_sim.expert(), task, seeds, sim=eval_sim)
    return {
        "bc_success": bc,
        "expert_success": expert,
        "demonstrations": len(eps),
        "demonstration_seeds_tried": tried,
        "demonstration_samples": len(obs),
        "final_bc_loss": round(result.final_loss, 5),
        "seconds": {"demos": round(demo_s, 1), "train": round(train_s, 1), "eval": round(eval_s, 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=available_tasks(), choices=available_tasks())
    parser.add_argument("--demos", type=int, default=50)
    parser.add_argument("--episodes", type=int, default=20, help="held-out closed-loop episodes per task")
    parser.add_argument("--steps", type=int, default=6000, help="Adam steps (batch 256, cosine lr 1e-3 -> 1e-5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.015, help="DART noise on executed demo actions (0 = none)")
    parser.add_argument(
        "--normalizer",
        choices=("robot", "data"),
        default="robot",
        help="input normalisation: the G1's fixed scale (env.observation_scale), or fitted to the task's demonstrations",
    )
    parser.add_argument(
        "--action",
        choices=("residual", "absolute"),
        default="residual",
        help="the network predicts the change to the action that holds the joints (env.action_prior), or the action",
    )
    parser.add_argument(
        "--no-differences",
        dest="differences",
        action="store_false",
        help="without the hand and target relative to the object as inputs (env.INPUT_DIFFERENCES)",
    )
    args = parser.parse_args()
    for name in ("demos", "episodes", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: expected at least 1")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    per_task = {
        t: run(
            t,
            args.demos,
            args.episodes,
            args.steps,
            args.seed,
            args.noise,
            args.normalizer,
            args.action,
            args.differences,
        )
        for t in args.tasks
    }
    print(
        json.dumps(
            {
                "benchmark": "humanoid_bc",
                "model": f"PolicyNet {OBS_DIM}->{'->'.join(map(str, HIDDEN))}->{ACT_DIM}, one task per model, "
                f"{args.normalizer} normaliser, {args.action} action, "
                f"{'with' if args.differences else 'without'} relative positions",
                "tasks": per_task,
                "min_bc_success": min(r["bc_success"] for r in per_task.values()),
                "acceptance": {"bc_success_per_task": ">= 0.8"},
                "passed": all(r["bc_success"] >= 0.8 for r in per_task.values()),
                "settings": vars(args),
                "wall_s": round(time.perf_counter() - t0, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
