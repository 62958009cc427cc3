"""One codec per supported ROS message type, the single owner of its fields and CDR layout: spec streams, bag
import/export and the nodes convert objects and raw CDR alike, in the type's own dtype (float64 stays float64)."""

from __future__ import annotations

import array
import dataclasses
import functools
import struct
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

JOINT_STATE = "sensor_msgs/msg/JointState"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
FLOAT32_ARRAY = "std_msgs/msg/Float32MultiArray"
FLOAT64_ARRAY = "std_msgs/msg/Float64MultiArray"  # what ros2_control's forward command controllers take
IMAGE = "sensor_msgs/msg/Image"
JOINT_FIELDS = ("position", "velocity", "effort")
# A pose's selectable fields -> their components; orientation_wxyz is the quaternion in MuJoCo's
# (scalar-first) order, as simulators built on it report it.
POSE_FIELDS = {
    "position": ("x", "y", "z"),
    "orientation": ("x", "y", "z", "w"),
    "orientation_wxyz": ("w", "x", "y", "z"),
}
# Where each field's components sit in the pose's 7 float64s on the wire (position xyz, orientation xyzw).
_POSE_COLUMNS = {"position": (0, 1, 2), "orientation": (3, 4, 5, 6), "orientation_wxyz": (6, 3, 4, 5)}
# Image encodings with one byte per channel: encoding -> channels.
IMAGE_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}

MessageClasses = Callable[[str], type]
_CDR_LE = b"\x00\x01\x00\x00"
_F64 = np.dtype(np.float64)


class SpecError(ValueError):
    """The spec YAML is invalid, or a message does not match the spec."""


def normalize_type(name: str) -> str:
    """'sensor_msgs/JointState' -> 'sensor_msgs/msg/JointState'."""
    parts = str(name).strip("/").split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    return "/".join(parts)


@functools.lru_cache(maxsize=1)
def jazzy_typestore() -> Any:
    """The ROS 2 Jazzy typestore of `rosbags` (built once per process; treat it as read-only)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_JAZZY)


# ------------------------------------------------------------------------------------------ selections
class Selection(Protocol):
    """What a stream spec (spec.py) selects from its messages; codecs read only these attributes."""

    @property
    def topic(self) -> str: ...

    @property
    def dim(self) -> int: ...


class JointSelection(Selection, Protocol):
    @property
    def joints(self) -> tuple[str, ...]: ...

    @property
    def fields(self) -> tuple[str, ...]: ...

    @property
    def frame_id(self) -> str: ...


class PoseSelection(Selection, Protocol):
    @property
    def fields(self) -> tuple[str, ...]: ...

    @property
    def frame_id(self) -> str: ...


class ImageSelection(Selection, Protocol):
    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def encoding(self) -> str: ...

    @property
    def frame_id(self) -> str: ...


class ArraySelection(Selection, Protocol):
    @property
    def start(self) -> int: ...

    @property
    def stop(self) -> int: ...

    @property
    def exact(self) -> bool: ...


S = TypeVar("S", bound=Selection)


# --------------------------------------------------------------------------------------- CDR helpers
def _al(off: int, n: int) -> int:
    """Align an absolute offset to n, relative to the end of the 4-byte encapsulation header."""
    return off + (-(off - 4) % n)


def _pad(buf: bytearray, n: int) -> None:
    buf += b"\x00" * (-(len(buf) - 4) % n)


def _put_str(buf: bytearray, s: str) -> None:
    b = s.encode()
    _pad(buf, 4)
    buf += struct.pack("<I", len(b) + 1) + b + b"\x00"


def _put_header(buf: bytearray, stamp_ns: int, frame_id: str) -> None:
    buf += struct.pack("<iI", int(stamp_ns // 1_000_000_000), int(stamp_ns % 1_000_000_000))
    _put_str(buf, frame_id)


def _rows(raws: Sequence[bytes]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Group messages by byte length: {length: (message positions, [M, length] uint8 matrix)}."""
    lengths = np.fromiter(map(len, raws), dtype=np.int64, count=len(raws))
    out = {}
    for length in np.unique(lengths).tolist():
        pos = np.flatnonzero(lengths == length)
        blob = b"".join([raws[i] for i in pos.tolist()]) if pos.shape[0] != len(raws) else b"".join(raws)
        out[length] = (pos, np.frombuffer(blob, dtype=np.uint8).reshape(-1, length))
    return out


