"""Mechanics of the continual loop and its plugins (EWC, online EWC, SI, L2, replay) on tiny problems."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from lifelong_ros.learning.model import PolicyConfig, PolicyNet, bc_loss
from lifelong_ros.learning.strategies import build_plugins
from lifelong_ros.learning.trainer import (
    EWC,
    ContinualTrainer,
    Experience,
    L2Anchor,
    MemoryBuffer,
    OnlineEWC,
    Plugin,
    Replay,
    SynapticIntelligence,
    TrainOptions,
    cross_entropy_loss,
    empirical_fisher,
    read_plugin_state,
    save_plugin_state,
)

torch.set_num_threads(1)


class Line(nn.Module):
    """y = w * x + b: two parameters, so the Fisher can be written out by hand."""

    def __init__(self, w: float = 0.5, b: float = -0.25):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x: torch.Tensor, task_id: torch.Tensor) -> torch.Tensor:
        return self.w * x + self.b


def mse(model, x, t, y):
    return torch.mean((model(x, t) - y) ** 2)


def hand_fisher(w: float, b: float, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample loss (w x + b - y)^2: dL/dw = 2 r x, dL/db = 2 r; Fisher = mean of their squares."""
    r = w * x + b - y
    return {"w": torch.mean((2 * r * x) ** 2), "b": torch.mean((2 * r) ** 2)}


def line_data(seed: int, n: int = 16, slope: float = 2.0, offset: float = 1.0) -> Experience:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    y = slope * x + offset + 0.3 * torch.randn(n, generator=g)
    return Experience.from_arrays(x, y, 0, name=f"line{seed}")


def small_policy(heads: int = 2) -> PolicyNet:
    torch.manual_seed(0)
    return PolicyNet(PolicyConfig(obs_dim=4, act_dim=2, hidden=(16,), num_heads=heads))


def regression_task(seed: int, head: int, n: int = 128) -> Experience:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    w = torch.randn(4, 2, generator=g)
    return Experience.from_arrays(x, torch.tanh(1.5 * x @ w), head, name=f"task{seed}")


# --------------------------------------------------------------------------------------------- EWC
def test_empirical_fisher_equals_hand_computation_on_two_parameter_model():
    model = Line(0.5, -0.25)
    exp = line_data(1)
    fisher = empirical_fisher(model, mse, exp, chunk=5)  # chunks of 5 exercise the accumulation
    hand = hand_fisher(0.5, -0.25, exp.x, exp.y)
    assert set(fisher) == {"w", "b"}
    for k in hand:
        torch.testing.assert_close(fisher[k], hand[k], rtol=1e-5, atol=1e-7)
    # per-sample, not minibatch: the squared mean gradient is a different (smaller) number
    r = 0.5 * exp.x - 0.25 - exp.y
    assert float(torch.mean(2 * r) ** 2) < 0.9 * float(fisher["b"])


def test_empirical_fisher_subsamples_at_most_max_samples():
    model = Line()
    exp = line_data(2, n=50)
    f = empirical_fisher(model, mse, exp, max_samples=50, generator=torch.Generator().manual_seed(0))
    sub = empirical_fisher(model, mse, exp, max_samples=7, generator=torch.Generator().manual_seed(0))
    idx = torch.randperm(50, generator=torch.Generator().manual_seed(0))[:7]
    hand = hand_fisher(0.5, -0.25, exp.x[idx], exp.y[idx])
    torch.testing.assert_close(sub["w"], hand["w"])
    assert not torch.allclose(sub["w"], f["w"])


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_quadratically_with_distance():
    model = small_policy()
    exp = regression_task(1, 0)
    ewc = EWC(lam=10.0, fisher_samples=64)
    trainer = ContinualTrainer(model, bc_loss, [ewc], TrainOptions(steps=20, batch_size=32))
    trainer.train_exp(exp)
    assert float(ewc.penalty(model).detach()) == 0.0
    direction = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    values = []
    for scale in (0.01, 0.02, 0.04):
        moved = model.clone()
        with torch.no_grad():
            for n, p in moved.named_parameters():
                p.add_(scale * direction[n])
        values.append(float(ewc.penalty(moved).detach()))
    assert 0 < values[0] < values[1] < values[2]
    assert values[1] / values[0] == pytest.approx(4.0, rel=1e-3)
    # the penalty is lam/2 * sum F * d^2 with the stored Fisher
    fisher = ewc.fishers[0]
    expected = 0.5 * 10.0 * sum(float((fisher[n] * (0.04 * direction[n]) ** 2).sum()) for n in fisher)
    assert values[2] == pytest.approx(expected, rel=1e-4)


