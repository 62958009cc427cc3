"""ExperienceStore behaviour: records round-trip, bad input is refused, the held-out split holds,
samplers sample what they promise, retention keeps the budget without touching protected data."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifelong_ros.experience.retention import RetentionPolicy
from lifelong_ros.experience.store import (
    BudgetExceeded,
    EmptySelection,
    ExperienceStore,
    InvalidRecord,
    StoreError,
    StoreLockedError,
    episode_is_heldout,
)

D, A = 6, 2


def _rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, D)).astype(np.float32), rng.uniform(-1, 1, (n, A)).astype(np.float32)


@pytest.fixture
def store(tmp_path):
    s = ExperienceStore(tmp_path / "s.sqlite3", D, A, heldout_fraction=0.25)
    yield s
    s.close()


def test_records_round_trip_with_all_fields(tmp_path, store):
    obs, act = _rows(5)
    res = store.append(
        "reach",
        "ep0",
        np.arange(5),
        obs,
        act,
        reward=np.arange(5) * 0.5,
        done=[0, 0, 0, 0, 1],
        stamp_ns=1_700_000_000_000_000_000 + np.arange(5),
        source="correction",
        label=["a", None, "c", None, None],
        meta={"operator": "kim"},
        split="train",
    )
    assert res.ids.tolist() == [1, 2, 3, 4, 5]
    b = store.task_arrays("reach")
    np.testing.assert_array_equal(b.obs, obs)
    np.testing.assert_array_equal(b.action, act)
    assert b.obs.dtype == np.float32 and b.obs.flags.writeable
    assert b.step.tolist() == [0, 1, 2, 3, 4]
    assert b.reward.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert b.done.tolist() == [False, False, False, False, True]
    assert b.stamp_ns.tolist() == (1_700_000_000_000_000_000 + np.arange(5)).tolist()
    assert set(b.source) == {"correction"} and set(b.task) == {"reach"} and set(b.episode) == {"ep0"}
    assert b.label.tolist() == ["a", None, "c", None, None]
    assert store.metadata([2]) == [{"operator": "kim"}]
    store.close()
    with ExperienceStore(tmp_path / "s.sqlite3") as again:  # dims come from the store
        assert again.obs_dim == D and len(again) == 5
        got = again.get([5, 1, 3, 1])
        np.testing.assert_array_equal(got.obs, obs[[4, 0, 2, 0]])
        assert got.label.tolist() == [None, "a", "c", "a"] and got.step.tolist() == [4, 0, 2, 0]


def test_wrong_dimensions_are_refused_with_the_shapes(store, tmp_path):
    obs, act = _rows(3)
    with pytest.raises(ValueError, match=r"obs has shape \(3, 5\); expected \(N, 6\)"):
        store.append("t", 0, np.arange(3), obs[:, :5], act)
    with pytest.raises(ValueError, match=r"action has shape \(3, 3\)"):
        store.append("t", 0, np.arange(3), obs, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="obs has 3 rows but action has 2"):
        store.append("t", 0, np.arange(3), obs, act[:2])
    with pytest.raises(ValueError, match=r"step has shape \(2,\)"):
        store.append("t", 0, [0, 1], obs, act)
    assert len(store) == 0
    store.close()
    with pytest.raises(ValueError, match="created with obs_dim=6; opened with obs_dim=7"):
        ExperienceStore(tmp_path / "s.sqlite3", 7, A)


def test_nan_observation_is_rejected_by_default_and_nothing_is_stored(store):
    obs, act = _rows(4)
    obs[2, 3] = np.nan
    with pytest.raises(InvalidRecord, match=r"record 2 of 4 .*step=2\): observation\[3\] = nan; expected finite"):
        store.append("t", 0, np.arange(4), obs, act)
    act2 = act.copy()
    act2[0, 1] = np.inf
    with pytest.raises(InvalidRecord, match=r"action\[1\] = inf"):
        store.append("t", 0, np.arange(4), _rows(4)[0], act2)
    with pytest.raises(InvalidRecord, match="reward = nan"):
        store.append("t", 0, 0, obs[0], act[0], reward=float("nan"))
    assert len(store) == 0


def test_nonfinite_flag_mode_stores_flagged_records_that_samplers_never_return(tmp_path):
    with ExperienceStore(tmp_path / "f.sqlite3", D, A, nonfinite="flag", heldout_fraction=0.0) as s:
        obs, act = _rows(100)
        obs[::10, 0] = np.inf
        res = s.append("t", 0, np.arange(100), obs, act)
        assert res.flagged == 10
        assert s.stats()["flagged_nonfinite"] == 10
        for sampler in ("uniform", "task_balanced", "recent"):
            b = s.sample(2000, sampler=sampler, rng=0)
            assert np.isfinite(b.obs).all()
        assert len(s.task_arrays("t")) == 90
        flagged = s.task_arrays("t", include_flagged=True)
        assert len(flagged) == 100 and np.isinf(flagged.obs[::10, 0]).all()


def test_unknown_source_and_empty_task_are_refused(store):
    obs, act = _rows(1)
    with pytest.raises(InvalidRecord, match=r"source='teleop': expected one of \('policy', 'demonstration'"):
        store.append("t", 0, 0, obs, act, source="teleop")
    with pytest.raises(InvalidRecord, match="task name is empty"):
        store.append("", 0, 0, obs, act)


def test_second_writer_is_refused_but_readers_are_not(store):
    with pytest.raises(StoreLockedError, match="already open for writing"):
        ExperienceStore(store.path, D, A)
    with ExperienceStore(store.path, readonly=True) as r, pytest.raises(StoreError, match="opened readonly"):
        r.append("t", 0, 0, *_rows(1))


def test_heldout_split_is_deterministic_persisted_and_fixed_at_first_sight(tmp_path):
    eps = [f"e{i}" for i in range(200)]
    splits = []
    for name in ("a", "b"):
        with ExperienceStore(tmp_path / f"{name}.sqlite3", D, A, heldout_fraction=0.3, split_seed=7) as s:
            for e in eps:
                s.append("push", e, 0, *_rows(1))
            splits.append({i.episode: i.split for i in s.episodes()})
    assert splits[0] == splits[1]
    frac = sum(v == "heldout" for v in splits[0].values()) / len(eps)
    assert 0.2 < frac < 0.4
    assert all((splits[0][e] == "heldout") == episode_is_heldout("push", e, 7, 0.3) for e in eps)
    with ExperienceStore(tmp_path / "c.sqlite3", D, A, heldout_fraction=0.3, split_seed=8) as s:
        for e in eps:
            s.append("push", e, 0, *_rows(1))
        assert {i.episode: i.split for i in s.episodes()} != splits[0]
    # persisted: reopening with another fraction is an error, not a silent reshuffle
    with pytest.raises(ValueError, match="heldout_fraction=0.3; opened with heldout_fraction=0.5"):
        ExperienceStore(tmp_path / "a.sqlite3", D, A, heldout_fraction=0.5)
    with ExperienceStore(tmp_path / "a.sqlite3") as s:
        assert {i.episode: i.split for i in s.episodes()} == splits[0]
        heldout_ep = next(e for e in eps if splits[0][e] == "heldout")
        with pytest.raises(InvalidRecord, match="already stored as heldout"):
            s.append("push", heldout_ep, 1, *_rows(1), split="train")
        s.append("push", "forced", 0, *_rows(1), split="heldout")
        assert s.episodes("push", split="heldout")[-1].episode == "forced"
        assert len(s.episode_arrays("push", "forced")) == 1 and len(s.episode_arrays("push", "e3")) == 1
        with pytest.raises(KeyError, match="no episode 'nope' of task 'push'"):
            s.episode_arrays("push", "nope")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    episodes=st.lists(
        st.tuples(
            st.sampled_from(["reach", "push", "pick"]),
            st.integers(0, 30),
            st.sampled_from(["policy", "demonstration", "correction", "bag"]),
            st.sampled_from([None, None, "heldout", "train"]),
            st.integers(1, 20),
        ),
        min_size=1,
        max_size=25,
    ),
    fraction=st.sampled_from([0.0, 0.2, 0.5, 0.9]),
    seed=st.integers(0, 2**31),
)
def test_property_no_training_sampler_ever_returns_a_heldout_episode(tmp_path_factory, episodes, fraction, seed):
    path = tmp_path_factory.mktemp("prop") / "s.sqlite3"
    with ExperienceStore(path, D, A, heldout_fraction=fraction, split_seed=seed) as s:
        for task, ep, source, split, n in episodes:
            try:
                s.append(task, ep, np.arange(n), *_rows(n, ep), source=source, split=split)
            except InvalidRecord:
                pass  # forcing another split on an existing episode is refused; fine
        heldout = {(i.task, i.episode) for i in s.episodes(split="heldout")}
        train = {(i.task, i.episode) for i in s.episodes(split="train")}
        assert not heldout & train
        rng = np.random.default_rng(seed)
        filters = [
            dict(),
            dict(tasks=["reach"]),
            dict(sources=["demonstration", "bag"]),
            dict(tasks="push", sources="policy"),
        ]
        for sampler in ("uniform", "task_balanced", "recent"):
            for f in filters:
                try:
                    b = s.sample(64, sampler=sampler, rng=rng, **f)
                except EmptySelection:
                    continue
                got = set(zip(b.task.tolist(), b.episode.tolist()))
                assert not got & heldout, (sampler, f)
        for task in s.tasks():
            h = s.task_arrays(task, split="heldout")
            assert set(zip(h.task.tolist(), h.episode.tolist())) <= heldout
            t = s.task_arrays(task, split="train")
            assert not set(zip(t.task.tolist(), t.episode.tolist())) & heldout


def test_task_balanced_sampler_balances_and_filters_restrict(tmp_path):
    with ExperienceStore(tmp_path / "s.sqlite3", D, A, heldout_fraction=0.0) as s:
        s.append("big", 0, np.arange(5000), *_rows(5000), source="policy")
        s.append("small", 0, np.arange(100), *_rows(100), source="demonstration")
        u = s.sample(4000, rng=1)
        assert (u.task == "small").mean() < 0.05
        b = s.sample(4000, sampler="task_balanced", rng=1)
        assert 0.45 < (b.task == "small").mean() < 0.55
        assert set(s.sample(500, tasks=["small"], rng=2).task) == {"small"}
        assert set(s.sample(500, sources="demonstration", rng=2).source) == {"demonstration"}
        with pytest.raises(EmptySelection, match=r"no records match tasks=\('small',\), sources=\('policy',\)"):
            s.sample(1, tasks="small", sources="policy")
        with pytest.raises(ValueError, match="unknown source"):
            s.sample(1, sources="robot")
        with pytest.raises(ValueError, match="sampler='fifo'"):
            s.sample(1, sampler="fifo")


def test_recent_sampler_prefers_new_records(tmp_path):
    with ExperienceStore(tmp_path / "s.sqlite3", D, A, heldout_fraction=0.0) as s:
        s.append("t", 0, np.arange(10000), *_rows(10000))
        r = s.sample(5000, sampler="recent", half_life=1000, rng=3)
        age = 10000 - r.id
        # P(age) halves every 1000 records: median age ~ 1000 * log2(2) = 1000
        assert 800 < np.median(age) < 1200
        u = s.sample(5000, rng=3)
        assert r.id.mean() > u.id.mean() + 2000


def test_reader_process_sees_appends_and_evictions(tmp_path):
    path = tmp_path / "s.sqlite3"
    with ExperienceStore(path, D, A, heldout_fraction=0.0, retention=RetentionPolicy(per_task_cap=300, slack=0.0)) as w:
        w.append("t", 0, np.arange(200), *_rows(200))
        with ExperienceStore(path, readonly=True) as r:
            assert len(r) == 200
            w.append("t", 1, np.arange(200), *_rows(200, 1))
            assert len(r) == 300  # 400 appended, capped at 300
            ids = set(r.sample(3000, rng=0).id.tolist())
            assert ids <= set(w.task_arrays("t").id.tolist())
            assert r.stats()["evicted_total"] == 100


def test_per_task_cap_reservoir_keeps_a_uniform_sample_of_everything_seen(tmp_path):
    pol = RetentionPolicy(per_task_cap=1000, slack=0.0)
    with ExperienceStore(tmp_path / "s.sqlite3", D, A, heldout_fraction=0.0, retention=pol) as s:
        for batch in range(10):
            s.append("t", batch, np.arange(500), *_rows(500, batch))
        kept = s.task_arrays("t")
        assert len(kept) == 1000
        per_batch = np.bincount(kept.episode.astype(int), minlength=10)
        # uniform over all 5000 seen: 100 per batch expected; a FIFO would keep only the last two
        assert per_batch.min() > 50 and per_batch.max() < 150
        assert s.stats()["evicted_total"] == 4000


def test_recent_window_and_recent_cap_keep_the_newest(tmp_path):
    pol = RetentionPolicy(per_task_cap=300, per_task_mode="recent", slack=0.0)
    with ExperienceStore(tmp_path / "r.sqlite3", D, A, heldout_fraction=0.0, retention=pol) as s:
        for batch in range(5):
            s.append("t", batch, np.arange(100), *_rows(100, batch))
        assert sorted(set(s.task_arrays("t").episode.tolist())) == ["2", "3", "4"]
    pol = RetentionPolicy(max_age_s=10.0, slack=0.0)
    with ExperienceStore(tmp_path / "a.sqlite3", D, A, heldout_fraction=0.0, retention=pol) as s:
        for sec in range(30):
            s.append("t", 0, sec, *_rows(1, sec), stamp=1000.0 + sec)
        stamps = s.task_arrays("t").stamp
        assert stamps.min() >= 1029.0 - 10.0 and stamps.max() == 1029.0


def test_global_budget_is_met_task_balanced_and_protected_records_survive(tmp_path):
    pol = RetentionPolicy(max_records=1000, slack=0.0)
    with ExperienceStore(tmp_path / "s.sqlite3", D, A, heldout_fraction=0.0, retention=pol) as s:
        s.append("demo-task", "d", np.arange(200), *_rows(200), source="demonstration")
        s.append("held", "h", np.arange(100), *_rows(100), split="heldout")
        for i in range(10):
            s.append("a", i, np.arange(300), *_rows(300, i))
            s.append("b", i, np.arange(30), *_rows(30, i))
        st_ = s.stats()
        assert st_["records"] == 1000
        assert st_["tasks"]["demo-task"]["records"] == 200 and st_["tasks"]["held"]["records"] == 100
        # 700 evictable slots water-filled over a (3000 seen) and b (300 seen): b keeps all, a the rest
        assert st_["tasks"]["b"]["records"] == 300 and st_["tasks"]["a"]["records"] == 400


def test_budget_that_only_protected_records_could_meet_raises_or_flags(tmp_path):
    pol = RetentionPolicy(max_records=100)
    with ExperienceStore(tmp_path / "s.sqlite3", D, A, heldout_fraction=0.0, retention=pol) as s:
        s.append("t", 0, np.arange(80), *_rows(80), source="demonstration")
        with pytest.raises(
            BudgetExceeded, match=r"budget .* is 100 records but 130 protected records would remain \(130 demonstration"
        ):
            s.append("t", 1, np.arange(50), *_rows(50), source="demonstration")
        assert len(s) == 80  # the batch was rejected as a whole
    pol = RetentionPolicy(max_records=100, on_protected_overflow="flag")
    with ExperienceStore(tmp_path / "f.sqlite3", D, A, heldout_fraction=0.0, retention=pol) as s:
        s.append("t", "p", np.arange(50), *_rows(50), source="policy")
        s.append("t", 0, np.arange(120), *_rows(120), source="demonstration")
        st_ = s.stats()
        assert st_["over_budget"] is True and st_["records"] == 120 and st_["by_source"]["policy"] == 0
        assert s.delete_episodes("t", [0]) == 120  # explicit deletion is the way out
        s.append("t", "p2", 0, *_rows(1))
        assert s.stats()["over_budget"] is False


def test_byte_budget_bounds_the_database_size(tmp_path):
    pol = RetentionPolicy(max_bytes=2_000_000, slack=0.05)
    path = tmp_path / "s.sqlite3"
    with ExperienceStore(path, D, A, heldout_fraction=0.0, retention=pol) as s:
        for i in range(40):
            s.append("t", i, np.arange(1000), *_rows(1000, i))
        n = s.stats()["records"]
        assert 10_000 < n < 40_000
        c = s._conn
        used = (
            c.execute("PRAGMA page_count").fetchone()[0] - c.execute("PRAGMA freelist_count").fetchone()[0]
        ) * c.execute("PRAGMA page_size").fetchone()[0]
        assert used <= 2_000_000 * 1.05
    assert path.stat().st_size < 2_000_000 * 1.5


def test_store_import_does_not_import_torch():
    code = "import sys, lifelong_ros.experience.store, lifelong_ros.ros_io.spec, lifelong_ros.ros_io.bag; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_reader_far_behind_the_eviction_log_reloads_correctly(tmp_path, monkeypatch):
    import lifelong_ros.experience.store as store_mod

    monkeypatch.setattr(store_mod, "_EVICTION_LOG_KEEP", 3)
    path = tmp_path / "s.sqlite3"
    with ExperienceStore(path, D, A, heldout_fraction=0.0, retention=RetentionPolicy(per_task_cap=50, slack=0.0)) as w:
        w.append("t", 0, np.arange(50), *_rows(50))
        with ExperienceStore(path, readonly=True) as r:
            assert len(r) == 50
            for i in range(10):  # 10 evicting commits; the log keeps only the last 3
                w.append("t", i + 1, np.arange(20), *_rows(20, i))
            assert w._conn.execute("SELECT count(*) FROM evictions").fetchone()[0] == 3
            reloads = []
            orig = r._reset_index
            monkeypatch.setattr(r, "_reset_index", lambda: (reloads.append(1), orig())[1])
            assert len(r) == 50
            assert reloads  # it noticed the log no longer covers its position and reloaded
            assert sorted(r.task_arrays("t").id.tolist()) == sorted(w.task_arrays("t").id.tolist())
            w.append("t", 99, np.arange(5), *_rows(5))  # and incremental catch-up works again afterwards
            assert set(r.sample(2000, rng=0).id) <= set(w.task_arrays("t").id)
            assert set(r.task_arrays("t").id) == set(w.task_arrays("t").id)
