"""Meta-learning mechanics on tiny problems: exact gradients, first-order and Reptile updates, ANIL, Meta-SGD."""

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from lifelong_ros.learning.meta import MetaConfig, MetaLearner, loop_meta_grads, mse
from lifelong_ros.learning.model import PolicyConfig, PolicyNet

torch.set_num_threads(1)


def tiny(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)).to(dtype)


def sine_batch(seed=0, tasks=3, k=5, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    amp = torch.rand(tasks, 1, 1, generator=g) * 4 + 0.5
    phase = torch.rand(tasks, 1, 1, generator=g) * math.pi
    x = torch.rand(tasks, 2 * k, 1, generator=g) * 10 - 5
    y = amp * torch.sin(x + phase)
    x, y = x.to(dtype), y.to(dtype)
    return (x[:, :k],), y[:, :k], (x[:, k:],), y[:, k:]


def meta_objective(model, batch, lr, first_order=False):
    """Plain-autograd meta-loss as a function of the model's current parameters."""
    xs, ys, xq, yq = batch
    names, params = zip(*model.named_parameters())
    total = 0.0
    for t in range(ys.shape[0]):
        g = torch.autograd.grad(mse(model(xs[0][t]), ys[t]), params, create_graph=not first_order)
        fast = {n: p - lr * (gi.detach() if first_order else gi) for n, p, gi in zip(names, params, g)}
        total = total + mse(functional_call(model, fast, (xq[0][t],)), yq[t])
    return total / ys.shape[0]


def test_maml_second_order_meta_gradient_matches_finite_differences():
    model = tiny(torch.float64)
    batch = sine_batch(dtype=torch.float64)
    _, grads = MetaLearner(model, MetaConfig("maml", inner_lr=0.05)).meta_loss_and_grads(batch)
    eps = 1e-6
    for name, idx in (("0.weight", (2, 0)), ("2.bias", (0,)), ("2.weight", (0, 1))):
        p = dict(model.named_parameters())[name]
        with torch.no_grad():
            p[idx] += eps
        up = float(meta_objective(model, batch, 0.05).detach())
        with torch.no_grad():
            p[idx] -= 2 * eps
        down = float(meta_objective(model, batch, 0.05).detach())
        with torch.no_grad():
            p[idx] += eps
        assert abs(grads[name][idx].item() - (up - down) / (2 * eps)) < 1e-6


def test_vmap_meta_gradients_equal_the_python_loop_reference():
    model = tiny()
    batch = sine_batch(tasks=5)
    _, grads = MetaLearner(model, MetaConfig("maml", inner_lr=0.01)).meta_loss_and_grads(batch)
    ref = loop_meta_grads(model, batch, 0.01)
    for n in ref:
        torch.testing.assert_close(grads[n], ref[n], rtol=1e-4, atol=1e-6)


def test_fomaml_drops_exactly_the_second_order_term():
    model = tiny(torch.float64)
    batch = sine_batch(dtype=torch.float64)
    _, first = MetaLearner(model, MetaConfig("fomaml", inner_lr=0.05)).meta_loss_and_grads(batch)
    _, second = MetaLearner(model, MetaConfig("maml", inner_lr=0.05)).meta_loss_and_grads(batch)
    params = [p for _, p in model.named_parameters()]
    expected = torch.autograd.grad(meta_objective(model, batch, 0.05, first_order=True), params)
    for (n, _), e in zip(model.named_parameters(), expected):
        torch.testing.assert_close(first[n], e)
    assert any(not torch.allclose(first[n], second[n]) for n in first)


def test_reptile_moves_the_initialisation_to_the_mean_of_the_adapted_weights():
    model = tiny(torch.float64)
    learner = MetaLearner(model, MetaConfig("reptile", inner_lr=0.02, reptile_inner_steps=3))
    learner.optimizer = torch.optim.SGD(learner.params.values(), lr=1.0)  # theta - 1 * (theta - mean(phi)) = mean(phi)
    xs, ys, xq, yq = sine_batch(dtype=torch.float64)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapted = []
    for t in range(ys.shape[0]):
        x, y = torch.cat([xs[0][t], xq[0][t]]), torch.cat([ys[t], yq[t]])
        adapted.append(learner.adapt(start, (x,), y, steps=3, first_order=True))
    learner.meta_step((xs, ys, xq, yq))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), torch.stack([a[n] for a in adapted]).mean(0))