def test_ewc_fisher_of_an_unused_head_is_zero_so_that_head_is_free():
    model = small_policy()
    ewc = EWC(lam=1.0, fisher_samples=64)
    ContinualTrainer(model, bc_loss, [ewc], TrainOptions(steps=5)).train_exp(regression_task(1, 0))
    f = ewc.fishers[0]
    assert float(f["head_w"][1].abs().sum()) == 0.0 and float(f["head_w"][0].sum()) > 0.0


def test_online_ewc_accumulates_decayed_fisher_matching_a_hand_computation():
    model = Line(0.5, -0.25)
    gamma = 0.6
    plugin = OnlineEWC(lam=1.0, decay=gamma, fisher_samples=1000)
    trainer = ContinualTrainer(model, mse, [plugin], TrainOptions(steps=15, batch_size=8, lr=0.05))
    e1, e2 = line_data(1), line_data(2, slope=-1.0, offset=0.0)
    trainer.train_exp(e1)
    w1, b1 = float(model.w.detach()), float(model.b.detach())
    trainer.train_exp(e2)
    w2, b2 = float(model.w.detach()), float(model.b.detach())
    f1, f2 = hand_fisher(w1, b1, e1.x, e1.y), hand_fisher(w2, b2, e2.x, e2.y)
    for k in ("w", "b"):
        torch.testing.assert_close(plugin.fisher[k], gamma * f1[k] + f2[k], rtol=1e-5, atol=1e-7)
    assert float(plugin.anchor["w"]) == w2 and float(plugin.anchor["b"]) == b2
    assert plugin.tasks == 2
    # separate EWC keeps both pairs instead
    sep = EWC(lam=1.0)
    model2 = Line(0.5, -0.25)
    t2 = ContinualTrainer(model2, mse, [sep], TrainOptions(steps=15, batch_size=8, lr=0.05))
    t2.train_exp(e1)
    t2.train_exp(e2)
    assert len(sep.fishers) == 2
    torch.testing.assert_close(sep.fishers[0]["w"], f1["w"], rtol=1e-5, atol=1e-7)


def test_online_ewc_handles_heads_added_between_tasks():
    model = small_policy(heads=2)
    plugin = OnlineEWC(lam=5.0, decay=0.5, fisher_samples=64)
    trainer = ContinualTrainer(model, bc_loss, [plugin], TrainOptions(steps=10))
    trainer.train_exp(regression_task(1, 0))
    old = plugin.fisher["head_w"].clone()
    model.ensure_heads(3)
    assert float(plugin.penalty(model).detach()) == 0.0  # new head rows are outside the anchor
    trainer.train_exp(regression_task(2, 2))
    assert plugin.fisher["head_w"].shape[0] == 3
    torch.testing.assert_close(plugin.fisher["head_w"][0], 0.5 * old[0])  # head 0 unused by task 2
    assert float(plugin.fisher["head_w"][2].sum()) > 0


def test_penalty_names_the_parameter_when_shapes_are_incompatible():
    plugin = L2Anchor(1.0)
    ContinualTrainer(small_policy(), bc_loss, [plugin], TrainOptions(steps=2)).train_exp(regression_task(1, 0))
    other = PolicyNet(PolicyConfig(obs_dim=5, act_dim=2, hidden=(16,), num_heads=2))
    with pytest.raises(ValueError, match="backbone.0.weight"):
        plugin.penalty(other)


# ---------------------------------------------------------------------------------------------- SI
class Quadratic(nn.Module):
    def __init__(self, theta: list[float]):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(theta))

    def forward(self, x, t):
        return self.theta


A_DIAG = torch.tensor([1.0, 4.0, 0.25])


def quad_loss(model, x, t, y):
    th = model(x, t)
    return 0.5 * (A_DIAG * th * th).sum()


