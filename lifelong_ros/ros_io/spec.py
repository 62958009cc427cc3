"""Observation/action specs: how standard ROS messages map to the policy's flat float32 vectors.

One YAML file names the topics, message types and fields that make up the observation and the
action; bag import/export and the ROS nodes all use it, so they build identical vectors. A stream
here is the selection (topic, joints, fields, slice); the conversions are its message type's codec
(codecs.py), on message objects (rosbags dataclasses or rclpy messages, built from classes the
caller resolves) and on raw CDR alike.

YAML layout (see config/spec_metaworld.yaml)::

    observation:
      max_age_s: 0.1            # a stream sample older than this (vs the step time) is stale
      streams:                  # concatenated in this order
        - {topic: /joint_states, type: sensor_msgs/msg/JointState, joints: [j1, j2], fields: [position, velocity]}
        - {topic: /ee_pose, type: geometry_msgs/msg/PoseStamped}            # x y z qx qy qz qw
        - {topic: /features, type: std_msgs/msg/Float32MultiArray, slice: [0, 16]}   # or size: 16
        - {topic: /camera/image_raw, type: sensor_msgs/msg/Image, width: 128, height: 96, encoding: rgb8}
    action:
      streams:
        - {topic: /cmd, type: std_msgs/msg/Float32MultiArray, size: 4}   # or Float64MultiArray
        - topic: /forward_position_controller/commands
          type: std_msgs/msg/Float64MultiArray
          size: 2
          range: {low: [-1.5, 0.0], high: [0.5, 1.7]}   # the policy's -1..1 is low..high in the message

A spec may start with ``base: other.yaml`` (relative to it): the other spec's streams come first and
this file's observation streams are appended (config/spec_g1_camera.yaml).

``range`` (any stream but an image) scales linearly between the policy's normalised values and the
message's physical ones, per element (one value stands for all): -1 is ``low``, 1 is ``high``. The
pose field ``orientation_wxyz`` is the quaternion in scalar-first order (MuJoCo's).
"""

from __future__ import annotations

import bisect
import dataclasses
import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from lifelong_ros.ros_io.codecs import (
    CODECS,
    IMAGE_ENCODINGS,
    JOINT_FIELDS,
    POSE_FIELDS,
    Codec,
    ImageCodec,
    JointStateCodec,
    MessageClasses,
    MultiArrayCodec,
    PoseStampedCodec,
    codec_for,
    jazzy_typestore,
    normalize_type,
)
from lifelong_ros.ros_io.codecs import SpecError as SpecError  # re-exported: the nodes and the CLI catch it from here

DEFAULT_MAX_AGE_S = 0.1


# ---------------------------------------------------------------------------------- message classes
def rosbags_classes(typestore: Any = None) -> MessageClasses:
    """Resolve message type names to rosbags dataclasses (default: the ROS 2 Jazzy typestore)."""
    if typestore is None:
        typestore = jazzy_typestore()

    def resolve(name: str) -> type:
        try:
            return typestore.types[normalize_type(name)]
        except KeyError:
            raise SpecError(f"message type {name!r} is not in the rosbags typestore") from None

    return resolve


def ros_classes() -> MessageClasses:
    """Resolve message type names to rclpy message classes (imports e.g. ``sensor_msgs.msg``)."""

    def resolve(name: str) -> type:
        pkg, _, cls = normalize_type(name).split("/")
        return getattr(importlib.import_module(f"{pkg}.msg"), cls)

    return resolve


def header_stamp_ns(msg: Any) -> int:
    """The header stamp of a stamped message in nanoseconds."""
    st = msg.header.stamp
    return int(st.sec) * 1_000_000_000 + int(st.nanosec)