def _same_as_first(mat: np.ndarray, cols: np.ndarray) -> np.ndarray:
    sub = mat[:, cols]
    same: np.ndarray = (sub == sub[0]).all(axis=1)
    return same


def _kept(mat: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """The rows of ``mat`` where ``ok``, without a copy in the usual case of all of them."""
    return mat if ok.all() else mat[ok]


def _f64(mat: np.ndarray, off: int, n: int) -> np.ndarray:
    return np.ascontiguousarray(mat[:, off : off + 8 * n]).view("<f8").reshape(mat.shape[0], n)


def _seq(cls: type, values: np.ndarray, code: str) -> Any:
    """A primitive sequence as the message library wants it: numpy for rosbags, array.array for rclpy."""
    values = np.ascontiguousarray(values, dtype=np.dtype(code))
    return values if dataclasses.is_dataclass(cls) else array.array(code, values.tobytes())


def _header(classes: MessageClasses, stamp_ns: int, frame_id: str) -> Any:
    time_cls = classes("builtin_interfaces/msg/Time")
    stamp = time_cls(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))
    return classes("std_msgs/msg/Header")(stamp=stamp, frame_id=frame_id)


def _check_vec(vec: Any, sel: Selection) -> np.ndarray:
    out = np.asarray(vec, dtype=np.float64).reshape(-1)
    if out.shape[0] != sel.dim:
        raise SpecError(f"{sel.topic}: got {out.shape[0]} values; the spec maps {sel.dim} values to this topic")
    return out


def _check_rows(values: Any, stamps: Any, sel: Selection) -> tuple[np.ndarray, np.ndarray]:
    values, stamps = np.asarray(values), np.asarray(stamps, dtype=np.int64).reshape(-1)
    if values.ndim != 2 or values.shape[1] != sel.dim:
        raise SpecError(f"{sel.topic}: values have shape {values.shape}; expected (messages, {sel.dim})")
    if stamps.shape[0] != values.shape[0]:
        raise SpecError(
            f"{sel.topic}: {stamps.shape[0]} stamps for {values.shape[0]} rows of values; expected one stamp per row"
        )
    return values, stamps


def header_stamps_ns(raws: Sequence[bytes]) -> np.ndarray:
    """Header stamps (ns) of stamped messages (JointState, PoseStamped), vectorised, little endian."""
    head = np.frombuffer(b"".join(r[4:12] for r in raws), dtype=np.uint8).reshape(-1, 8)
    sec = head[:, :4].copy().view("<i4")[:, 0].astype(np.int64)
    nsec = head[:, 4:].copy().view("<u4")[:, 0].astype(np.int64)
    return sec * 1_000_000_000 + nsec


def encode_string(s: str) -> bytes:
    """CDR (little endian) of std_msgs/msg/String."""
    buf = bytearray(_CDR_LE)
    _put_str(buf, s)
    return bytes(buf)


def decode_string(raw: bytes) -> str:
    """The text of a little-endian std_msgs/msg/String."""
    (n,) = struct.unpack_from("<I", raw, 4)
    return raw[8 : 8 + n - 1].decode()