def test_si_omega_is_the_path_integral_of_the_loss_on_a_quadratic():
    model = Quadratic([1.0, -0.5, 2.0])
    theta0 = model.theta.detach().clone()
    si = SynapticIntelligence(c=1.0, xi=1e-3)
    exp = Experience.from_arrays(torch.zeros(8, 1), torch.zeros(8, 1), 0, "q")
    ContinualTrainer(model, quad_loss, [si], TrainOptions(steps=300, batch_size=8, lr=2e-3)).train_exp(exp)
    theta1 = model.theta.detach()
    # for a separable quadratic the path integral of -g dtheta per parameter is the loss drop of that parameter
    drop = 0.5 * A_DIAG * (theta0**2 - theta1**2)
    assert torch.all(drop > 0)
    torch.testing.assert_close(si.w["theta"], drop, rtol=0.02, atol=1e-5)
    delta = theta1 - theta0
    torch.testing.assert_close(si.omega["theta"], si.w["theta"] / (delta**2 + 1e-3))
    assert torch.equal(si.anchor["theta"], theta1)
    # a second experience adds to Omega
    before = si.omega["theta"].clone()
    ContinualTrainer(model, quad_loss, [si], TrainOptions(steps=50, batch_size=8, lr=2e-3)).train_exp(exp)
    assert torch.all(si.omega["theta"] > before)
    assert si.tasks == 2


def test_si_integrates_the_task_gradient_not_the_penalty():
    """With an SI penalty active, w must still follow the task loss (Zenke et al.), not loss + penalty."""
    model = Quadratic([1.0, 1.0, 1.0])
    si = SynapticIntelligence(c=100.0)
    exp = Experience.from_arrays(torch.zeros(4, 1), torch.zeros(4, 1), 0, "q")
    trainer = ContinualTrainer(model, quad_loss, [si], TrainOptions(steps=30, batch_size=4, lr=1e-3))
    trainer.train_exp(exp)
    grads: list[torch.Tensor] = []
    orig = si.after_backward

    def spy(m):
        grads.append(m.theta.grad.detach().clone())
        orig(m)

    si.after_backward = spy  # observe what SI sees; the computation is unchanged
    trainer.train_exp(exp)
    theta_before_first_step = si._start["theta"]
    torch.testing.assert_close(grads[0], A_DIAG * theta_before_first_step)


# ------------------------------------------------------------------------------------------ replay
def test_replay_mixes_old_task_samples_at_the_configured_ratio():
    memory = MemoryBuffer(per_task=40, seed=0)
    old_a = Experience.from_arrays(torch.randn(50, 4), torch.randn(50, 2), 0, "a")
    old_b = Experience.from_arrays(torch.randn(50, 4), torch.randn(50, 2), 1, "b")
    memory.add(old_a)
    memory.add(old_b)
    seen: list[torch.Tensor] = []

    def recording_loss(model, x, t, y):
        seen.append(t.clone())
        return bc_loss(model, x, t, y)

    model = PolicyNet(PolicyConfig(obs_dim=4, act_dim=2, hidden=(8,), num_heads=3))
    new = Experience.from_arrays(torch.randn(100, 4), torch.randn(100, 2), 2, "new")
    replay = Replay(memory, ratio=0.25)
    ContinualTrainer(model, recording_loss, [replay], TrainOptions(steps=200, batch_size=30)).train_exp(new)
    assert len(seen) == 200
    for t in seen:
        assert len(t) == 40 and int((t == 2).sum()) == 30  # 30 new + 10 replayed = 25 % old
    old = torch.cat([t[t != 2] for t in seen])
    share_a = float((old == 0).float().mean())
    assert 0.4 < share_a < 0.6  # task-balanced over the two stored tasks


def test_balanced_replay_gives_every_earlier_task_the_new_tasks_share():
    memory = MemoryBuffer(per_task=40, seed=0)
    seen: list[torch.Tensor] = []

    def recording_loss(model, x, t, y):
        seen.append(t.clone())
        return bc_loss(model, x, t, y)

    model = PolicyNet(PolicyConfig(obs_dim=4, act_dim=2, hidden=(8,), num_heads=4))
    trainer = ContinualTrainer(
        model, recording_loss, [Replay(memory, "balanced"), memory], TrainOptions(steps=300, batch_size=20)
    )
    for k in range(3):
        seen.clear()
        trainer.train_exp(Experience.from_arrays(torch.randn(60, 4), torch.randn(60, 2), k, f"t{k}"))
        for t in seen:  # 20 new + 20 per earlier task: joint training's composition
            assert len(t) == 20 * (k + 1) and int((t == k).sum()) == 20
        if k == 2:
            old = torch.cat([t[t != 2] for t in seen])
            assert 0.4 < float((old == 0).float().mean()) < 0.6
    assert trainer.plugins[0].config()["ratio"] == "balanced"


