"""Experience-store benchmark: ingest, replay sampling at 1e5/1e6 records, rosbag2 import vs rosbags.

Prints one JSON object. Baselines run in the same process on the same data: the plain rosbags
read+deserialize loop for bag import, rosbags' deserializer for CDR decoding, and a raw
append-only numpy segment file for ingest (the engine alternative). Run:
    python bench/store.py [--quick] [--dir /tmp/somewhere]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lifelong_ros.experience.store import ExperienceStore
from lifelong_ros.ros_io import bag as B
from lifelong_ros.ros_io.codecs import FLOAT32_ARRAY, FLOAT64_ARRAY, JOINT_FIELDS, JOINT_STATE
from lifelong_ros.ros_io.spec import JointStateStream, spec_from_dict

D, A = 39, 4


def _pct(xs, q):
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def bench_ingest(root: Path, n_batched: int, n_single: int, n_power: int) -> dict:
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((n_batched, D)).astype(np.float32)
    act = rng.uniform(-1, 1, (n_batched, A)).astype(np.float32)
    out = {}
    with ExperienceStore(root / "ingest.sqlite3", D, A) as s:
        t = time.perf_counter()
        for i in range(0, n_batched, 1000):
            s.append(
                "reach-v3",
                i // 500,
                np.arange(i, i + 1000) % 500,
                obs[i : i + 1000],
                act[i : i + 1000],
                stamp_ns=np.arange(i, i + 1000),
            )
        out["ingest_batched_per_s"] = n_batched / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(n_single):
            s.append("push-v3", i // 500, i % 500, obs[i], act[i])
        out["ingest_single_per_s"] = n_single / (time.perf_counter() - t)
    with ExperienceStore(root / "power.sqlite3", D, A, durability="power") as s:
        t = time.perf_counter()
        for i in range(n_power):
            s.append("push-v3", 0, i, obs[i], act[i])
        out["ingest_single_power_per_s"] = n_power / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(0, n_batched // 4, 1000):
            s.append("reach-v3", i // 500, np.arange(i, i + 1000) % 500, obs[i : i + 1000], act[i : i + 1000])
        out["ingest_batched_power_per_s"] = (n_batched // 4) / (time.perf_counter() - t)
    # engine alternative: append-only segment file of fixed-size records (no index, no retention)
    rec = np.zeros(
        n_batched, dtype=[("ep", "<i8"), ("step", "<i8"), ("stamp", "<i8"), ("obs", "<f4", (D,)), ("act", "<f4", (A,))]
    )
    rec["obs"], rec["act"] = obs, act
    fd = os.open(root / "segment.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    t = time.perf_counter()
    for i in range(0, n_batched, 1000):
        os.write(fd, rec[i : i + 1000].tobytes())
    out["segment_file_batched_per_s"] = n_batched / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(n_single):
        os.write(fd, rec[i : i + 1].tobytes())
    out["segment_file_single_per_s"] = n_single / (time.perf_counter() - t)
    os.close(fd)
    return out


def build_store(path: Path, n: int, tasks: int = 10) -> None:
    rng = np.random.default_rng(1)
    obs = rng.standard_normal((10_000, D)).astype(np.float32)
    act = rng.uniform(-1, 1, (10_000, A)).astype(np.float32)
    from tqdm import tqdm

    with ExperienceStore(path, D, A) as s:
        for i in tqdm(
            range(0, n, 5000),
            desc=f"building {n} records",
            file=sys.stderr,
            leave=False,
            disable=not sys.stderr.isatty(),
        ):
            j = i % 10_000
            s.append(
                f"task{(i // 5000) % tasks}",
                i // 500,
                np.arange(5000) % 500,
                obs[j : j + 5000],
                act[j : j + 5000],
                stamp_ns=np.arange(i, i + 5000),
            )


def bench_sample(path: Path, reps: int, tag: str) -> dict:
    out = {}
    t = time.perf_counter()
    r = ExperienceStore(path, readonly=True)
    out[f"reader_open_s_{tag}"] = time.perf_counter() - t
    rng = np.random.default_rng(2)
    for sampler in ("uniform", "task_balanced", "recent"):
        r.sample(256, sampler=sampler, rng=rng)  # build the candidate cache
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            b = r.sample(256, sampler=sampler, rng=rng)
            times.append(time.perf_counter() - t)
        assert b.obs.shape == (256, D)
        key = "" if sampler == "uniform" else f"_{sampler}"
        out[f"sample256{key}_p50_ms_{tag}"] = _pct(times, 50)
        out[f"sample256{key}_p99_ms_{tag}"] = _pct(times, 99)
    r.close()
    return out


def write_bench_bag(path: Path, steps: int, kind: str) -> dict:
    """A bag with one observation and one action message per step (recorded JointStates carry effort too)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    rng = np.random.default_rng(3)
    joints = [f"joint{i}" for i in range(7)]
    array = FLOAT64_ARRAY if kind == "float64" else FLOAT32_ARRAY
    if kind == "jointstate":
        obs = {"topic": "/obs", "type": JOINT_STATE, "joints": joints, "fields": ["position", "velocity"]}
    else:
        obs = {"topic": "/obs", "type": array, "size": D}
    spec = {"observation": {"streams": [obs]}, "action": {"streams": [{"topic": "/act", "type": array, "size": A}]}}
    parsed = spec_from_dict(spec)
    t = 1_700_000_000 * 10**9 + np.arange(steps) * 10**7
    if kind == "jointstate":
        recorded = JointStateStream(
            topic="/obs", type=JOINT_STATE, joints=tuple(joints), fields=JOINT_FIELDS, frame_id="base"
        )
        obs_raws = recorded.encode_cdr(rng.standard_normal((steps, recorded.dim)), t)
    else:
        obs_raws = parsed.observation.streams[0].encode_cdr(rng.standard_normal((steps, D)), t)
    act_raws = parsed.action.streams[0].encode_cdr(rng.uniform(-1, 1, (steps, A)), t + 10**6)
    ts = B.jazzy_typestore()
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        co = w.add_connection("/obs", obs["type"], typestore=ts)
        ca = w.add_connection("/act", array, typestore=ts)
        for ti, o, a in zip(t.tolist(), obs_raws, act_raws, strict=True):
            w.write(co, ti, o)
            w.write(ca, ti + 10**6, a)
    return spec