# ------------------------------------------------------------------------------------------- streams
@dataclass(frozen=True)
class StreamSpec:
    """One topic's contribution to a vector: what it selects; its message type's codec converts.

    ``decode``/``decode_cdr`` give the float32 values the policy sees; ``encode``/``encode_cdr`` write
    the values in the message's own element type (float64 for JointState, PoseStamped, Float64MultiArray).
    """

    topic: str
    type: str
    # ``range``: the message's values at the policy's -1 and 1, per element (empty = no scaling)
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    @property
    def codec(self) -> Codec[Any]:
        return codec_for(self.type)

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.asarray(self.low, np.float64), np.asarray(self.high, np.float64)
        return np.broadcast_to(lo, (self.dim,)), np.broadcast_to(hi, (self.dim,))

    def to_policy(self, values: np.ndarray) -> np.ndarray:
        """The message's values -> the policy's (``range``: low..high -> -1..1; else unchanged)."""
        if not self.low:
            return values
        lo, hi = self._bounds()
        return (np.asarray(values, np.float64) - lo) / (hi - lo) * 2.0 - 1.0

    def from_policy(self, values: np.ndarray) -> np.ndarray:
        """The policy's values -> the message's (``range``: -1..1 -> low..high; else unchanged)."""
        if not self.low:
            return values
        lo, hi = self._bounds()
        return lo + (np.asarray(values, np.float64) + 1.0) * 0.5 * (hi - lo)

    @property
    def dim(self) -> int:
        raise NotImplementedError

    @property
    def has_header(self) -> bool:
        return self.codec.has_header

    def decode(self, msg: Any) -> np.ndarray:
        """A message object (rosbags or rclpy) -> [dim] float32, in the policy's units."""
        return self.to_policy(self.codec.to_vector(msg, self)).astype(np.float32, copy=False)

    def encode(self, vec: np.ndarray, classes: MessageClasses, stamp_ns: int = 0) -> Any:
        """[dim] values in the policy's units -> a message object built from ``classes`` (rosbags_classes() /
        ros_classes())."""
        return self.codec.from_vector(self.from_policy(vec), self, classes, stamp_ns)

    def decode_cdr(self, raws: Sequence[bytes], typestore: Any = None) -> np.ndarray:
        """Raw CDR messages -> [M, dim] float32 in the policy's units (numpy fast path; see Codec.decode_cdr)."""
        return self.to_policy(self.codec.decode_cdr(raws, self, typestore)).astype(np.float32, copy=False)

    def encode_cdr(self, values: np.ndarray, stamps: Sequence[int] | np.ndarray) -> list[bytes]:
        """[M, dim] values in the policy's units stamped ``stamps`` (ns) -> one little-endian CDR message per row."""
        return self.codec.encode_cdr(self.from_policy(values), stamps, self)


@dataclass(frozen=True)
class JointStateStream(StreamSpec):
    """JointState values of named joints (in this order), field-major: all positions, then velocities..."""

    joints: tuple[str, ...] = ()
    fields: tuple[str, ...] = ("position",)
    frame_id: str = ""

    @property
    def dim(self) -> int:
        return len(self.joints) * len(self.fields)


@dataclass(frozen=True)
class PoseStream(StreamSpec):
    """PoseStamped as position xyz and/or orientation quaternion xyzw."""

    fields: tuple[str, ...] = ("position", "orientation")
    frame_id: str = ""

    @property
    def dim(self) -> int:
        return sum(len(POSE_FIELDS[f]) for f in self.fields)


@dataclass(frozen=True)
class ImageStream(StreamSpec):
    """Every pixel of an Image of a fixed size and one-byte-per-channel encoding (values 0..255)."""

    width: int = 0
    height: int = 0
    encoding: str = "rgb8"
    frame_id: str = ""

    @property
    def dim(self) -> int:
        return self.width * self.height * IMAGE_ENCODINGS[self.encoding]


@dataclass(frozen=True)
class ArrayStream(StreamSpec):
    """A slice [start, stop) of Float32/Float64MultiArray.data; with ``exact`` the message length must be stop."""

    start: int = 0
    stop: int = 0
    exact: bool = True

    @property
    def dim(self) -> int:
        return self.stop - self.start