def test_balanced_replay_needs_a_source_that_counts_its_tasks():
    replay = Replay(lambda n: (torch.zeros(n, 4), torch.zeros(n, dtype=torch.int64), torch.zeros(n, 2)), "balanced")
    with pytest.raises(TypeError, match="num_tasks"):
        replay.replay_count(8)
    with pytest.raises(ValueError, match="'balanced'"):
        Replay(MemoryBuffer(), "everything")


def test_replay_with_empty_memory_trains_on_new_data_only():
    memory = MemoryBuffer(per_task=10)
    seen = []
    model = small_policy()
    trainer = ContinualTrainer(
        model,
        lambda m, x, t, y: (seen.append(len(t)), bc_loss(m, x, t, y))[1],
        [Replay(memory, 0.5), memory],
        TrainOptions(steps=3, batch_size=16),
    )
    trainer.train_exp(regression_task(1, 0))
    assert seen == [16, 16, 16]
    assert len(memory.items) == 1 and len(memory.items[0][0]) == 10


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_replay_rejects_ratio_outside_zero_one(ratio):
    with pytest.raises(ValueError, match=str(ratio)):
        Replay(MemoryBuffer(), ratio)


# ---------------------------------------------------------------------------- forgetting end to end
def forgetting_on_two_tasks(plugins_for) -> tuple[float, float]:
    model = small_policy()
    a, b = regression_task(1, 0), regression_task(2, 1)
    trainer = ContinualTrainer(model, bc_loss, plugins_for(), TrainOptions(steps=150, batch_size=32, lr=1e-2, seed=0))
    trainer.train_exp(a)
    with torch.no_grad():
        before = float(bc_loss(model, a.x, a.task_idx, a.y))
    trainer.train_exp(b)
    with torch.no_grad():
        after = float(bc_loss(model, a.x, a.task_idx, a.y))
        b_loss = float(bc_loss(model, b.x, b.task_idx, b.y))
    return after - before, b_loss


def test_naive_forgets_and_ewc_plus_replay_forgets_less():
    naive_increase, _naive_b = forgetting_on_two_tasks(list)

    def ewc_replay():
        memory = MemoryBuffer(per_task=64, seed=0)
        return build_plugins("ewc_replay", {"ewc_lambda": 100.0, "replay_ratio": 0.5, "fisher_samples": 128}, memory)

    kept_increase, kept_b = forgetting_on_two_tasks(ewc_replay)
    assert naive_increase > 0.1  # task A's loss rises clearly after learning B
    assert kept_increase < 0.25 * naive_increase
    assert kept_b < 0.2  # and B is still learned


# ---------------------------------------------------------------------------- loop mechanics
def test_training_is_deterministic_under_a_seed():
    def run():
        model = small_policy()
        memory = MemoryBuffer(32, seed=3)
        plugins = build_plugins("ewc_replay", None, memory)
        trainer = ContinualTrainer(model, bc_loss, plugins, TrainOptions(steps=30, seed=7))
        trainer.train_exp(regression_task(1, 0))
        trainer.train_exp(regression_task(2, 1))
        return model.state_dict()

    s1, s2 = run(), run()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_cancellation_is_checked_every_step_and_skips_consolidation():
    calls = {"n": 0}

    def stop_after_five() -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    ewc = EWC()
    trainer = ContinualTrainer(small_policy(), bc_loss, [ewc], TrainOptions(steps=100), should_stop=stop_after_five)
    result = trainer.train_exp(regression_task(1, 0))
    assert result.cancelled and result.steps == 5 and calls["n"] == 6
    assert ewc.fishers == [] and trainer.experiences_seen == 0


def test_progress_reports_phase_step_and_loss():
    events = []
    trainer = ContinualTrainer(
        small_policy(),
        bc_loss,
        [EWC(fisher_samples=16)],
        TrainOptions(steps=25, progress_every=10),
        on_progress=lambda phase, step, loss: events.append((phase, step, loss)),
    )
    result = trainer.train_exp(regression_task(1, 0))
    assert [(p, s) for p, s, _ in events] == [("train", 10), ("train", 20), ("train", 25), ("consolidate", 25)]
    assert all(math.isfinite(v) for _, _, v in events)
    assert result.steps == 25 and len(result.losses) == 25