def test_anil_adapts_only_the_heads_of_a_policy():
    net = PolicyNet(PolicyConfig(obs_dim=6, act_dim=2, hidden=(8,), num_heads=2))
    learner = MetaLearner(net, MetaConfig("anil", inner_lr=0.1, inner_steps=3))
    assert learner.adapt_names == ("head_w", "head_b")
    obs, tid, act = torch.randn(10, 6), torch.zeros(10, dtype=torch.long), torch.randn(10, 2)
    params = {n: p.detach() for n, p in net.named_parameters()}
    fast = learner.adapted_params((obs, tid), act, steps=3)
    for n in params:
        changed = not torch.equal(fast[n], params[n])
        assert changed == n.startswith("head"), n
    assert float(learner.loss(fast, (obs, tid), act)) < float(learner.loss(params, (obs, tid), act))


def test_meta_sgd_learns_its_step_sizes():
    learner = MetaLearner(tiny(), MetaConfig("metasgd", inner_lr=0.01))
    before = {n: p.detach().clone() for n, p in learner.log_lr.items()}
    _, grads = learner.meta_loss_and_grads(sine_batch())
    assert all(float(grads[f"log_lr/{n}"].abs().sum()) > 0 for n in before)
    learner.meta_step(sine_batch())
    assert any(not torch.equal(before[n], p.detach()) for n, p in learner.log_lr.items())


def _draw(gen):
    return sine_batch(seed=int(torch.randint(0, 10_000, (1,), generator=gen)), tasks=4)


def test_meta_training_is_deterministic_and_lowers_the_post_adaptation_loss():
    def train(seed):
        learner = MetaLearner(tiny(), MetaConfig("maml", seed=seed))
        losses = learner.meta_train(_draw, 150)
        return learner, losses

    a, la = train(0)
    b, lb = train(0)
    assert la == lb and all(torch.equal(p, q) for p, q in zip(a.params.values(), b.params.values()))
    assert sum(la[-20:]) / 20 < sum(la[:20]) / 20


def test_should_stop_cancels_meta_training_promptly_and_bad_config_is_refused():
    learner = MetaLearner(tiny(), MetaConfig("fomaml"))
    calls = []
    losses = learner.meta_train(_draw, 1000, should_stop=lambda: len(calls.append(1) or calls) > 3)
    assert len(losses) == 3
    with pytest.raises(ValueError, match="unknown meta-learning method 'mamal'"):
        MetaConfig("mamal")
    with pytest.raises(ValueError, match=r"adapt_params \['nope'\]"):
        MetaLearner(tiny(), MetaConfig("anil", adapt_params=("nope",)))


def test_nearest_head_init_copies_the_known_head_that_fits_the_new_demonstrations():
    """Head inference (nearest_ewc_replay): demonstrations produced by head 1 make head 1 the new
    head's start, and the choice follows the data (head 0's demonstrations pick head 0)."""
    from lifelong_ros.learning.recipes import init_head_from_nearest

    torch.manual_seed(0)
    net = PolicyNet(PolicyConfig(obs_dim=6, act_dim=2, hidden=(16,), num_heads=3))
    obs = torch.randn(64, 6)
    for source, name in ((1, "b"), (0, "a")):
        with torch.no_grad():
            act = net(obs, torch.full((64,), source))
        got = init_head_from_nearest(net, ["a", "b"], obs.numpy(), act.numpy())
        assert got["nearest_task"] == name and got["nearest_head_loss"] < 1e-10
        assert torch.equal(net.head_w[2], net.head_w[source]) and torch.equal(net.head_b[2], net.head_b[source])
        with torch.no_grad():
            net.head_w[2].normal_()  # a fresh head again for the next case
