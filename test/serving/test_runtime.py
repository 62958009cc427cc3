"""PolicyRuntime: validated inference tagged with its model version, and atomic, fail-safe hot-swap.

Real onnxruntime sessions over real exported PolicyNet models; the concurrency test checks every
output of a full-speed inference thread bit for bit against the version it is tagged with.
"""

from __future__ import annotations

import itertools
import threading
import time
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lifelong_ros.fsutil import sha256_bytes
from lifelong_ros.learning.model import PolicyConfig, PolicyNet, export_onnx
from lifelong_ros.serving.runtime import (
    InvalidObservation,
    ModelLoadError,
    PolicyOutput,
    PolicyRuntime,
    SwapReport,
    session_options,
)

OBS, ACT, HEADS, HIDDEN = 39, 4, 3, (32, 32)


def make_net(seed: int, obs_dim: int = OBS, act_dim: int = ACT, heads: int = HEADS) -> PolicyNet:
    torch.manual_seed(seed)
    net = PolicyNet(PolicyConfig(obs_dim=obs_dim, act_dim=act_dim, hidden=HIDDEN, num_heads=heads))
    net.set_normalizer(torch.randn(64, obs_dim) * 3 + 1)
    return net.eval()


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    """Three versions of the same shape (different weights), exported once for the module."""
    return {f"v{s}": export_onnx(make_net(s), {"version": f"v{s}"}) for s in (1, 2, 3)}


@pytest.fixture(scope="module")
def obs_pool() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((64, OBS)).astype(np.float32) * 2


def reference(onnx: bytes, obs: np.ndarray, task: int) -> np.ndarray:
    """What the model computes, by a separate session with the serving options."""
    sess = ort.InferenceSession(onnx, sess_options=session_options(1), providers=["CPUExecutionProvider"])
    x = obs.reshape(-1, OBS)
    return sess.run(["action"], {"obs": x, "task_id": np.full(x.shape[0], task, np.int64)})[0]


def assert_still_serving(rt: PolicyRuntime, version: str, onnx: bytes, obs: np.ndarray) -> None:
    out = rt.infer(obs, 1)
    assert out.version == version == rt.version
    assert rt.sha256 == sha256_bytes(onnx)
    np.testing.assert_array_equal(out.action, reference(onnx, obs, 1)[0])


# ----------------------------------------------------------------------------------- inference
@pytest.mark.parametrize("heads", [1, HEADS])
def test_onnx_matches_torch_to_1e5(heads):
    net = make_net(7, heads=heads)
    rt = PolicyRuntime(export_onnx(net), "v7")
    rng = np.random.default_rng(1)
    obs = (rng.standard_normal((200, OBS)) * 3).astype(np.float32)
    task = rng.integers(0, heads, 200)
    with torch.no_grad():
        expected = net(torch.from_numpy(obs), torch.from_numpy(task)).numpy()
    got = rt.infer(obs, task).action
    assert got.shape == (200, ACT)
    assert np.max(np.abs(got - expected)) <= 1e-5
    single = np.stack([rt.infer(obs[i], int(task[i])).action for i in range(20)])
    assert np.max(np.abs(single - expected[:20])) <= 1e-5


def test_infer_returns_action_and_the_version_that_computed_it(models, obs_pool):
    rt = PolicyRuntime(models["v1"], "v1")
    out = rt.infer(obs_pool[0], 2)
    assert isinstance(out, PolicyOutput) and out.version == "v1"
    assert out.action.shape == (ACT,) and out.action.dtype == np.float32
    np.testing.assert_array_equal(out.action, reference(models["v1"], obs_pool[0], 2)[0])
    action, version = rt.infer(obs_pool[:5], 2)  # batch, one task id for all rows
    assert action.shape == (5, ACT) and version == "v1"
    np.testing.assert_array_equal(action, reference(models["v1"], obs_pool[:5], 2))
    # Heads differ: the task id really selects a head.
    assert not np.array_equal(rt.infer(obs_pool[0], 0).action, rt.infer(obs_pool[0], 2).action)
    assert rt.num_heads == HEADS and rt.obs_dim == OBS and rt.act_dim == ACT
    assert rt.metadata["version"] == "v1"


