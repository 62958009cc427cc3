"""The policy network: per-task heads, single-head mode, growth that keeps old tasks, ONNX export."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lifelong_ros.learning.model import PolicyConfig, PolicyNet, export_onnx, load_policy


def _net(**kw) -> PolicyNet:
    torch.manual_seed(0)
    return PolicyNet(PolicyConfig(obs_dim=6, act_dim=2, hidden=(16,), **kw))


def test_heads_give_different_actions_for_the_same_observation():
    net = _net(num_heads=3)
    obs = torch.randn(4, 6)
    a0 = net(obs, torch.zeros(4, dtype=torch.long))
    a2 = net(obs, torch.full((4,), 2, dtype=torch.long))
    assert not torch.allclose(a0, a2)


def test_single_head_mode_ignores_the_task_id_and_cannot_grow():
    net = _net(num_heads=1, multi_head=False)
    obs = torch.randn(4, 6)
    torch.testing.assert_close(
        net(obs, torch.zeros(4, dtype=torch.long)), net(obs, torch.full((4,), 5, dtype=torch.long))
    )
    net.ensure_heads(4)
    assert net.num_heads == 1
    with pytest.raises(ValueError, match="exactly 1 when multi_head=False"):
        PolicyNet(PolicyConfig(num_heads=2, multi_head=False))


def test_growing_heads_keeps_every_existing_head_exactly():
    net = _net(num_heads=2)
    obs = torch.randn(5, 6)
    before = [net(obs, torch.full((5,), k, dtype=torch.long)).detach() for k in range(2)]
    net.ensure_heads(4)
    assert net.num_heads == 4 and net.config.num_heads == 4
    for k in range(2):
        torch.testing.assert_close(net(obs, torch.full((5,), k, dtype=torch.long)), before[k], rtol=0, atol=0)
    clone = load_policy(net.config.to_dict(), net.state_dict())
    torch.testing.assert_close(
        clone(obs, torch.full((5,), 3, dtype=torch.long)), net(obs, torch.full((5,), 3, dtype=torch.long))
    )


def test_normaliser_is_inside_the_network_and_floors_constant_features():
    net = _net(num_heads=1)
    data = np.random.default_rng(0).normal(3.0, 2.0, size=(500, 6)).astype(np.float32)
    data[:, 0] = 1.0  # a constant feature must not blow up to inf
    net.set_normalizer(data)
    assert (
        float(net.obs_std[0]) > 0
        and torch.isfinite(net(torch.as_tensor(data), torch.zeros(500, dtype=torch.long))).all()
    )
    assert abs(float(net.obs_mean[1]) - 3.0) < 0.3


def test_export_is_one_self_contained_file_with_dynamic_batch_and_metadata():
    net = _net(num_heads=3)
    blob = export_onnx(net, {"tasks": '["a", "b", "c"]'})
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["num_heads"] == "3" and meta["tasks"] == '["a", "b", "c"]' and meta["obs_dim"] == "6"
    for n in (1, 7):
        obs = np.random.default_rng(n).normal(size=(n, 6)).astype(np.float32)
        task = np.arange(n, dtype=np.int64) % 3
        out = sess.run(None, {"obs": obs, "task_id": task})[0]
        ref = net(torch.as_tensor(obs), torch.as_tensor(task)).detach().numpy()
        np.testing.assert_allclose(out, ref, atol=1e-5)


def test_a_residual_policy_adds_the_prior_action_read_off_the_observation_in_torch_and_onnx():
    torch.manual_seed(0)
    net = PolicyNet(PolicyConfig(obs_dim=6, act_dim=2, hidden=(16,), num_heads=2, residual=True))
    gain, bias = np.array([2.0, -0.5], np.float32), np.array([-1.0, 0.25], np.float32)
    net.set_action_prior(gain, bias)
    obs = np.random.default_rng(3).normal(size=(5, 6)).astype(np.float32)
    task = np.array([0, 1, 0, 1, 1], np.int64)
    plain = PolicyNet(PolicyConfig(obs_dim=6, act_dim=2, hidden=(16,), num_heads=2))
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("act_")})
    ref = net(torch.as_tensor(obs), torch.as_tensor(task)).detach().numpy()
    expected = plain(torch.as_tensor(obs), torch.as_tensor(task)).detach().numpy() + obs[:, :2] * gain + bias
    np.testing.assert_allclose(ref, expected, atol=1e-6)
    sess = ort.InferenceSession(export_onnx(net), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"obs": obs, "task_id": task})[0], ref, atol=1e-5)
    clone = load_policy(net.config.to_dict(), net.state_dict())  # the config round-trips the residual
    np.testing.assert_allclose(clone(torch.as_tensor(obs), torch.as_tensor(task)).detach().numpy(), ref, atol=0)
    with pytest.raises(ValueError, match=r"action prior of \(3,\) gains"):
        net.set_action_prior([1.0] * 3, [0.0] * 3)
    with pytest.raises(ValueError, match="set_action_prior on a policy with residual=False"):
        plain.set_action_prior(gain, bias)


def test_fixed_input_differences_reach_the_backbone_in_torch_and_onnx_and_round_trip_the_config():
    torch.manual_seed(0)
    cfg = PolicyConfig(obs_dim=6, act_dim=2, hidden=(16,), num_heads=1, differences=((4, 1, 2), (0, 3, 1)))
    net = PolicyNet(cfg)
    assert cfg.input_dim == 9 and net.backbone[0].in_features == 9
    net.set_input_scale(np.zeros(6), np.array([1, 1, 1, 1, 2, 4], np.float32))
    obs = np.random.default_rng(4).normal(size=(5, 6)).astype(np.float32)
    task = np.zeros(5, np.int64)
    x = torch.as_tensor(obs)
    # the backbone's input: the normalised observation, then each difference over its first slice's std
    rel = np.concatenate([(obs[:, 4:6] - obs[:, 1:3]) / [2, 4], obs[:, 0:1] - obs[:, 3:4]], 1)
    with torch.no_grad():
        expected = net.backbone(
            torch.as_tensor(np.concatenate([obs / [1, 1, 1, 1, 2, 4], rel], 1), dtype=torch.float32)
        )
        np.testing.assert_allclose(net.features(x).numpy(), expected.numpy(), atol=1e-6)
        moved = obs.copy()
        moved[:, 4] += 0.5  # the first slice moves, the difference with it
        assert not np.allclose(net(torch.as_tensor(moved), torch.as_tensor(task)), net(x, torch.as_tensor(task)))
    ref = net(x, torch.as_tensor(task)).detach().numpy()
    sess = ort.InferenceSession(export_onnx(net), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"obs": obs, "task_id": task})[0], ref, atol=1e-5)
    clone = load_policy(json.loads(json.dumps(net.config.to_dict())), net.state_dict())  # as meta.json keeps it
    assert clone.config.differences == ((4, 1, 2), (0, 3, 1))
    np.testing.assert_allclose(clone(x, torch.as_tensor(task)).detach().numpy(), ref, atol=0)
    for bad in [((5, 0, 2),), ((0, 1, 0),), ((-1, 0, 1),), ((0, 1),)]:
        with pytest.raises(ValueError, match=r"input difference .*: expected \(a, b, n\) with n >= 1"):
            PolicyConfig(obs_dim=6, act_dim=2, differences=bad)  # type: ignore[arg-type]