def bench_bag(root: Path, steps: int, reps: int) -> dict:
    out = {}
    for kind in ("float32", "jointstate", "float64"):
        bag = root / f"bench_{kind}"
        spec = spec_from_dict(write_bench_bag(bag, steps, kind))
        n_msgs = 2 * steps
        t_loop, t_imp = [], []
        for rep in range(reps):  # interleaved so both see the same machine load
            t = time.perf_counter()
            assert B.rosbags_read_loop(bag) == n_msgs
            t_loop.append(time.perf_counter() - t)
            with ExperienceStore(root / f"imp_{kind}_{rep}.sqlite3", spec.obs_dim, spec.act_dim) as s:
                t = time.perf_counter()
                r = B.import_bag(bag, s, spec, task="bench")
                t_imp.append(time.perf_counter() - t)
                assert r.steps == steps
        sfx = "" if kind == "float32" else f"_{kind}"
        out[f"bag_import_msgs_per_s{sfx}"] = n_msgs / statistics.median(t_imp)
        out[f"rosbags_loop_msgs_per_s{sfx}"] = n_msgs / statistics.median(t_loop)
        out[f"bag_import_vs_rosbags_ratio{sfx}"] = statistics.median(t_loop) / statistics.median(t_imp)
        # decode only: our numpy CDR decoder vs rosbags deserialize + field access, same messages
        data, _, _ = B.read_topics(bag, {"/obs": spec.observation.streams[0].type})
        raws = data["/obs"][1]
        stream = spec.observation.streams[0]
        ts = B.jazzy_typestore()
        t = time.perf_counter()
        ours = stream.decode_cdr(raws)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        ref = np.stack([stream.decode(ts.deserialize_cdr(r, stream.type)) for r in raws])
        t_ref = time.perf_counter() - t
        assert np.array_equal(ours, ref)
        out[f"cdr_decode_msgs_per_s{sfx}"] = len(raws) / t_ours
        out[f"rosbags_deserialize_msgs_per_s{sfx}"] = len(raws) / t_ref
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller workloads (the 1e6 store is still built)")
    ap.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temp dir, removed after)")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench_store_", dir=args.dir))
    q = args.quick
    try:
        res: dict = {"quick": q, "python": platform.python_version(), "cpus": os.cpu_count()}
        res.update(
            bench_ingest(
                root, n_batched=50_000 if q else 200_000, n_single=1000 if q else 5000, n_power=200 if q else 1000
            )
        )
        for n, tag in ((100_000, "1e5"), (1_000_000, "1e6")):
            path = root / f"sample_{tag}.sqlite3"
            build_store(path, n)
            res.update(bench_sample(path, reps=100 if q else 500, tag=tag))
            res[f"store_mb_{tag}"] = path.stat().st_size / 1e6
            if tag == "1e6":
                path.unlink()
        res.update(bench_bag(root, steps=5_000 if q else 50_000, reps=3))
        res["targets_met"] = {
            "ingest_batched_ge_100k": res["ingest_batched_per_s"] >= 100_000,
            "sample256_p50_le_5ms_1e6": res["sample256_p50_ms_1e6"] <= 5.0,
            "bag_import_ge_rosbags": res["bag_import_vs_rosbags_ratio"] >= 1.0,
        }
        print(json.dumps(res, indent=1, sort_keys=True))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