def test_classification_loss_trains_a_single_head_model():
    torch.manual_seed(0)
    x = torch.randn(200, 4)
    y = (x[:, 0] > 0).long()
    model = PolicyNet(PolicyConfig(obs_dim=4, act_dim=2, hidden=(16,), num_heads=1, multi_head=False))
    ContinualTrainer(model, cross_entropy_loss, [], TrainOptions(steps=100, lr=1e-2)).train_exp(
        Experience.from_arrays(x, y, 0)
    )
    acc = float((model(x, torch.zeros(200, dtype=torch.int64)).argmax(1) == y).float().mean())
    assert acc > 0.95


def test_bad_experiences_and_plugin_sets_are_rejected_with_the_offending_value():
    with pytest.raises(ValueError, match="x has 3 rows but y has 2"):
        Experience.from_arrays(torch.zeros(3, 2), torch.zeros(2, 1), 0)
    with pytest.raises(ValueError, match="int64"):
        Experience(torch.zeros(3, 2), torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(ValueError, match=r"duplicates \['ewc'\]"):
        ContinualTrainer(small_policy(), bc_loss, [EWC(), EWC()])
    with pytest.raises(ValueError, match="decay"):
        OnlineEWC(decay=1.5)
    with pytest.raises(ValueError, match="steps"):
        TrainOptions(steps=0)
    with pytest.raises(ValueError, match="grad_clip"):
        TrainOptions(grad_clip=0.0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        TrainOptions(checkpoint_every=0)


# ---------------------------------------------------------------------------- persistence
def test_plugin_state_round_trips_through_save_and_load(tmp_path):
    memory = MemoryBuffer(16, seed=0)
    plugins = [
        EWC(3.0, 64),
        OnlineEWC(2.0, 0.9, 64),
        SynapticIntelligence(0.5),
        L2Anchor(0.1),
        Replay(memory, 0.5),
        memory,
    ]
    model = small_policy()
    trainer = ContinualTrainer(model, bc_loss, plugins, TrainOptions(steps=10))
    trainer.train_exp(regression_task(1, 0))
    trainer.train_exp(regression_task(2, 1))
    path = tmp_path / "consolidation.safetensors"
    trainer.save(path)

    memory2 = MemoryBuffer(16, seed=1)
    fresh = [
        EWC(3.0, 64),
        OnlineEWC(2.0, 0.9, 64),
        SynapticIntelligence(0.5),
        L2Anchor(0.1),
        Replay(memory2, 0.5),
        memory2,
    ]
    restored = ContinualTrainer(model, bc_loss, fresh, TrainOptions(steps=10))
    restored.restore(path)
    assert restored.experiences_seen == 2
    for old, new in zip(plugins, fresh):
        a, b = old.tensors(), new.tensors()
        assert set(a) == set(b)
        assert all(torch.equal(a[k], b[k]) for k in a), old.name
        assert old.config() == new.config()
    moved = model.clone()
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.01)
    for old, new in zip(plugins[:4], fresh[:4]):
        expected = float(old.penalty(moved).detach())
        assert float(new.penalty(moved).detach()) == pytest.approx(expected) and expected > 0

    with pytest.raises(
        ValueError, match=r"plugins \['l2', 'memory', 'online_ewc', 'replay', 'si'\] that the strategy \['ewc'\] lacks"
    ):
        ContinualTrainer(model, bc_loss, [EWC()]).restore(path)
    partial = EWC()
    ContinualTrainer(model, bc_loss, [partial]).restore(path, strict=False)  # dropping the rest on purpose
    assert len(partial.fishers) == 2
    tensors, config = read_plugin_state(path)
    assert config["online_ewc"]["decay"] == 0.9 and "ewc/fisher.1.head_w" in tensors
    save_plugin_state(plugins, tmp_path / "plugins_only.safetensors")  # without the trainer counter
    t2, c2 = read_plugin_state(tmp_path / "plugins_only.safetensors")
    assert "trainer" not in c2 and set(t2) == set(tensors)


def test_consolidation_resumes_after_a_restart_exactly(tmp_path):
    """Train A, 'restart' (save model + plugin state, rebuild), train B: same result as without restart."""

    def plugins():
        return [OnlineEWC(10.0, 0.8, 64), SynapticIntelligence(0.5)]

    a, b = regression_task(1, 0), regression_task(2, 1)
    model = small_policy()
    straight = ContinualTrainer(model, bc_loss, plugins(), TrainOptions(steps=20, seed=4))
    straight.train_exp(a)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    straight.save(tmp_path / "state.safetensors")
    straight.train_exp(b)

    resumed_model = small_policy()
    resumed_model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    resumed = ContinualTrainer(resumed_model, bc_loss, plugins(), TrainOptions(steps=20, seed=4))
    resumed.restore(tmp_path / "state.safetensors")
    assert resumed.experiences_seen == 1
    resumed.train_exp(b)
    for (n, p), q in zip(model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(p, q), n


def test_state_file_of_another_kind_is_rejected(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a consolidation state file"):
        read_plugin_state(path)


def test_a_plugin_added_after_the_first_task_starts_fresh_when_state_is_restored(tmp_path):
    """The learner's first task has nothing to replay (EWC only); the second adds Replay."""
    model = small_policy()
    first = ContinualTrainer(model, bc_loss, [OnlineEWC(10.0, fisher_samples=32)], TrainOptions(steps=5))
    first.train_exp(regression_task(1, 0))
    first.save(tmp_path / "s.safetensors")
    memory = MemoryBuffer(8)
    memory.add(regression_task(1, 0))
    ewc = OnlineEWC(10.0, fisher_samples=32)
    second = ContinualTrainer(model, bc_loss, [ewc, Replay(memory, 0.5)], TrainOptions(steps=5))
    second.restore(tmp_path / "s.safetensors")
    assert ewc.tasks == 1 and second.experiences_seen == 1
    second.train_exp(regression_task(2, 1))
    assert ewc.tasks == 2


def test_store_replay_samples_earlier_tasks_train_split_with_model_head_indices(tmp_path):
    from lifelong_ros.experience.store import ExperienceStore
    from lifelong_ros.learning.trainer import StoreReplay

    store = ExperienceStore(tmp_path / "store", obs_dim=3, act_dim=2)
    try:
        for k, task in enumerate(["reach", "push", "pick"]):
            for ep in range(3):
                store.append_episode(
                    task,
                    f"{task}-{ep}",
                    np.full((10, 3), k, np.float32),
                    np.full((10, 2), k, np.float32),
                    split="train",
                )
        store.append_episode(
            "reach", "held", np.full((10, 3), 99.0, np.float32), np.zeros((10, 2), np.float32), split="heldout"
        )
        order = ["push", "reach", "pick"]  # the model's head order differs from insertion order
        replay = StoreReplay(store, ["reach", "push"], order, seed=0)
        assert replay.num_tasks == 2 and Replay(replay, "balanced").replay_count(16) == 32
        x, t, _y = replay(400)
        assert x.dtype == torch.float32 and t.dtype == torch.int64 and x.shape == (400, 3)
        assert set(t.tolist()) == {0, 1}
        assert torch.all(x[t == 1] == 0) and torch.all(x[t == 0] == 1)  # head 1 is "reach" (obs 0)
        assert 0.4 < float((t == 0).float().mean()) < 0.6  # task-balanced
        assert float(x.max()) < 99  # held-out episodes never replayed
        with pytest.raises(ValueError, match=r"\['drawer'\] are not in the model's task list"):
            StoreReplay(store, ["drawer"], order)
    finally:
        store.close()


# ------------------------------------------------------------------------------- learning rate
def test_cosine_learning_rate_runs_from_lr_to_lr_final():
    opts = TrainOptions(steps=50, lr=1e-3, lr_final=1e-5)
    rates = [opts.lr_at(s) for s in range(1, 51)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-5)
    assert all(a > b for a, b in itertools.pairwise(rates))
    assert TrainOptions(steps=50, lr=1e-3).lr_at(50) == 1e-3
    with pytest.raises(ValueError, match="lr_final"):
        TrainOptions(lr=1e-3, lr_final=1e-2)


def test_trainer_applies_the_schedule_step_by_step():
    class StepSizes(Plugin):
        name = "step_sizes"

        def __init__(self):
            self.prev, self.sizes = None, []

        def after_update(self, model):
            flat = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
            if self.prev is not None:
                self.sizes.append(float((flat - self.prev).abs().max()))
            self.prev = flat

    def sizes(lr_final):
        spy = StepSizes()
        torch.manual_seed(0)
        ContinualTrainer(small_policy(), bc_loss, [spy], TrainOptions(steps=40, lr=1e-2, lr_final=lr_final)).train_exp(
            regression_task(0, 0)
        )
        return spy.sizes

    constant, decayed = sizes(None), sizes(0.0)
    # Adam's steps are about lr in size: the decayed run's last steps shrink to nothing.
    assert decayed[-1] < 1e-4 < 1e-3 < constant[-1]
    assert decayed[0] == pytest.approx(constant[0], rel=1e-2)
