"""rosbag2 import/export for the experience store, so bags recorded on a robot feed offline learning.

Import reads the spec's topics with `rosbags` (MCAP or sqlite3), decodes their CDR with the
message codecs (codecs.py: numpy, vectorised when a topic's messages share one layout, which is
the usual case), aligns the streams on the action stream's timestamps (nearest earlier sample with
a max age) and appends everything in ONE store transaction: a truncated or corrupt bag imports
nothing and the error says where it broke. Export encodes with the same codecs and writes a bag
`rosbags` reads back identically.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lifelong_ros.experience.store import ExperienceStore, InvalidRecord
from lifelong_ros.ros_io.codecs import SpecError, decode_string, encode_string, header_stamps_ns, jazzy_typestore
from lifelong_ros.ros_io.spec import Spec, StreamAligner

INFO_TOPIC = "/lifelong_ros/experience"
INFO_TYPE = "std_msgs/msg/String"
_PROGRESS_CHUNK = 20000


class BagImportError(RuntimeError):
    """A bag could not be imported; nothing was written to the store."""


class BagExportError(RuntimeError):
    """A bag could not be exported; no partial bag is left behind."""


@dataclass
class ImportReport:
    bag: str
    steps: int
    messages_read: int
    episodes: list[str]
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> steps dropped
    skipped_topics: dict[str, str] = field(default_factory=dict)  # topic -> type (not in the spec)
    notes: list[str] = field(default_factory=list)
    first_stamp_ns: int = 0
    last_stamp_ns: int = 0
    seconds: float = 0.0
    content_sha256: str = ""  # digest of the messages read (topics, types, stamps, CDR bytes)
    # set when the store already holds these messages and the import was skipped (nothing was
    # imported): what the earlier import recorded (task, episodes, steps, bag, stamp_ns)
    already_imported: dict[str, Any] | None = None

    @property
    def skipped(self) -> bool:
        return self.already_imported is not None

    def summary(self) -> str:
        if self.already_imported is not None:
            prev = self.already_imported
            return (
                f"skipped {self.bag}: the store already holds its messages (imported from {prev.get('bag')} as task "
                f"{prev.get('task')!r}, episodes {prev.get('episodes')}, {prev.get('steps')} steps); nothing was "
                f"imported (`import-bag --again` or again=True duplicates it on purpose)"
            )
        lines = [f"imported {self.steps} steps from {self.bag} ({self.messages_read} messages, {self.seconds:.2f}s)"]
        if self.dropped:
            lines.append("dropped steps: " + ", ".join(f"{k}: {v}" for k, v in self.dropped.items()))
        if self.skipped_topics:
            lines.append(
                "topics not in the spec (ignored): " + ", ".join(f"{k} [{v}]" for k, v in self.skipped_topics.items())
            )
        lines.extend(self.notes)
        return "\n".join(lines)


@dataclass
class ExportReport:
    bag: str
    records: int
    messages: int
    storage: str
    seconds: float = 0.0


# -------------------------------------------------------------------------------------------- reading
def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="msg", unit_scale=True, disable=not enabled, file=sys.stderr, leave=False)


def read_topics(
    bag: str | Path, topics: dict[str, str], progress: bool = False
) -> tuple[dict[str, tuple[np.ndarray, list[bytes]]], dict[str, str], int]:
    """Read raw messages of ``topics`` ({topic: expected type}) from a bag, all in memory.

    Returns ({topic: (log stamps ns, raw CDR list)}, {other topic: type}, messages read). Raises
    BagImportError naming the bag, the stage and the last good message on any failure, when a
    topic is missing or has another type, and when fewer messages can be read than the bag's
    metadata lists (a truncated file).
    """
    from rosbags.rosbag2 import Reader

    bag = Path(bag)
    try:
        reader = Reader(bag)
        reader.open()
    except Exception as exc:
        hint = ""
        if "magic" in str(exc).lower() or "footer" in str(exc).lower() or "summary" in str(exc).lower():
            hint = " (the file looks truncated: an MCAP file ends with a footer that is missing or damaged)"
        raise BagImportError(f"cannot open bag {bag}: {type(exc).__name__}: {exc}{hint}; nothing was imported") from exc
    try:
        by_topic: dict[str, list[Any]] = {}
        skipped = {}
        for c in reader.connections:
            if c.topic in topics:
                by_topic.setdefault(c.topic, []).append(c)
            else:
                skipped[c.topic] = c.msgtype
        missing = [t for t in topics if t not in by_topic and t != INFO_TOPIC]
        if missing:
            have = {c.topic: c.msgtype for c in reader.connections}
            raise BagImportError(f"bag {bag} has no topic(s) {missing} required by the spec; it has {have}")
        for t, topic_conns in by_topic.items():
            for c in topic_conns:
                if c.msgtype != topics[t]:
                    raise BagImportError(
                        f"bag {bag}: topic {t} carries message type {c.msgtype!r}; the spec expects {topics[t]!r}"
                    )
        conns = [c for cs in by_topic.values() for c in cs]
        expected = sum(c.msgcount for c in conns)
        stamps: dict[str, list[int]] = {t: [] for t in by_topic}
        raws: dict[str, list[bytes]] = {t: [] for t in by_topic}
        n = 0
        last = None
        with _progress(expected, f"reading {bag.name}", progress) as bar:
            try:
                for conn, stamp, raw in reader.messages(connections=conns):
                    stamps[conn.topic].append(stamp)
                    raws[conn.topic].append(raw)
                    n += 1
                    last = (conn.topic, stamp)
                    if n % _PROGRESS_CHUNK == 0:
                        bar.update(_PROGRESS_CHUNK)
            except Exception as exc:
                where = f"after {n} messages" + (f" (last good: {last[0]} at t={last[1]} ns)" if last else "")
                raise BagImportError(
                    f"bag {bag} is corrupt or truncated: reading failed {where}: {type(exc).__name__}: {exc}; "
                    f"nothing was imported"
                ) from exc
            bar.update(n % _PROGRESS_CHUNK)
        for t in by_topic:
            want = sum(c.msgcount for c in by_topic[t])
            got = len(raws[t])
            if want and got != want:
                lt = f"; last message read at t={stamps[t][-1]} ns" if stamps[t] else ""
                raise BagImportError(
                    f"bag {bag} is truncated or corrupt: its metadata lists {want} messages on {t} but only {got} "
                    f"could be read{lt}; nothing was imported"
                )
    finally:
        reader.close()
    out = {}
    for t in by_topic:
        st = np.asarray(stamps[t], dtype=np.int64)
        r = raws[t]
        if st.shape[0] > 1 and (st[1:] < st[:-1]).any():
            order = np.argsort(st, kind="stable")
            st = st[order]
            r = [r[i] for i in order.tolist()]
        out[t] = (st, r)
    return out, skipped, n


# -------------------------------------------------------------------------------------------- import
def import_bag(
    bag: str | Path,
    store: ExperienceStore,
    spec: Spec,
    task: str | None = None,
    episode: str | None = None,
    source: str | None = "bag",
    time_source: str = "log",
    progress: bool = False,
    typestore: Any = None,
    again: bool = False,
) -> ImportReport:
    """Import a rosbag2 bag (directory, .mcap or .db3) into ``store`` in one transaction.

    One record per message on the first action topic (the step clock): every other stream
    contributes its nearest earlier-or-equal sample within the spec's ``max_age_s``; steps where
    a stream is missing or stale are dropped and counted in the report. ``time_source``: "log"
    (the bag's receive time) or "header" (header stamps where the type has a header, receive time
    for the headerless Float32/Float64MultiArray, noted in the report). When the bag carries ``/lifelong_ros/experience`` (written by export) task/episode/step/reward/done come
    from it; otherwise ``task`` is required, the episode is ``episode`` or the bag's name, steps
    count from 0 and the last step is done. ``source=None`` keeps the exported source.

    Re-importing is idempotent: the store remembers a content hash of the messages read (the
    spec's topics: types, stamps and CDR bytes); a bag whose messages it already holds is skipped
    (``report.already_imported`` says as what; nothing is written) unless ``again=True``.
    """
    t0 = time.perf_counter()
    bag = Path(bag)
    if store.obs_dim != spec.obs_dim or store.act_dim != spec.act_dim:
        raise BagImportError(
            f"spec {spec.name or ''} maps to obs/action of {spec.obs_dim}/{spec.act_dim} values but store "
            f"{store.path} holds {store.obs_dim}/{store.act_dim}"
        )
    if time_source not in ("log", "header"):
        raise ValueError(f"time_source={time_source!r}: expected 'log' or 'header'")
    streams = list(spec.action.streams) + list(spec.observation.streams)
    notes = []
    if time_source == "header":
        flat = [s.topic for s in streams if not s.has_header]
        if flat:
            notes.append(f"{flat} have no header: aligned on their receive (log) time")
    topics = {s.topic: s.type for s in streams}
    topics[INFO_TOPIC] = INFO_TYPE
    data, skipped, n_read = read_topics(bag, topics, progress=progress)
    has_info = INFO_TOPIC in data
    if not has_info and not task:
        raise BagImportError(f"bag {bag} has no {INFO_TOPIC} topic: give the task name (--task)")
    digest = content_digest(data, topics)
    if not again:
        prev = store.imported(digest)
        if prev is not None:
            return ImportReport(
                bag=str(bag),
                steps=0,
                messages_read=n_read,
                episodes=[],
                skipped_topics=skipped,
                notes=notes,
                seconds=time.perf_counter() - t0,
                content_sha256=digest,
                already_imported=prev,
            )

    decoded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for s in streams:
        st, raws = data[s.topic]
        try:
            vals = s.decode_cdr(raws, typestore)
            if time_source == "header" and s.has_header:
                st = header_stamps_ns(raws)
                order = np.argsort(st, kind="stable")
                st, vals = st[order], vals[order]
        except (SpecError, ValueError, struct.error) as exc:
            raise BagImportError(f"bag {bag}: cannot decode {s.topic} ({s.type}): {exc}; nothing was imported") from exc
        decoded[s.topic] = (st, vals)

    clock = spec.action.streams[0].topic
    trig = decoded[clock][0]
    if trig.shape[0] == 0:
        raise BagImportError(f"bag {bag} has no message on the action topic {clock}; nothing to import")
    keep = np.ones(trig.shape[0], bool)
    dropped: dict[str, int] = {}
    parts_idx = {}
    for vspec in (spec.action, spec.observation):
        max_age = int(round(vspec.max_age_s * 1e9))
        sts = [decoded[s.topic][0] for s in vspec.streams]
        idx, valid = StreamAligner.align(trig, sts, max_age)
        for k, s in enumerate(vspec.streams):
            bad = keep & ~valid[:, k]
            if bad.any():
                dropped[f"{s.topic} missing or older than {vspec.max_age_s}s"] = int(bad.sum())
            keep &= valid[:, k]
            parts_idx[s.topic] = idx[:, k]
    info = None
    if has_info:
        ist, iraws = data[INFO_TOPIC]
        pos = np.searchsorted(ist, trig)
        if ist.shape[0]:
            match = (pos < ist.shape[0]) & (ist[np.minimum(pos, ist.shape[0] - 1)] == trig)
        else:
            match = np.zeros_like(keep)
        bad = keep & ~match
        if bad.any():
            dropped[f"no {INFO_TOPIC} message at the step's time"] = int(bad.sum())
        keep &= match
        info = (pos, iraws)
    steps = np.flatnonzero(keep)
    if steps.shape[0] == 0:
        raise BagImportError(f"bag {bag}: no step could be aligned ({dropped}); nothing was imported")

    obs = np.concatenate([decoded[s.topic][1][parts_idx[s.topic][steps]] for s in spec.observation.streams], axis=1)
    act = np.concatenate([decoded[s.topic][1][parts_idx[s.topic][steps]] for s in spec.action.streams], axis=1)
    stamps = trig[steps]
    if info is not None:
        pos, iraws = info
        try:
            recs = [json.loads(decode_string(iraws[i])) for i in pos[steps].tolist()]
            tasks: str | list[str] = [r["task"] for r in recs]
            episodes: str | list[str] = [str(r["episode"]) for r in recs]
            step_no = np.array([r["step"] for r in recs], np.int64)
            reward = np.array([r.get("reward", 0.0) for r in recs], np.float32)
            done = np.array([r.get("done", False) for r in recs], bool)
            sources: str | list[str] = [r.get("source", "bag") for r in recs] if source is None else source
            labels = [r.get("label") for r in recs]
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            raise BagImportError(f"bag {bag}: malformed {INFO_TOPIC} message: {exc}; nothing was imported") from exc
    else:
        if not task:
            raise BagImportError(f"bag {bag} has no {INFO_TOPIC} topic: give the task name (--task)")
        tasks = task
        episodes = episode or bag.name
        step_no = np.arange(steps.shape[0], dtype=np.int64)
        reward = np.zeros(steps.shape[0], np.float32)
        done = np.zeros(steps.shape[0], bool)
        done[-1] = True
        sources = source or "bag"
        labels = None
    try:
        with store.transaction():
            for start in range(0, steps.shape[0], 50000):
                sl = slice(start, start + 50000)
                store.append(
                    tasks if isinstance(tasks, str) else tasks[sl],
                    episodes if isinstance(episodes, str) else episodes[sl],
                    step_no[sl],
                    obs[sl],
                    act[sl],
                    reward=reward[sl],
                    done=done[sl],
                    stamp_ns=stamps[sl],
                    source=sources if isinstance(sources, str) else sources[sl],
                    label=labels[sl] if labels is not None else None,
                )
            eps = sorted(set([episodes] if isinstance(episodes, str) else episodes))
            task_names = sorted(set([tasks] if isinstance(tasks, str) else tasks))
            store.mark_imported(
                digest,
                {
                    "bag": str(bag),
                    "task": task_names[0] if len(task_names) == 1 else task_names,
                    "episodes": eps,
                    "steps": int(steps.shape[0]),
                },
            )
    except InvalidRecord as exc:
        raise BagImportError(f"bag {bag}: {exc}; nothing was imported") from exc
    return ImportReport(
        bag=str(bag),
        steps=int(steps.shape[0]),
        messages_read=n_read,
        episodes=eps,
        dropped=dropped,
        skipped_topics=skipped,
        notes=notes,
        first_stamp_ns=int(stamps[0]),
        last_stamp_ns=int(stamps[-1]),
        seconds=time.perf_counter() - t0,
        content_sha256=digest,
    )


def content_digest(data: dict[str, tuple[np.ndarray, list[bytes]]], topics: dict[str, str]) -> str:
    """sha256 of the messages ``read_topics`` returned: per topic (sorted), its name, type, log stamps
    and every CDR payload (length-prefixed). The same recording gives the same digest wherever the
    bag file lives and whatever it is called."""
    h = hashlib.sha256()
    for t in sorted(data):
        st, raws = data[t]
        h.update(f"{t}\x00{topics.get(t, '')}\x00{len(raws)}\x00".encode())
        h.update(np.ascontiguousarray(st, dtype="<i8").tobytes())
        for raw in raws:
            h.update(len(raw).to_bytes(8, "little"))
            h.update(raw)
    return h.hexdigest()


# -------------------------------------------------------------------------------------------- export
def export_bag(
    store: ExperienceStore,
    out: str | Path,
    spec: Spec,
    tasks: Sequence[str] | None = None,
    split: str = "all",
    sources: Sequence[str] | None = None,
    storage: str = "mcap",
    with_info: bool = True,
    retime_hz: float | None = None,
    progress: bool = False,
) -> ExportReport:
    """Write the selected records to a new rosbag2 bag (ROS 2 Jazzy types, version 9).

    Each record becomes one message per observation and action stream at the record's stamp,
    plus (``with_info``) a std_msgs/String JSON on /lifelong_ros/experience carrying task,
    episode, step, reward, done, source and label so import reproduces the records. Stamps must be
    distinct across the exported records (alignment is by time) unless ``retime_hz`` rewrites
    them as a uniform clock. A failed export removes the partial bag.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    t0 = time.perf_counter()
    out = Path(out)
    if storage not in ("mcap", "sqlite3"):
        raise ValueError(f"storage={storage!r}: expected 'mcap' or 'sqlite3'")
    if out.exists():
        raise BagExportError(f"{out} exists already; export writes a new bag")
    if store.obs_dim != spec.obs_dim or store.act_dim != spec.act_dim:
        raise BagExportError(
            f"spec maps {spec.obs_dim}/{spec.act_dim} values but store {store.path} holds {store.obs_dim}/{store.act_dim}"
        )
    names = list(tasks) if tasks else store.tasks()
    batches = [store.task_arrays(t, split=split, sources=sources) for t in names]
    batches = [b for b in batches if len(b)]
    if not batches:
        raise BagExportError(f"no records match tasks={names}, split={split!r}, sources={sources} in {store.path}")
    cat = {
        k: np.concatenate([getattr(b, k) for b in batches])
        for k in ("obs", "action", "task", "episode", "step", "source", "reward", "done", "id", "label")
    }
    stamps = np.concatenate([b.stamp_ns for b in batches])
    order = np.lexsort((cat["id"], stamps))
    cat = {k: v[order] for k, v in cat.items()}
    stamps = stamps[order]
    if retime_hz is not None:
        if not retime_hz > 0:
            raise ValueError(f"retime_hz={retime_hz!r}: expected a positive rate")
        stamps = int(stamps[0]) + np.round(np.arange(stamps.shape[0]) * (1e9 / retime_hz)).astype(np.int64)
    dup = np.flatnonzero(stamps[1:] == stamps[:-1])
    if dup.shape[0]:
        i = int(dup[0])
        raise BagExportError(
            f"records {int(cat['id'][i])} and {int(cat['id'][i + 1])} share the stamp {int(stamps[i])} ns; a bag aligns "
            f"streams by time, so exported stamps must be distinct: pass retime_hz (--retime HZ) to write a uniform clock"
        )
    ts = jazzy_typestore()
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    n_msgs = 0
    try:
        with Writer(out, version=9, storage_plugin=plugin) as writer:
            plan = []
            for vec, vspec in ((cat["obs"], spec.observation), (cat["action"], spec.action)):
                for s, sl in zip(vspec.streams, vspec.slices()):
                    conn = writer.add_connection(s.topic, s.type, typestore=ts)
                    plan.append((conn, s.encode_cdr(vec[:, sl], stamps)))
            if with_info:
                conn = writer.add_connection(INFO_TOPIC, INFO_TYPE, typestore=ts)
                infos = [
                    encode_string(
                        json.dumps(
                            {
                                "task": str(t),
                                "episode": str(e),
                                "step": int(st),
                                "reward": float(r),
                                "done": bool(d),
                                "source": str(so),
                                "label": lb,
                            },
                            sort_keys=True,
                        )
                    )
                    for t, e, st, r, d, so, lb in zip(
                        cat["task"],
                        cat["episode"],
                        cat["step"],
                        cat["reward"],
                        cat["done"],
                        cat["source"],
                        cat["label"],
                    )
                ]
                plan.append((conn, infos))
            with _progress(len(plan) * stamps.shape[0], f"writing {out.name}", progress) as bar:
                st_list = stamps.tolist()
                for i, t in enumerate(st_list):
                    for conn, raws in plan:
                        writer.write(conn, t, raws[i])
                    n_msgs += len(plan)
                    if (i + 1) % 5000 == 0:
                        bar.update(5000 * len(plan))
    except Exception as exc:
        shutil.rmtree(out, ignore_errors=True)
        if isinstance(exc, (BagExportError, ValueError)):
            raise
        raise BagExportError(
            f"writing bag {out} failed: {type(exc).__name__}: {exc}; the partial bag was removed"
        ) from exc
    return ExportReport(
        bag=str(out), records=int(stamps.shape[0]), messages=n_msgs, storage=storage, seconds=time.perf_counter() - t0
    )


def rosbags_read_loop(bag: str | Path, topics: Sequence[str] | None = None) -> int:
    """The baseline: rosbags' reader plus its CDR deserializer over every message (for bench/store.py)."""
    from rosbags.rosbag2 import Reader

    ts = jazzy_typestore()
    n = 0
    with Reader(Path(bag)) as reader:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        for conn, _, raw in reader.messages(connections=conns):
            ts.deserialize_cdr(raw, conn.msgtype)
            n += 1
    return n