def test_float64_lists_and_noncontiguous_inputs_are_converted_to_float32(models, obs_pool):
    rt = PolicyRuntime(models["v1"], "v1")
    x32 = obs_pool[3]
    want = rt.infer(x32, 1).action
    np.testing.assert_array_equal(rt.infer(x32.astype(np.float64), 1).action, want)
    np.testing.assert_array_equal(rt.infer(x32.tolist(), 1).action, want)
    np.testing.assert_array_equal(
        rt.infer(x32.astype(np.float16).astype(np.float32), 1).action, rt.infer(x32.astype(np.float16), 1).action
    )
    strided = np.repeat(x32[:, None], 2, axis=1)[:, 0]  # a non-contiguous view of the same values
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(rt.infer(strided, 1).action, want)
    np.testing.assert_array_equal(
        rt.infer(obs_pool[:4], np.array([1, 1, 1, 1], np.int32)).action, rt.infer(obs_pool[:4], 1).action
    )
    assert rt.infer(x32, np.int64(1)).version == "v1"


BAD_OBS = [
    ("nan", lambda x: np.where(np.arange(OBS) == 5, np.nan, x).astype(np.float32), ["obs[5]", "nan", "finite"]),
    ("inf", lambda x: np.where(np.arange(OBS) == 7, np.inf, x).astype(np.float32), ["obs[7]", "inf", "finite"]),
    ("-inf float64", lambda x: np.where(np.arange(OBS) == 0, -np.inf, x.astype(np.float64)), ["obs[0]", "-inf"]),
    (
        "nan in a batch",
        lambda x: np.stack([x, np.where(np.arange(OBS) == 2, np.nan, x)]).astype(np.float32),
        ["obs[[1, 2]]", "nan"],
    ),
    ("too short", lambda x: x[:-1], ["length 38", "expected 39"]),
    ("too long", lambda x: np.append(x, 0.0).astype(np.float32), ["length 40", "expected 39"]),
    ("wrong batch width", lambda x: np.zeros((3, 12), np.float32), ["(3, 12)", f"(N, {OBS})"]),
    ("3-d", lambda x: x.reshape(1, 1, OBS), ["(1, 1, 39)"]),
    ("empty batch", lambda x: np.zeros((0, OBS), np.float32), ["(0, 39)", "N >= 1"]),
    ("int dtype", lambda x: np.ones(OBS, np.int64), ["int64", "float32"]),
    ("bool dtype", lambda x: np.ones(OBS, bool), ["bool", "float32"]),
    ("complex dtype", lambda x: x.astype(np.complex64), ["complex64", "float32"]),
    ("object dtype", lambda x: x.astype(object), ["object", "float32"]),
    ("string", lambda x: "0.1 0.2", ["str", "numpy float32 array"]),
    (
        "beyond float32",
        lambda x: np.where(np.arange(OBS) == 1, 1e300, x.astype(np.float64)),
        ["float32 range", "1e+300"],
    ),
    ("ragged list", lambda x: [[0.0] * OBS, [0.0]], ["could not be read", "39"]),
]