# ------------------------------------------------------------------------------------------- codecs
class Codec(Generic[S]):
    """One message type's conversions: message object <-> vector, raw CDR messages <-> [M, dim] matrix.

    Vectors and matrices carry the type's own element type (``dtype``), so nothing is rounded on the way
    into or out of a message; callers that feed the float32 policy cast afterwards.
    """

    type: str
    dtype: np.dtype
    has_header: bool = True

    def to_vector(self, msg: Any, sel: S) -> np.ndarray:
        """The selected values of a message object (a rosbags dataclass or an rclpy message)."""
        raise NotImplementedError

    def from_vector(self, vec: Any, sel: S, classes: MessageClasses, stamp_ns: int = 0) -> Any:
        """A message object built from ``classes`` (rosbags_classes() / ros_classes()) holding ``vec``."""
        raise NotImplementedError

    def encode_cdr(self, values: Any, stamps: Any, sel: S) -> list[bytes]:
        """Little-endian CDR of one message per row of ``values`` [M, dim], stamped ``stamps`` [M] ns."""
        raise NotImplementedError

    def decode_cdr(self, raws: Sequence[bytes], sel: S, typestore: Any = None) -> np.ndarray:
        """Raw CDR messages -> [M, dim] with numpy.

        Messages sharing one layout with the first of their byte length are decoded in one vectorised
        step, the rest one by one; big-endian messages go through rosbags' deserializer (``typestore``).
        """
        out = np.empty((len(raws), sel.dim), dtype=self.dtype)
        for pos, mat in _rows(raws).values():
            le = mat[:, 1] == 1
            if not le.all():
                ts = typestore or jazzy_typestore()
                for i in pos[~le].tolist():
                    out[i] = self.to_vector(ts.deserialize_cdr(raws[i], self.type), sel)
                pos, mat = pos[le], mat[le]
                if not pos.shape[0]:
                    continue
            ok, vals = self._decode_rows(mat, sel)
            out[pos[ok]] = vals
            for i in pos[~ok].tolist():
                out[i] = self._decode_one(raws[i], sel)
        return out

    def _decode_rows(self, mat: np.ndarray, sel: S) -> tuple[np.ndarray, np.ndarray]:
        """Fast path over little-endian messages of one length: (rows it decoded [M] bool, their values)."""
        raise NotImplementedError

    def _decode_one(self, raw: bytes, sel: S) -> np.ndarray:
        """Slow path: one little-endian message of any layout."""
        raise NotImplementedError