# ------------------------------------------------------------------------------------------- vectors
@dataclass(frozen=True)
class VectorSpec:
    """Streams concatenated in order into one float32 vector."""

    streams: tuple[StreamSpec, ...]
    max_age_s: float = DEFAULT_MAX_AGE_S

    @property
    def dim(self) -> int:
        return sum(s.dim for s in self.streams)

    @property
    def topics(self) -> list[str]:
        return [s.topic for s in self.streams]

    def slices(self) -> list[slice]:
        out, k = [], 0
        for s in self.streams:
            out.append(slice(k, k + s.dim))
            k += s.dim
        return out

    def decode(self, msgs: Mapping[str, Any]) -> np.ndarray:
        """{topic: message} -> vector; a missing topic raises SpecError naming it."""
        missing = [t for t in self.topics if t not in msgs]
        if missing:
            raise SpecError(f"no message for topic(s) {missing}; the spec needs {self.topics}")
        return np.concatenate([s.decode(msgs[s.topic]) for s in self.streams]).astype(np.float32, copy=False)

    def assemble(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """Concatenate per-stream vectors (e.g. from a StreamAligner) into the full vector."""
        return np.concatenate(parts).astype(np.float32, copy=False)

    def encode(self, vec: np.ndarray, classes: MessageClasses, stamp_ns: int = 0) -> dict[str, Any]:
        """vector -> {topic: message}, messages built from ``classes`` (rosbags_classes() / ros_classes())."""
        vec = np.asarray(vec, dtype=np.float32).reshape(-1)
        if vec.shape[0] != self.dim:
            raise SpecError(f"vector has {vec.shape[0]} values; the spec's streams {self.topics} need {self.dim}")
        return {s.topic: s.encode(vec[sl], classes, stamp_ns) for s, sl in zip(self.streams, self.slices())}


@dataclass(frozen=True)
class Spec:
    """Observation and action specs loaded from one YAML file."""

    observation: VectorSpec
    action: VectorSpec
    name: str = ""

    @property
    def obs_dim(self) -> int:
        return self.observation.dim

    @property
    def act_dim(self) -> int:
        return self.action.dim

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "observation": _vector_to_dict(self.observation),
            "action": _vector_to_dict(self.action),
        }


def _vector_to_dict(v: VectorSpec) -> dict:
    streams = []
    for s in v.streams:
        d: dict[str, Any] = {"topic": s.topic, "type": s.type}
        if isinstance(s, JointStateStream):
            d.update(joints=list(s.joints), fields=list(s.fields))
        elif isinstance(s, PoseStream):
            d.update(fields=list(s.fields))
        elif isinstance(s, ImageStream):
            d.update(width=s.width, height=s.height, encoding=s.encoding)
        elif isinstance(s, ArrayStream):
            if s.exact and s.start == 0:
                d["size"] = s.stop
            else:
                d["slice"] = [s.start, s.stop]
        if s.low:
            d["range"] = {"low": list(s.low), "high": list(s.high)}
        frame_id = getattr(s, "frame_id", "")
        if frame_id:
            d["frame_id"] = frame_id
        streams.append(d)
    return {"max_age_s": v.max_age_s, "streams": streams}