@pytest.mark.parametrize("name,make,phrases", BAD_OBS, ids=[b[0] for b in BAD_OBS])
def test_bad_observation_is_refused_clearly_and_later_calls_are_unaffected(models, obs_pool, name, make, phrases):
    rt = PolicyRuntime(models["v1"], "v1")
    before = rt.infer(obs_pool[0], 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's "overflow in cast" for 1e300
        with pytest.raises(InvalidObservation) as err:
            rt.infer(make(obs_pool[0].copy()), 1)
    for p in phrases:
        assert p in str(err.value), (p, str(err.value))
    after = rt.infer(obs_pool[0], 1)
    assert after.version == "v1"
    np.testing.assert_array_equal(after.action, before.action)
    assert rt.stats()["errors"] == 1 and rt.stats()["calls"] == 3


BAD_TASKS = [
    (HEADS, ["task_id 3", "[0, 3)"]),
    (-1, ["task_id -1", "[0, 3)"]),
    (True, ["bool", "[0, 3)"]),
    (1.0, ["dtype float64", "integers"]),
    (np.array([0, 1]), ["shape (2,)", "(1,)"]),
    (np.array([0, 5, 1, 1]), ["task_id 5"]),
]


@pytest.mark.parametrize("task,phrases", BAD_TASKS, ids=[repr(t[0]) for t in BAD_TASKS])
def test_task_id_outside_the_models_heads_is_refused(models, obs_pool, task, phrases):
    rt = PolicyRuntime(models["v1"], "v1")
    obs = obs_pool[:4] if isinstance(task, np.ndarray) and task.size == 4 else obs_pool[0]
    with pytest.raises(InvalidObservation) as err:
        rt.infer(obs, task)
    for p in phrases:
        assert p in str(err.value), (p, str(err.value))
    assert_still_serving(rt, "v1", models["v1"], obs_pool[1])


def test_single_head_model_accepts_only_task_zero(obs_pool):
    rt = PolicyRuntime(export_onnx(make_net(4, heads=1)), "single")
    assert rt.infer(obs_pool[0]).version == "single"
    with pytest.raises(InvalidObservation, match=r"task_id 1 is out of range; expected an integer in \[0, 1\)"):
        rt.infer(obs_pool[0], 1)


def test_model_without_task_input_is_served_and_refuses_other_task_ids(obs_pool):
    rt = PolicyRuntime(_linear_model_named("obs"), "plain")
    assert rt.infer(obs_pool[0]).action.shape == (ACT,) and rt.infer(obs_pool[:3], 0).action.shape == (3, ACT)
    with pytest.raises(InvalidObservation, match=r"expected 0 \(this model has no task_id input\)"):
        rt.infer(obs_pool[0], 2)


# ----------------------------------------------------------------------------------- hot swap
def test_swap_switches_version_and_outputs(models, obs_pool, tmp_path):
    rt = PolicyRuntime(models["v1"], "v1", expected_sha256=sha256_bytes(models["v1"]))
    rep = rt.swap(models["v2"], "v2", expected_sha256=sha256_bytes(models["v2"]).upper())
    assert isinstance(rep, SwapReport)
    assert (rep.old_version, rep.new_version, rep.sha256) == ("v1", "v2", sha256_bytes(models["v2"]))
    assert 0 < rep.build_ms <= rep.total_ms
    assert_still_serving(rt, "v2", models["v2"], obs_pool[2])
    path = tmp_path / "v3.onnx"  # from a path, too
    path.write_bytes(models["v3"])
    rt.swap(path, "v3")
    assert_still_serving(rt, "v3", models["v3"], obs_pool[2])
    assert rt.stats()["swaps"] == 2 and rt.stats()["failed_swaps"] == 0


def test_swap_to_a_model_with_more_heads_extends_valid_task_ids(models, obs_pool):
    rt = PolicyRuntime(models["v1"], "v1")
    with pytest.raises(InvalidObservation):
        rt.infer(obs_pool[0], 4)
    more = export_onnx(make_net(9, heads=5))
    rt.swap(more, "v9")
    np.testing.assert_array_equal(rt.infer(obs_pool[0], 4).action, reference(more, obs_pool[0], 4)[0])


def _nan_model() -> bytes:
    net = make_net(5)
    with torch.no_grad():
        net.head_b[1] = float("nan")
    return export_onnx(net)


def _flip_weight_byte(data: bytes, _tmp=None) -> bytes:
    b = bytearray(data)
    for i in range(4):  # the low bit of 4 consecutive bytes hits one float's exponent LSB: x2 or /2, still finite
        b[len(b) // 2 + i] ^= 0x01  # inside the weights: still a valid model, with different weights
    return bytes(b)


BAD_MODELS = [
    ("corrupt bytes", lambda m, p: b"\x08\x07garbage" + bytes(range(256)) * 8, None, ["onnxruntime cannot load"]),
    ("corrupt header", lambda m, p: b"\xff" * 64 + m[64:], None, ["onnxruntime cannot load"]),
    ("truncated file", lambda m, p: _write(p / "trunc.onnx", m[: len(m) // 2]), None, ["onnxruntime cannot load"]),
    ("empty", lambda m, p: b"", None, ["empty (0 bytes)"]),
    ("missing file", lambda m, p: p / "nope.onnx", None, ["cannot read model file", "nope.onnx"]),
    ("text file", lambda m, p: _write(p / "notes.onnx", b"this is not a model\n"), None, ["onnxruntime cannot load"]),
    (
        "input size differs",
        lambda m, p: export_onnx(make_net(1, obs_dim=OBS - 1)),
        None,
        ["not a drop-in replacement", "obs_dim 38", "serving model has 39"],
    ),
    (
        "output size differs",
        lambda m, p: export_onnx(make_net(1, act_dim=ACT + 2)),
        None,
        ["act_dim 6", "serving model has 4"],
    ),
    ("sha256 mismatch", lambda m, p: m, "0" * 64, ["sha256 mismatch", "expected " + "0" * 64]),
    ("bit flip caught by sha256", _flip_weight_byte, "ORIGINAL", ["sha256 mismatch"]),
    ("nan output", lambda m, p: _nan_model(), None, ["non-finite actions", "task id(s) [1]", "refusing to serve"]),
    ("other input name", lambda m, p: _linear_model_named("x"), None, ["expected an input named 'obs'"]),
    (
        "fixed batch size",
        lambda m, p: _linear_model_named("obs", dynamic=False),
        None,
        ["fixed batch size 1", "dynamic batch axis"],
    ),
]


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _linear_model_named(input_name: str, dynamic: bool = True) -> bytes:
    import io
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            torch.nn.Linear(OBS, ACT),
            (torch.zeros(1, OBS),),
            buf,
            input_names=[input_name],
            output_names=["action"],
            dynamo=False,
            dynamic_axes={input_name: {0: "batch"}, "action": {0: "batch"}} if dynamic else None,
        )
    return buf.getvalue()


@pytest.mark.parametrize("name,make,sha,phrases", BAD_MODELS, ids=[b[0] for b in BAD_MODELS])
def test_failed_swap_says_why_and_keeps_serving_the_previous_model(
    models, obs_pool, tmp_path, name, make, sha, phrases
):
    rt = PolicyRuntime(models["v1"], "v1")
    bad = make(models["v2"], tmp_path)
    expected = sha256_bytes(models["v2"]) if sha == "ORIGINAL" else sha
    with pytest.raises(ModelLoadError) as err:
        rt.swap(bad, "v-bad", expected_sha256=expected)
    for p in [*phrases, "still serving 'v1'"]:
        assert p in str(err.value), (p, str(err.value))
    assert_still_serving(rt, "v1", models["v1"], obs_pool[3])
    st = rt.stats()
    assert st["failed_swaps"] == 1 and st["swaps"] == 0 and st["last_swap_error"] == str(err.value)
    rt.swap(models["v2"], "v2")  # and the next good swap still works
    assert_still_serving(rt, "v2", models["v2"], obs_pool[3])


def test_a_flipped_weight_byte_still_loads_so_only_the_sha256_check_catches_it(models, obs_pool):
    rt = PolicyRuntime(models["v1"], "v1")
    flipped = _flip_weight_byte(models["v2"])
    rt.swap(flipped, "v2-flipped")  # a valid model: onnxruntime cannot tell
    assert any(
        not np.array_equal(rt.infer(obs, head).action, reference(models["v2"], obs, head)[0])
        for obs in obs_pool[:16]
        for head in range(3)
    )


def test_constructor_refuses_a_bad_model_with_the_reason(models, tmp_path):
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        PolicyRuntime(models["v1"], "v1", expected_sha256=sha256_bytes(models["v2"]))
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load"):
        PolicyRuntime(_write(tmp_path / "t.onnx", models["v1"][:1000]), "v1")
    with pytest.raises(TypeError, match="ONNX bytes or a path"):
        PolicyRuntime(12345, "v1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="version must be a non-empty string"):
        PolicyRuntime(models["v1"], "")


def test_swap_async_delivers_report_or_error_through_the_future(models, obs_pool):
    with PolicyRuntime(models["v1"], "v1") as rt:
        assert rt.swap_async(models["v2"], "v2").result(timeout=30).new_version == "v2"
        fut = rt.swap_async(b"junk", "v-junk")
        with pytest.raises(ModelLoadError, match="v-junk"):
            fut.result(timeout=30)
        assert_still_serving(rt, "v2", models["v2"], obs_pool[0])


def test_swap_builds_on_a_background_thread_not_the_callers(models, monkeypatch):
    import lifelong_ros.serving.runtime as runtime_mod

    seen = []
    real_build = runtime_mod._build

    def spy(*args, **kwargs):
        seen.append(threading.current_thread().name)
        return real_build(*args, **kwargs)

    rt = PolicyRuntime(models["v1"], "v1")
    monkeypatch.setattr(runtime_mod, "_build", spy)
    rt.swap(models["v2"], "v2")
    assert seen and seen[0].startswith("policy-runtime-build") and seen[0] != threading.current_thread().name
    rt.close()


def test_concurrent_swaps_are_serialised(models, monkeypatch):
    import lifelong_ros.serving.runtime as runtime_mod

    active, most = [0], [0]
    lock = threading.Lock()
    real_build = runtime_mod._build

    def counting_load(*args, **kwargs):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(0.005)  # widen the window in which an overlap would show
            return real_build(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    rt = PolicyRuntime(models["v1"], "v1", keep_warm=1)  # 3 versions round-robin: every swap builds
    monkeypatch.setattr(runtime_mod, "_build", counting_load)
    order = ["v2", "v3", "v1", "v2", "v3", "v1"]
    reports: list[SwapReport] = []
    threads = [threading.Thread(target=lambda v=v: reports.append(rt.swap(models[v], v))) for v in order]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1
    assert rt.stats()["swaps"] == len(order) and sorted(r.new_version for r in reports) == sorted(order)
    # One chain of versions: every swap replaced what the one before installed, so the old
    # versions are the initial one plus every new one except the one serving now.
    news = [r.new_version for r in reports]
    news.remove(rt.version)
    assert sorted(r.old_version for r in reports) == sorted(["v1", *news])


@pytest.mark.parametrize("keep_warm", [1, 2], ids=["every-swap-builds", "swaps-reuse-loaded-models"])
def test_full_speed_inference_during_200_swaps_is_exact_and_tagged(models, obs_pool, keep_warm):
    """Acceptance: zero failed calls; every output equals bit for bit what its tagged version
    computes for that input. Three versions round-robin: with keep_warm=1 every swap builds a
    new session, with keep_warm=2 every swap after the first two reuses a loaded one."""
    versions = list(models)
    refs = {}
    for v in versions:
        sess = ort.InferenceSession(models[v], sess_options=session_options(1), providers=["CPUExecutionProvider"])
        refs[v] = np.stack(
            [
                np.stack(
                    [
                        sess.run(["action"], {"obs": obs_pool[i : i + 1], "task_id": np.array([k], np.int64)})[0][0]
                        for i in range(len(obs_pool))
                    ]
                )
                for k in range(HEADS)
            ]
        )  # [head, obs, act]
    rt = PolicyRuntime(models["v1"], "v1", keep_warm=keep_warm)
    stop = threading.Event()
    errors: list[BaseException] = []
    log_i, log_k, log_v, log_a = [], [], [], []

    def serve():
        n = len(obs_pool)
        j = 0
        try:
            while not stop.is_set():
                i, k = j % n, (j // n) % HEADS
                out = rt.infer(obs_pool[i], k)
                log_i.append(i)
                log_k.append(k)
                log_v.append(out.version)
                log_a.append(out.action)
                j += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    worker = threading.Thread(target=serve)
    worker.start()
    swaps = 0
    try:
        while swaps < 210:
            v = versions[(swaps + 1) % len(versions)]
            assert rt.swap(models[v], v).new_version == v
            swaps += 1
            seen_calls = len(log_v)  # let the serving thread run a few calls on each version
            while len(log_v) < seen_calls + 5 and worker.is_alive():
                time.sleep(0.0001)
    finally:
        stop.set()
        worker.join(timeout=60)
    assert not errors, errors
    assert rt.stats()["errors"] == 0
    assert swaps >= 200
    assert rt.stats()["reused_swaps"] == (0 if keep_warm == 1 else swaps - 2)
    calls = len(log_v)
    assert calls > 1000
    actions = np.stack(log_a)
    idx_i, idx_k = np.array(log_i), np.array(log_k)
    seen = set()
    for v in versions:
        m = np.array([x == v for x in log_v])
        if m.any():
            seen.add(v)
        expected = refs[v][idx_k[m], idx_i[m]]
        mismatches = np.flatnonzero(np.any(actions[m] != expected, axis=1))
        assert mismatches.size == 0, f"{mismatches.size} outputs tagged {v} differ from what {v} computes"
    assert seen == set(versions)
    # The tag changed many times while the thread was calling: it really ran across the swaps.
    changes = sum(a != b for a, b in itertools.pairwise(log_v))
    assert changes >= 50, changes


def test_swap_back_to_a_recent_version_reuses_its_loaded_session(models, obs_pool, monkeypatch):
    import lifelong_ros.serving.runtime as runtime_mod

    rt = PolicyRuntime(models["v1"], "v1", keep_warm=2)
    assert not rt.swap(models["v2"], "v2").reused
    assert not rt.swap(models["v3"], "v3").reused
    assert rt.stats()["warm_versions"] == ["v1", "v2"]
    builds = []
    monkeypatch.setattr(runtime_mod, "_build", lambda *a, **k: builds.append(a) or pytest.fail("built"))
    rep = rt.swap(models["v1"], "v1", expected_sha256=sha256_bytes(models["v1"]))  # rollback: nothing built
    assert rep.reused and (rep.old_version, rep.new_version) == ("v3", "v1") and not builds
    assert_still_serving(rt, "v1", models["v1"], obs_pool[3])
    assert rt.stats()["warm_versions"] == ["v2", "v3"]
    # The same bytes registered again under another id: served under the new id, nothing built.
    rep = rt.swap(models["v2"], "v2-again")
    assert rep.reused and rt.infer(obs_pool[0]).version == "v2-again"
    np.testing.assert_array_equal(rt.infer(obs_pool[0], 1).action, reference(models["v2"], obs_pool[0], 1)[0])
    # A reused model still has to match its sha256.
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        rt.swap(models["v3"], "v3", expected_sha256=sha256_bytes(models["v1"]))
    assert rt.stats()["reused_swaps"] == 2 and not builds


def test_keep_warm_bounds_how_many_retired_models_stay_loaded(models):
    rt = PolicyRuntime(models["v1"], "v1", keep_warm=1)
    for v in ("v2", "v3", "v1", "v2"):
        assert not rt.swap(models[v], v).reused  # round-robin over 3 with room for 1: always built
        assert len(rt.stats()["warm_versions"]) == 1
    with pytest.raises(ValueError, match="keep_warm"):
        PolicyRuntime(models["v1"], "v1", keep_warm=0)


def test_stats_count_calls_errors_and_swaps(models, obs_pool):
    rt = PolicyRuntime(models["v1"], "v1")
    rt.infer(obs_pool[0])
    with pytest.raises(InvalidObservation):
        rt.infer(np.full(OBS, np.nan, np.float32))
    rt.swap(models["v2"], "v2")
    st = rt.stats()
    assert (st["calls"], st["errors"], st["swaps"], st["version"]) == (2, 1, 1, "v2")
    assert st["last_swap_ms"] > 0 and "v2" in repr(rt)