class JointStateCodec(Codec[JointSelection]):
    """sensor_msgs/msg/JointState: named joints' values, field-major (all positions, then velocities...)."""

    type = JOINT_STATE
    dtype = _F64

    def _joint_index(self, names: Sequence[str], sel: JointSelection) -> np.ndarray:
        pos = {n: i for i, n in enumerate(names)}
        missing = [j for j in sel.joints if j not in pos]
        if missing:
            raise SpecError(f"JointState on {sel.topic} has no joint(s) {missing}; it has {list(names)}")
        return np.array([pos[j] for j in sel.joints], dtype=np.int64)

    def _check_count(self, sel: JointSelection, field: str, n: int, joints: int) -> None:
        if n != joints:
            raise SpecError(
                f"JointState on {sel.topic}: {field} has {n} values for {joints} joints; "
                f"the spec needs {field} of {list(sel.joints)}"
            )

    def to_vector(self, msg: Any, sel: JointSelection) -> np.ndarray:
        idx = self._joint_index(msg.name, sel)
        out = np.empty(sel.dim, dtype=self.dtype)
        k = len(sel.joints)
        for i, f in enumerate(sel.fields):
            vals = np.asarray(getattr(msg, f), dtype=self.dtype)
            self._check_count(sel, f, vals.shape[0], len(msg.name))
            out[i * k : (i + 1) * k] = vals[idx]
        return out

    def from_vector(self, vec: Any, sel: JointSelection, classes: MessageClasses, stamp_ns: int = 0) -> Any:
        cls = classes(self.type)
        vec = _check_vec(vec, sel)
        k = len(sel.joints)
        arrays = {f: _seq(cls, np.zeros(0), "d") for f in JOINT_FIELDS}
        for i, f in enumerate(sel.fields):
            arrays[f] = _seq(cls, vec[i * k : (i + 1) * k], "d")
        return cls(header=_header(classes, stamp_ns, sel.frame_id), name=list(sel.joints), **arrays)

    def encode_cdr(self, values: Any, stamps: Any, sel: JointSelection) -> list[bytes]:
        values, stamps = _check_rows(values, stamps, sel)
        k = len(sel.joints)
        out = []
        for row, stamp in zip(values.astype("<f8"), stamps.tolist(), strict=True):
            buf = bytearray(_CDR_LE)
            _put_header(buf, stamp, sel.frame_id)
            _pad(buf, 4)
            buf += struct.pack("<I", k)
            for name in sel.joints:
                _put_str(buf, name)
            for f in JOINT_FIELDS:  # unselected fields are written empty
                vals = row[sel.fields.index(f) * k :][:k] if f in sel.fields else row[:0]
                _pad(buf, 4)
                buf += struct.pack("<I", vals.shape[0])
                if vals.shape[0]:
                    _pad(buf, 8)
                    buf += vals.tobytes()
            out.append(bytes(buf))
        return out

    @staticmethod
    def _parse(raw: bytes) -> tuple[list[str], list[tuple[int, int]], int]:
        """(names, [(data offset, count) for position/velocity/effort], offset of the names block)."""
        (flen,) = struct.unpack_from("<I", raw, 12)
        off = _al(16 + flen, 4)
        names_at = off
        (nn,) = struct.unpack_from("<I", raw, off)
        off += 4
        names = []
        for _ in range(nn):
            off = _al(off, 4)
            (sl,) = struct.unpack_from("<I", raw, off)
            names.append(raw[off + 4 : off + 3 + sl].decode())
            off += 4 + sl
        fields = []
        for _ in JOINT_FIELDS:
            off = _al(off, 4)
            (n,) = struct.unpack_from("<I", raw, off)
            off += 4
            if n:
                off = _al(off, 8)
            if off + 8 * n > len(raw):
                raise ValueError(f"JointState claims {n} values but the message has {len(raw)} bytes")
            fields.append((off, n))
            off += 8 * n
        return names, fields, names_at

    def _decode_rows(self, mat: np.ndarray, sel: JointSelection) -> tuple[np.ndarray, np.ndarray]:
        names, fields, names_at = self._parse(mat[0].tobytes())
        data_end = max(o + 8 * n for o, n in fields)
        # structural bytes: frame-id length, names block and the three counts
        skip = np.zeros(mat.shape[1], bool)
        for o, n in fields:
            skip[o : o + 8 * n] = True
        cols = np.concatenate([np.arange(12, 16), np.flatnonzero(~skip[names_at:data_end]) + names_at])
        ok = _same_as_first(mat, cols)
        idx = self._joint_index(names, sel)
        k = len(sel.joints)
        sub = _kept(mat, ok)
        vals = np.empty((sub.shape[0], sel.dim), dtype=self.dtype)
        for j, f in enumerate(sel.fields):
            o, n = fields[JOINT_FIELDS.index(f)]
            self._check_count(sel, f, n, len(names))
            vals[:, j * k : (j + 1) * k] = _f64(sub, o, n)[:, idx]
        return ok, vals

    def _decode_one(self, raw: bytes, sel: JointSelection) -> np.ndarray:
        names, fields, _ = self._parse(raw)
        arrays = {f: np.frombuffer(raw, "<f8", n, o) for f, (o, n) in zip(JOINT_FIELDS, fields, strict=True)}
        return self.to_vector(SimpleNamespace(name=names, **arrays), sel)


