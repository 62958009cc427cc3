"""The output guard: a non-finite or out-of-bounds action never leaves PolicyRuntime.infer.

A real exported PolicyNet whose normaliser has a tiny spread: a finite observation with 3e38 in
one element overflows it to Inf and the network computes NaN actions (the measured problem)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lifelong_ros.learning.model import PolicyConfig, PolicyNet, export_onnx
from lifelong_ros.serving.runtime import GuardedOutput, OutputGuard, PolicyOutput, PolicyRuntime

OBS, ACT, HEADS = 39, 4, 3


@pytest.fixture(scope="module")
def model() -> bytes:
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = PolicyNet(PolicyConfig(obs_dim=OBS, act_dim=ACT, hidden=(32, 32), num_heads=HEADS))
        net.set_normalizer(torch.randn(64, OBS) * 0.01)  # std ~0.01: 3e38 / 0.01 overflows float32
        return export_onnx(net.eval(), {"version": "v0001"})
    finally:
        torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def raw(model) -> PolicyRuntime:
    rt = PolicyRuntime(model, "v0001", output_guard=None)
    yield rt
    rt.close()


def huge_obs() -> np.ndarray:
    o = np.zeros(OBS, np.float32)
    o[3] = 3e38  # finite: accepted as an observation
    return o


def good_obs(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(OBS) * 0.01).astype(np.float32)


def test_precondition_the_model_really_computes_nan_for_a_finite_observation(raw):
    assert np.isfinite(huge_obs()).all()
    assert not np.isfinite(raw.infer(huge_obs(), 0).action).any()


@pytest.mark.parametrize("task", [0, 1, np.int64(2)])
def test_non_finite_output_becomes_the_zero_action_before_any_good_one(model, task):
    rt = PolicyRuntime(model, "v0001")  # the default guard: finiteness, hold
    out = rt.infer(huge_obs(), task)
    assert isinstance(out, GuardedOutput) and out.guarded
    assert np.array_equal(out.action, np.zeros(ACT, np.float32)) and out.action.dtype == np.float32
    assert not np.isfinite(out.model_action).all()
    assert "non-finite" in out.reason and "'v0001'" in out.reason and "zero action" in out.reason
    assert out.version == "v0001"
    action, version = out  # still unpacks as (action, version)
    assert version == "v0001" and np.isfinite(action).all()
    s = rt.stats()
    assert (s["guarded"], s["guarded_non_finite"], s["guarded_out_of_bounds"]) == (1, 1, 0)
    assert s["last_guard_reason"] == out.reason


def test_hold_returns_the_last_good_action_of_the_same_task(model, raw):
    rt = PolicyRuntime(model, "v0001", output_guard=OutputGuard(safe_action="hold"))
    good0, good1 = rt.infer(good_obs(0), 0), rt.infer(good_obs(1), 1)
    assert not good0.guarded and not good1.guarded
    want0, want1 = good0.action.copy(), good1.action.copy()
    good0.action[:] = np.nan  # a caller scribbling on the returned array does not change what is held
    for _ in range(3):
        out = rt.infer(huge_obs(), 0)
        assert out.guarded and np.array_equal(out.action, want0) and "held action" in out.reason
    assert np.array_equal(rt.infer(huge_obs(), 1).action, want1)
    assert np.array_equal(rt.infer(huge_obs(), 2).action, np.zeros(ACT, np.float32))  # nothing held yet
    assert rt.stats()["guarded"] == 5


def test_zero_policy_ignores_the_last_good_action(model):
    rt = PolicyRuntime(model, "v0001", output_guard=OutputGuard(safe_action="zero"))
    rt.infer(good_obs(), 0)
    out = rt.infer(huge_obs(), 0)
    assert out.guarded and np.array_equal(out.action, np.zeros(ACT, np.float32))


def test_in_bounds_outputs_pass_through_bit_exactly(model, raw):
    rts = [
        PolicyRuntime(model, "v0001"),
        PolicyRuntime(model, "v0001", output_guard=OutputGuard(low=-1.0, high=1.0, slack=0.25)),
        PolicyRuntime(model, "v0001", output_guard=OutputGuard(low=[-1, -2, -3, -4], high=[1, 2, 3, 4])),
    ]
    pool = (np.random.default_rng(1).standard_normal((50, OBS)) * 0.01).astype(np.float32)
    for rt in rts:
        for i, o in enumerate(pool):
            want = raw.infer(o, i % HEADS)
            got = rt.infer(o, i % HEADS)
            assert type(got) is PolicyOutput and not got.guarded and got.reason == ""
            assert got.action.tobytes() == want.action.tobytes() and got.model_action is got.action
        batch = rt.infer(pool, np.arange(50) % HEADS)
        assert not batch.guarded and batch.action.tobytes() == raw.infer(pool, np.arange(50) % HEADS).action.tobytes()
        assert rt.stats()["guarded"] == 0


def test_out_of_bounds_outputs_become_the_safe_action(model, raw):
    pool = (np.random.default_rng(2).standard_normal((40, OBS)) * 0.01).astype(np.float32)
    raws = raw.infer(pool, 0).action
    bound = float(np.median(np.abs(raws)))  # about half of the actions have an element beyond it
    rt = PolicyRuntime(model, "v0001", output_guard=OutputGuard(low=-bound, high=bound, safe_action="zero"))
    guarded = 0
    for o, r in zip(pool, raws, strict=True):
        out = rt.infer(o, 0)
        beyond = bool((np.abs(r) > bound).any())
        assert out.guarded == beyond
        if beyond:
            guarded += 1
            assert np.array_equal(out.action, np.zeros(ACT, np.float32)) and "outside" in out.reason
            assert np.array_equal(out.model_action, r)
        else:
            assert np.array_equal(out.action, r)
        assert (np.abs(out.action) <= bound).all()
    assert 0 < guarded < len(pool)
    s = rt.stats()
    assert (s["guarded"], s["guarded_out_of_bounds"], s["guarded_non_finite"]) == (guarded, guarded, 0)


def test_slack_and_per_element_bounds(model, raw):
    o = good_obs(3)
    r = raw.infer(o, 0).action.astype(np.float64)
    i = int(np.argmax(np.abs(r)))
    lo, hi = [-10.0] * ACT, [10.0] * ACT
    hi[i] = lo[i] = 0.0
    if r[i] > 0:
        lo[i] = -1.0
    else:
        hi[i] = 1.0
    # r[i] is |r[i]| beyond 0: refused without slack, accepted with slack larger than |r[i]|
    assert PolicyRuntime(model, "v0001", output_guard=OutputGuard(low=lo, high=hi)).infer(o, 0).guarded
    lenient = OutputGuard(low=lo, high=hi, slack=abs(r[i]) * 2)
    assert not PolicyRuntime(model, "v0001", output_guard=lenient).infer(o, 0).guarded


def test_the_zero_action_is_clipped_into_bounds_that_exclude_zero(model):
    rt = PolicyRuntime(model, "v0001", output_guard=OutputGuard(low=0.5, high=[1, 1, 1, 1], safe_action="zero"))
    out = rt.infer(huge_obs(), 0)
    assert out.guarded and np.array_equal(out.action, np.full(ACT, 0.5, np.float32))


def test_batches_replace_only_the_refused_rows(model, raw):
    rt = PolicyRuntime(model, "v0001")
    held = rt.infer(good_obs(5), 1).action.copy()
    batch = np.stack([good_obs(6), huge_obs(), good_obs(7), huge_obs()])
    tasks = np.array([0, 1, 2, 2])
    want = raw.infer(batch, tasks).action
    out = rt.infer(batch, tasks)
    assert out.guarded and "2 of 4" in out.reason and np.isfinite(out.action).all()
    assert np.array_equal(out.action[[0, 2]], want[[0, 2]])
    assert np.array_equal(out.action[1], held)  # task 1 holds its last good action
    assert np.array_equal(out.action[3], np.zeros(ACT, np.float32))  # task 2 has none
    assert rt.stats()["guarded"] == 2


def test_the_guard_survives_a_swap(model):
    rt = PolicyRuntime(model, "v0001")
    rt.swap(model, "v0002")
    out = rt.infer(huge_obs(), 0)
    assert out.guarded and out.version == "v0002" and np.isfinite(out.action).all()
    rt.close()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"safe_action": "stop"}, "safe_action"),
        ({"low": float("nan")}, "no NaN"),
        ({"high": [1.0, float("nan")]}, "no NaN"),
        ({"low": 1.0, "high": -1.0}, "low > high"),
        ({"low": [], "high": 1.0}, "non-empty"),
        ({"low": "x"}, "number"),
        ({"slack": -0.1}, "slack"),
        ({"slack": float("inf")}, "slack"),
        ({"low": [-1, -1], "high": [1, 1, 1]}, "same length"),
    ],
)
def test_bad_guard_configs_are_refused_naming_the_setting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OutputGuard(**kwargs)


def test_bounds_of_the_wrong_length_are_refused_when_the_model_is_known(model):
    with pytest.raises(ValueError, match="act_dim=4"):
        PolicyRuntime(model, "v0001", output_guard=OutputGuard(low=[-1, -1, -1]))
    with pytest.raises(TypeError, match="output_guard"):
        PolicyRuntime(model, "v0001", output_guard={"low": -1})  # type: ignore[arg-type]