# ------------------------------------------------------------------------------------------ loading
def load_spec(path: str | os.PathLike) -> Spec:
    """Load and validate a spec YAML; errors name the file, the key path and what was expected."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError(f"cannot read spec {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"spec {path} is not valid YAML: {exc}") from exc
    return spec_from_dict(_with_base(data, path, ()), where=str(path))


def _with_base(data: Any, path: Path, seen: tuple[Path, ...]) -> Any:
    """``base: other.yaml`` (relative to this file): the other spec's streams first, then this file's
    observation streams; this file's name, max_age_s and action (if given) win."""
    if not isinstance(data, dict) or "base" not in data:
        return data
    base_path = (path.parent / str(data["base"])).resolve()
    if base_path in seen or base_path == path.resolve():
        raise SpecError(f"spec {path}: base {data['base']!r} includes itself")
    try:
        base = _with_base(yaml.safe_load(base_path.read_text()), base_path, (*seen, path.resolve()))
    except OSError as exc:
        raise SpecError(f"spec {path}: cannot read base {base_path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"spec {path}: base {base_path} is not valid YAML: {exc}") from exc
    if not isinstance(base, dict):
        raise SpecError(f"spec {path}: base {base_path} is not a spec mapping")
    out = {k: v for k, v in data.items() if k != "base"}
    for key in ("observation", "action"):
        mine, theirs = out.get(key), base.get(key)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            merged = {**theirs, **{k: v for k, v in mine.items() if k != "streams"}}
            merged["streams"] = list(theirs.get("streams") or []) + list(mine.get("streams") or [])
            out[key] = merged
        elif mine is None and theirs is not None:
            out[key] = theirs
    out.setdefault("name", base.get("name", ""))
    return out


def spec_from_dict(data: Any, where: str = "spec") -> Spec:
    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a mapping with 'observation' and 'action', got {type(data).__name__}")
    unknown = set(data) - {"name", "observation", "action"}
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {sorted(unknown)}; expected name, observation, action")
    for key in ("observation", "action"):
        if key not in data:
            raise SpecError(f"{where}: missing '{key}'")
    obs = _vector_from_dict(data["observation"], f"{where}: observation")
    act = _vector_from_dict(data["action"], f"{where}: action")
    clash = set(obs.topics) & set(act.topics)
    if clash:
        raise SpecError(f"{where}: topic(s) {sorted(clash)} appear in both observation and action")
    return Spec(observation=obs, action=act, name=str(data.get("name", "")))


def _vector_from_dict(d: Any, where: str) -> VectorSpec:
    if not isinstance(d, dict):
        raise SpecError(f"{where}: expected a mapping with 'streams', got {d!r}")
    unknown = set(d) - {"streams", "max_age_s"}
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {sorted(unknown)}; expected streams, max_age_s")
    max_age = d.get("max_age_s", DEFAULT_MAX_AGE_S)
    if isinstance(max_age, bool) or not isinstance(max_age, (int, float)) or not max_age > 0:
        raise SpecError(f"{where}.max_age_s: expected a positive number of seconds, got {max_age!r}")
    streams = d.get("streams")
    if not isinstance(streams, list) or not streams:
        raise SpecError(f"{where}.streams: expected a non-empty list of streams, got {streams!r}")
    parsed = tuple(_stream_from_dict(s, f"{where}.streams[{i}]") for i, s in enumerate(streams))
    topics = [s.topic for s in parsed]
    dup = sorted({t for t in topics if topics.count(t) > 1})
    if dup:
        raise SpecError(f"{where}.streams: topic(s) {dup} listed more than once")
    return VectorSpec(streams=parsed, max_age_s=float(max_age))


def _names(value: Any, where: str, allowed: Sequence[str] | None = None) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise SpecError(f"{where}: expected a non-empty list of names, got {value!r}")
    if len(set(value)) != len(value):
        raise SpecError(f"{where}: duplicate names in {value!r}")
    if allowed is not None:
        bad = [v for v in value if v not in allowed]
        if bad:
            raise SpecError(f"{where}: unknown value(s) {bad}; expected some of {list(allowed)}")
    return tuple(value)


def _stream_from_dict(d: Any, where: str) -> StreamSpec:
    if not isinstance(d, dict):
        raise SpecError(f"{where}: expected a mapping with topic and type, got {d!r}")
    topic = d.get("topic")
    if not isinstance(topic, str) or not topic.startswith("/"):
        raise SpecError(f"{where}.topic: expected an absolute topic name like '/joint_states', got {topic!r}")
    if "type" not in d:
        raise SpecError(f"{where}: missing 'type' (one of {list(CODECS)})")
    typ = normalize_type(d["type"])
    codec = CODECS.get(typ)
    frame_id = d.get("frame_id", "")
    if not isinstance(frame_id, str):
        raise SpecError(f"{where}.frame_id: expected a string, got {frame_id!r}")

    def check_keys(allowed: set[str]) -> None:
        unknown = set(d) - allowed - {"topic", "type", "range"}
        if unknown:
            raise SpecError(f"{where}: unknown key(s) {sorted(unknown)} for {typ}; expected some of {sorted(allowed)}")

    stream = _stream_kind(d, where, topic, typ, codec, frame_id, check_keys)
    if "range" not in d:
        return stream
    if isinstance(stream, ImageStream):
        raise SpecError(f"{where}.range: an image has no range (its values are the pixels' bytes)")
    low, high = _range(d["range"], stream.dim, f"{where}.range")
    return dataclasses.replace(stream, low=low, high=high)


def _range(r: Any, dim: int, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if not isinstance(r, dict) or set(r) != {"low", "high"}:
        raise SpecError(f"{where}: expected {{low: [...], high: [...]}}, got {r!r}")
    out = []
    for key in ("low", "high"):
        v = r[key]
        v = [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        if (
            not isinstance(v, list)
            or len(v) not in (1, dim)
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in v)
        ):
            raise SpecError(f"{where}.{key}: expected one number or {dim} numbers, got {v!r}")
        out.append(tuple(float(x) for x in (v * dim if len(v) == 1 else v)))
    low, high = out
    bad = [i for i, (lo, hi) in enumerate(zip(low, high, strict=True)) if not lo < hi]
    if bad:
        raise SpecError(f"{where}: low must be below high; element(s) {bad} are not")
    return low, high


def _stream_kind(d: dict, where: str, topic: str, typ: str, codec: Any, frame_id: str, check_keys: Any) -> StreamSpec:
    if isinstance(codec, JointStateCodec):
        check_keys({"joints", "fields", "frame_id"})
        joints = _names(d.get("joints"), f"{where}.joints")
        fields = _names(d.get("fields", ["position"]), f"{where}.fields", JOINT_FIELDS)
        return JointStateStream(topic=topic, type=typ, joints=joints, fields=fields, frame_id=frame_id)
    if isinstance(codec, PoseStampedCodec):
        check_keys({"fields", "frame_id"})
        fields = _names(d.get("fields", ["position", "orientation"]), f"{where}.fields", tuple(POSE_FIELDS))
        return PoseStream(topic=topic, type=typ, fields=fields, frame_id=frame_id)
    if isinstance(codec, ImageCodec):
        check_keys({"width", "height", "encoding", "frame_id"})
        size = []
        for key in ("width", "height"):
            v = d.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise SpecError(f"{where}.{key}: expected a positive number of pixels, got {v!r}")
            size.append(v)
        encoding = d.get("encoding", "rgb8")
        if encoding not in IMAGE_ENCODINGS:
            raise SpecError(f"{where}.encoding: {encoding!r} is not supported; expected one of {list(IMAGE_ENCODINGS)}")
        return ImageStream(topic=topic, type=typ, width=size[0], height=size[1], encoding=encoding, frame_id=frame_id)
    if isinstance(codec, MultiArrayCodec):
        check_keys({"size", "slice"})
        if ("size" in d) == ("slice" in d):
            raise SpecError(
                f"{where}: give exactly one of 'size: N' (message has exactly N values) or 'slice: [start, stop]'"
            )
        if "size" in d:
            size_ = d["size"]
            if isinstance(size_, bool) or not isinstance(size_, int) or size_ <= 0:
                raise SpecError(f"{where}.size: expected a positive int, got {size_!r}")
            return ArrayStream(topic=topic, type=typ, start=0, stop=size_, exact=True)
        sl = d["slice"]
        if (
            not isinstance(sl, list)
            or len(sl) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in sl)
            or not 0 <= sl[0] < sl[1]
        ):
            raise SpecError(f"{where}.slice: expected [start, stop] with 0 <= start < stop, got {sl!r}")
        return ArrayStream(topic=topic, type=typ, start=sl[0], stop=sl[1], exact=False)
    raise SpecError(f"{where}.type: unsupported message type {d['type']!r}; supported: {list(CODECS)}")


# ---------------------------------------------------------------------------------------- alignment
class StreamAligner:
    """Nearest-earlier-sample alignment of several streams, with a max age.

    Streaming use (the policy server): ``push(topic, stamp_ns, value)`` as messages arrive, then
    ``get(t_ns)`` returns one value per topic, each the latest sample at or before ``t_ns`` no
    older than ``max_age_s``, or None (``stale(t_ns)`` says why). Batch use (bag import):
    ``StreamAligner.align(trigger_ns, [stamps per topic], max_age_ns)`` does the same with numpy.
    """

    def __init__(self, topics: Sequence[str], max_age_s: float, history: int = 64) -> None:
        if not max_age_s > 0:
            raise ValueError(f"max_age_s={max_age_s!r}: expected a positive number of seconds")
        if history < 1:
            raise ValueError(f"history={history!r}: expected >= 1")
        self.topics = list(topics)
        self.max_age_ns = int(round(max_age_s * 1e9))
        self.history = history
        self._stamps: dict[str, list[int]] = {t: [] for t in self.topics}
        self._values: dict[str, list[Any]] = {t: [] for t in self.topics}

    def push(self, topic: str, stamp_ns: int, value: Any) -> None:
        if topic not in self._stamps:
            raise KeyError(f"topic {topic!r} is not aligned here; topics: {self.topics}")
        stamps, values = self._stamps[topic], self._values[topic]
        stamp_ns = int(stamp_ns)
        if not stamps or stamp_ns >= stamps[-1]:
            stamps.append(stamp_ns)
            values.append(value)
        else:  # out of order: keep sorted
            i = bisect.bisect_right(stamps, stamp_ns)
            stamps.insert(i, stamp_ns)
            values.insert(i, value)
        if len(stamps) > self.history:
            del stamps[0], values[0]

    def _pick(self, topic: str, t_ns: int) -> tuple[Any, str | None]:
        stamps = self._stamps[topic]
        i = bisect.bisect_right(stamps, t_ns) - 1
        if i < 0:
            return (
                None,
                "no sample yet" if not stamps else f"no sample at or before t={t_ns} (oldest kept: {stamps[0]})",
            )
        age = t_ns - stamps[i]
        if age > self.max_age_ns:
            return None, f"latest sample is {age / 1e9:.3f}s old (max_age {self.max_age_ns / 1e9:.3f}s)"
        return self._values[topic][i], None

    def get(self, t_ns: int) -> list[Any] | None:
        out = []
        for t in self.topics:
            v, why = self._pick(t, int(t_ns))
            if why is not None:
                return None
            out.append(v)
        return out

    def stale(self, t_ns: int) -> dict[str, str]:
        """{topic: reason} for every topic ``get(t_ns)`` could not use."""
        return {t: why for t in self.topics if (why := self._pick(t, int(t_ns))[1]) is not None}

    @staticmethod
    def align(trigger_ns: np.ndarray, stamps: Sequence[np.ndarray], max_age_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """For each trigger time, the index of the nearest earlier-or-equal sample in each stream.

        ``stamps`` must each be sorted. Returns (index [T, K] int64, valid [T, K] bool); invalid
        where a stream has no sample at or before the trigger or the sample is older than max_age.
        """
        trigger_ns = np.asarray(trigger_ns, dtype=np.int64)
        idx = np.zeros((trigger_ns.shape[0], len(stamps)), dtype=np.int64)
        valid = np.zeros_like(idx, dtype=bool)
        for k, st in enumerate(stamps):
            st = np.asarray(st, dtype=np.int64)
            i = np.searchsorted(st, trigger_ns, side="right") - 1
            ok = i >= 0
            ic = np.clip(i, 0, None)
            if st.shape[0]:
                ok &= (trigger_ns - st[np.minimum(ic, st.shape[0] - 1)]) <= max_age_ns
            else:
                ok[:] = False
            idx[:, k] = ic
            valid[:, k] = ok
        return idx, valid