class PoseStampedCodec(Codec[PoseSelection]):
    """geometry_msgs/msg/PoseStamped: position xyz and/or orientation quaternion xyzw."""

    type = POSE_STAMPED
    dtype = _F64
    _FULL = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])  # xyz, xyzw: what unselected fields are written as

    @staticmethod
    def _columns(sel: PoseSelection) -> list[int]:
        """Where the selected values sit in the pose's 7 float64s (position xyz, orientation xyzw)."""
        return [c for f in sel.fields for c in _POSE_COLUMNS[f]]

    def to_vector(self, msg: Any, sel: PoseSelection) -> np.ndarray:
        p, q = msg.pose.position, msg.pose.orientation
        full = np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w], dtype=self.dtype)
        return full[self._columns(sel)]

    def from_vector(self, vec: Any, sel: PoseSelection, classes: MessageClasses, stamp_ns: int = 0) -> Any:
        full = self._FULL.copy()
        full[self._columns(sel)] = _check_vec(vec, sel)
        point = classes("geometry_msgs/msg/Point")(**{c: float(v) for c, v in zip("xyz", full[:3], strict=True)})
        quat = classes("geometry_msgs/msg/Quaternion")(**{c: float(v) for c, v in zip("xyzw", full[3:], strict=True)})
        pose = classes("geometry_msgs/msg/Pose")(position=point, orientation=quat)
        return classes(self.type)(header=_header(classes, stamp_ns, sel.frame_id), pose=pose)

    def encode_cdr(self, values: Any, stamps: Any, sel: PoseSelection) -> list[bytes]:
        values, stamps = _check_rows(values, stamps, sel)
        full = np.tile(self._FULL, (values.shape[0], 1)).astype("<f8")
        full[:, self._columns(sel)] = values
        out = []
        for row, stamp in zip(full, stamps.tolist(), strict=True):
            buf = bytearray(_CDR_LE)
            _put_header(buf, stamp, sel.frame_id)
            _pad(buf, 8)
            buf += row.tobytes()
            out.append(bytes(buf))
        return out

    def _decode_rows(self, mat: np.ndarray, sel: PoseSelection) -> tuple[np.ndarray, np.ndarray]:
        (flen,) = struct.unpack_from("<I", mat[0, 12:16].tobytes())
        ok = _same_as_first(mat, np.arange(12, 16))
        return ok, _f64(_kept(mat, ok), _al(16 + flen, 8), 7)[:, self._columns(sel)]

    def _decode_one(self, raw: bytes, sel: PoseSelection) -> np.ndarray:
        (flen,) = struct.unpack_from("<I", raw, 12)
        return np.frombuffer(raw, "<f8", 7, _al(16 + flen, 8))[self._columns(sel)]


class MultiArrayCodec(Codec[ArraySelection]):
    """std_msgs/msg/Float32MultiArray ('f') or Float64MultiArray ('d'): a slice of ``data``, layout ignored."""

    has_header = False

    def __init__(self, type_name: str, code: str) -> None:
        if code not in ("f", "d"):
            raise ValueError(f"element type code {code!r} for {type_name}: expected 'f' (float32) or 'd' (float64)")
        self.type = type_name
        self.code = code
        self.dtype = np.dtype(code)
        self._wire = self.dtype.newbyteorder("<")

    @property
    def _name(self) -> str:
        return self.type.rsplit("/", 1)[-1]

    @staticmethod
    def _fits(n: int, sel: ArraySelection) -> bool:
        return n >= sel.stop and (not sel.exact or n == sel.stop)

    def _select(self, data: np.ndarray, sel: ArraySelection) -> np.ndarray:
        n = data.shape[0]
        if not self._fits(n, sel):
            want = f"exactly {sel.stop}" if sel.exact else f"at least {sel.stop}"
            raise SpecError(f"{self._name} on {sel.topic} has {n} values; the spec expects {want}")
        return np.array(data[sel.start : sel.stop], dtype=self.dtype)

    def to_vector(self, msg: Any, sel: ArraySelection) -> np.ndarray:
        return self._select(np.asarray(msg.data, dtype=self.dtype), sel)

    def from_vector(self, vec: Any, sel: ArraySelection, classes: MessageClasses, stamp_ns: int = 0) -> Any:
        cls = classes(self.type)
        data = np.zeros(sel.stop, dtype=self.dtype)
        data[sel.start :] = _check_vec(vec, sel)
        layout = classes("std_msgs/msg/MultiArrayLayout")(dim=[], data_offset=0)
        return cls(layout=layout, data=_seq(cls, data, self.code))

    def _data_start(self) -> int:
        """Offset of ``data`` in a message with an empty layout: after dim count, data_offset, length."""
        return _al(16, self._wire.itemsize)

    def encode_cdr(self, values: Any, stamps: Any, sel: ArraySelection) -> list[bytes]:
        values, _ = _check_rows(values, stamps, sel)
        head = bytearray(_CDR_LE + struct.pack("<III", 0, 0, sel.stop))
        _pad(head, self._wire.itemsize)
        data = np.zeros((values.shape[0], sel.stop), dtype=self._wire)
        data[:, sel.start :] = values
        rows = np.broadcast_to(np.frombuffer(bytes(head), dtype=np.uint8), (values.shape[0], len(head)))
        return list(map(bytes, np.concatenate([rows, data.view(np.uint8)], axis=1)))

    def _parse(self, raw: bytes) -> np.ndarray:
        off = 4
        (ndim,) = struct.unpack_from("<I", raw, off)
        off += 4
        for _ in range(ndim):
            off = _al(off, 4)
            (slen,) = struct.unpack_from("<I", raw, off)
            off = _al(off + 4 + slen, 4) + 8  # label, size, stride
        off = _al(off, 4) + 4  # data_offset
        (n,) = struct.unpack_from("<I", raw, off)
        off += 4
        if n:
            off = _al(off, self._wire.itemsize)
        if off + self._wire.itemsize * n > len(raw):
            raise ValueError(f"{self._name} claims {n} values but the message has {len(raw)} bytes")
        return np.frombuffer(raw, self._wire, n, off)

    def _decode_rows(self, mat: np.ndarray, sel: ArraySelection) -> tuple[np.ndarray, np.ndarray]:
        start = self._data_start()
        n, rest = divmod(mat.shape[1] - start, self._wire.itemsize)
        if rest or not self._fits(n, sel):
            return np.zeros(mat.shape[0], bool), np.empty((0, sel.dim), self.dtype)
        counts = mat[:, 4:16].view("<u4")  # dims, data_offset, data length
        ok = (counts[:, 0] == 0) & (counts[:, 2] == n)
        return ok, np.ascontiguousarray(_kept(mat, ok)[:, start:]).view(self._wire)[:, sel.start : sel.stop]

    def _decode_one(self, raw: bytes, sel: ArraySelection) -> np.ndarray:
        return self._select(self._parse(raw), sel)


class ImageCodec(Codec[ImageSelection]):
    """sensor_msgs/msg/Image with one byte per channel (``IMAGE_ENCODINGS``): every pixel, row-major, channels
    interleaved (height * width * channels uint8 values). A message of another size or encoding is refused;
    rows padded beyond ``width * channels`` bytes (``step``) are read without their padding."""

    type = IMAGE
    dtype = np.dtype(np.uint8)

    @staticmethod
    def channels(sel: ImageSelection) -> int:
        return IMAGE_ENCODINGS[sel.encoding]

    def _check(self, sel: ImageSelection, height: int, width: int, encoding: str, step: int, size: int) -> None:
        if (height, width, encoding) != (sel.height, sel.width, sel.encoding):
            raise SpecError(
                f"Image on {sel.topic} is {width}x{height} {encoding}; the spec expects {sel.width}x{sel.height} {sel.encoding}"
            )
        row = width * self.channels(sel)
        if step < row or size < step * height:
            raise SpecError(
                f"Image on {sel.topic}: step {step} and {size} data bytes do not hold {height} rows of {row}"
            )

    def _pixels(self, data: Any, step: int, sel: ImageSelection) -> np.ndarray:
        buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8) if not isinstance(data, np.ndarray) else data
        row = sel.width * self.channels(sel)
        rows = np.asarray(buf[: step * sel.height], dtype=np.uint8).reshape(sel.height, step)
        return np.ascontiguousarray(rows[:, :row]).reshape(-1)

    def to_vector(self, msg: Any, sel: ImageSelection) -> np.ndarray:
        data = msg.data
        self._check(sel, int(msg.height), int(msg.width), str(msg.encoding), int(msg.step), len(data))
        return self._pixels(data, int(msg.step), sel)

    @staticmethod
    def _bytes(vec: Any, sel: Selection) -> np.ndarray:
        vals = np.asarray(vec).reshape(-1)
        if vals.shape[0] != sel.dim:
            raise SpecError(f"{sel.topic}: got {vals.shape[0]} values; the spec maps {sel.dim} values to this topic")
        if vals.dtype != np.uint8:
            if not (np.isfinite(vals).all() and (vals >= 0).all() and (vals <= 255).all()):
                raise SpecError(f"{sel.topic}: pixel values must lie in 0..255")
            vals = np.rint(vals).astype(np.uint8)
        return vals

    def from_vector(self, vec: Any, sel: ImageSelection, classes: MessageClasses, stamp_ns: int = 0) -> Any:
        cls = classes(self.type)
        data = self._bytes(vec, sel)
        return cls(
            header=_header(classes, stamp_ns, sel.frame_id),
            height=sel.height,
            width=sel.width,
            encoding=sel.encoding,
            is_bigendian=0,
            step=sel.width * self.channels(sel),
            data=_seq(cls, data, "B"),
        )

    def encode_cdr(self, values: Any, stamps: Any, sel: ImageSelection) -> list[bytes]:
        values, stamps = _check_rows(values, stamps, sel)
        out = []
        for row, stamp in zip(values, stamps.tolist(), strict=True):
            buf = bytearray(_CDR_LE)
            _put_header(buf, stamp, sel.frame_id)
            _pad(buf, 4)
            buf += struct.pack("<II", sel.height, sel.width)
            _put_str(buf, sel.encoding)
            buf += b"\x00"  # is_bigendian
            _pad(buf, 4)
            buf += struct.pack("<II", sel.width * self.channels(sel), sel.dim)
            buf += self._bytes(row, sel).tobytes()
            out.append(bytes(buf))
        return out

    def _decode_rows(self, mat: np.ndarray, sel: ImageSelection) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(mat.shape[0], bool), np.empty((0, sel.dim), self.dtype)  # images go one by one

    def _decode_one(self, raw: bytes, sel: ImageSelection) -> np.ndarray:
        (flen,) = struct.unpack_from("<I", raw, 12)
        off = _al(16 + flen, 4)
        height, width, elen = struct.unpack_from("<III", raw, off)
        encoding = bytes(raw[off + 12 : off + 11 + elen]).decode()
        off += 12 + elen + 1  # the string, then is_bigendian
        off = _al(off, 4)
        step, n = struct.unpack_from("<II", raw, off)
        off += 8
        if off + n > len(raw):
            raise ValueError(f"Image claims {n} data bytes but the message has {len(raw)} bytes")
        self._check(sel, height, width, encoding, step, n)
        return self._pixels(np.frombuffer(raw, np.uint8, n, off), step, sel)


CODECS: dict[str, Codec[Any]] = {
    c.type: c
    for c in (
        JointStateCodec(),
        PoseStampedCodec(),
        MultiArrayCodec(FLOAT32_ARRAY, "f"),
        MultiArrayCodec(FLOAT64_ARRAY, "d"),
        ImageCodec(),
    )
}


def codec_for(type_name: str) -> Codec[Any]:
    """The codec of a message type ('pkg/msg/Name' or 'pkg/Name')."""
    try:
        return CODECS[normalize_type(type_name)]
    except KeyError:
        raise SpecError(f"no codec for message type {type_name!r}; supported: {list(CODECS)}") from None
