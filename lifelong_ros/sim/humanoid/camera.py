"""The G1's head camera, rendered offscreen (OSMesa or EGL), off the control loop.

``HeadCamera`` renders ``scene.HEAD_CAMERA`` from a state snapshot (qpos and mocap poses copied from
the simulator's ``MjData``) into an RGB uint8 image. It has its own model (``camera_model``: the
scene plus a low-poly proxy of the robot) and its own ``MjData``, so it never touches the physics.

What a frame costs on a CPU (llvmpipe) is the robot's visual meshes (630k triangles, 0.17-0.23 s a
frame whatever the resolution); the table, the objects and a box per robot link are ~1 % of that.
So the default draws geom groups 0 (table, objects, floor) and ``PROXY_GROUP`` (a box around each
of the arms' and hands' visual meshes), without shadows, reflections or multisampling; ``geom_groups=(0, 2)``
draws the real meshes. ``bench/camera.py`` measures each setting.

``CameraThread`` is how a control loop uses it: ``offer(snapshot)`` from the loop only stores the
newest snapshot (a few microseconds); a thread of its own, at lower priority, renders the newest one
at most ``rate_hz`` times a second and hands the image to ``on_frame``. The renderer releases the
GIL while it draws, so the loop is never held up by a frame; when a frame takes longer than the
period the camera's rate drops (``stats``), not the loop's.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import mujoco
import numpy as np

from lifelong_ros.sim.humanoid.scene import HEAD_CAMERA, build_spec, g1_model

PROXY_GROUP = 5  # MuJoCo's viewer hides groups 3-5 by default
# The links the head camera sees (the arms and hands) get a proxy; the torso (the camera sits in the
# head's bounding box) and the legs do not.
PROXY_LINKS = ("shoulder", "elbow", "wrist", "hand")
DEFAULT_GEOM_GROUPS = (0, PROXY_GROUP)
GL_BACKENDS = ("osmesa", "egl", "glfw")
_VISUAL_GROUP = 2


@dataclass(frozen=True)
class Snapshot:
    """What the camera needs of a simulator state: joint positions and the mocap bodies' poses."""

    stamp_ns: int
    qpos: np.ndarray
    mocap_pos: np.ndarray
    mocap_quat: np.ndarray

    @classmethod
    def of(cls, data: mujoco.MjData, stamp_ns: int) -> Snapshot:
        return cls(int(stamp_ns), data.qpos.copy(), data.mocap_pos.copy(), data.mocap_quat.copy())


def _rotate(quat: np.ndarray, v: np.ndarray) -> np.ndarray:
    out = np.zeros(3)
    mujoco.mju_rotVecQuat(out, np.asarray(v, np.float64), np.asarray(quat, np.float64))
    return out


@functools.cache
def camera_model() -> mujoco.MjModel:
    """The scene for rendering: ``build_spec()`` plus, in geom group ``PROXY_GROUP``, a box around each
    visual mesh of the arms and hands (the mesh's bounding box in its own frame, the mesh's colour). Same bodies,
    joints and mocap bodies as ``g1_model()``, so a snapshot of the physics applies as is. Never simulated."""
    full = g1_model()
    spec = build_spec()
    for g in range(full.ngeom):
        if full.geom_type[g] != mujoco.mjtGeom.mjGEOM_MESH or full.geom_group[g] != _VISUAL_GROUP:
            continue
        body = full.body(full.geom_bodyid[g]).name
        if not any(k in body for k in PROXY_LINKS):
            continue
        mat = full.geom_matid[g]
        rgba = full.mat_rgba[mat] if mat >= 0 else full.geom_rgba[g]
        center, half = full.geom_aabb[g, :3], full.geom_aabb[g, 3:]
        spec.body(body).add_geom(
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[float(h) for h in half],
            pos=list(full.geom_pos[g] + _rotate(full.geom_quat[g], center)),
            quat=list(full.geom_quat[g]),
            rgba=[float(c) for c in rgba],
            group=PROXY_GROUP,
            contype=0,
            conaffinity=0,
            mass=0.0,
        )
    model = spec.compile()
    if (model.nq, model.nmocap) != (full.nq, full.nmocap):
        raise RuntimeError("camera_model: the camera's scene does not match the simulator's")
    return model


def gl_backend(name: str | None = None) -> str:
    """The OpenGL backend to render with: ``name``, else $MUJOCO_GL when it names one, else osmesa."""
    name = (name or os.environ.get("MUJOCO_GL", "") or "osmesa").lower()
    if name not in GL_BACKENDS:
        raise ValueError(f"OpenGL backend {name!r}: expected one of {GL_BACKENDS}")
    return name


def _gl_context(backend: str, width: int, height: int) -> Any:
    """An OpenGL context of ``backend`` (imported only when asked: each loads its own system library)."""
    import importlib

    return importlib.import_module(f"mujoco.{backend}").GLContext(width, height)


@dataclass(frozen=True)
class CameraSettings:
    width: int = 128
    height: int = 96
    geom_groups: tuple[int, ...] = DEFAULT_GEOM_GROUPS
    shadows: bool = False
    reflections: bool = False
    multisamples: int = 0  # MSAA samples of the offscreen buffer (MuJoCo's default is 4)
    gl: str | None = None  # osmesa | egl | glfw; None = $MUJOCO_GL, else osmesa

    def check(self) -> CameraSettings:
        if not (0 < self.width <= 4096 and 0 < self.height <= 4096):
            raise ValueError(f"camera size {self.width}x{self.height}: expected 1..4096 pixels each way")
        bad = [g for g in self.geom_groups if not 0 <= g < mujoco.mjNGROUP]
        if bad or not self.geom_groups:
            raise ValueError(f"camera geom groups {list(self.geom_groups)}: expected some of 0..{mujoco.mjNGROUP - 1}")
        if not 0 <= self.multisamples <= 16:
            raise ValueError(f"camera multisamples {self.multisamples}: expected 0..16")
        gl_backend(self.gl)
        return self


class HeadCamera:
    """Renders the head camera from snapshots. Create, use and close it on ONE thread (its GL context is
    bound to the thread that created it)."""

    def __init__(self, settings: CameraSettings | None = None) -> None:
        self.settings = s = (settings or CameraSettings()).check()
        model = camera_model()
        self.model = model = _copy_model(model, s)
        self.data = mujoco.MjData(model)
        self.backend = gl_backend(s.gl)
        self._gl = _gl_context(self.backend, s.width, s.height)
        self._gl.make_current()
        self._ctx = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_50)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._ctx)
        self._scene = mujoco.MjvScene(model, maxgeom=max(200, 2 * model.ngeom))
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = int(s.shadows)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(s.reflections)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = 0
        self._opt = mujoco.MjvOption()
        self._opt.geomgroup[:] = [int(g in s.geom_groups) for g in range(mujoco.mjNGROUP)]
        self._opt.sitegroup[:] = 0
        self._cam = mujoco.MjvCamera()
        self._cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._cam.fixedcamid = model.camera(HEAD_CAMERA).id
        self._viewport = mujoco.MjrRect(0, 0, s.width, s.height)
        self._rgb = np.empty((s.height, s.width, 3), dtype=np.uint8)

    def render(self, snap: Snapshot) -> np.ndarray:
        """An RGB uint8 image [height, width, 3], top row first, of the state ``snap``."""
        m, d = self.model, self.data
        d.qpos[:] = snap.qpos
        d.mocap_pos[:] = snap.mocap_pos
        d.mocap_quat[:] = snap.mocap_quat
        mujoco.mj_kinematics(m, d)
        mujoco.mj_camlight(m, d)
        self._gl.make_current()
        mujoco.mjv_updateScene(m, d, self._opt, None, self._cam, mujoco.mjtCatBit.mjCAT_ALL, self._scene)
        mujoco.mjr_render(self._viewport, self._scene, self._ctx)
        mujoco.mjr_readPixels(self._rgb, None, self._viewport, self._ctx)
        return np.flipud(self._rgb).copy()

    def close(self) -> None:
        if self._gl is not None:
            self._ctx.free()
            self._gl.free()
            self._gl = None


def _copy_model(model: mujoco.MjModel, s: CameraSettings) -> mujoco.MjModel:
    import copy

    m = copy.copy(model)
    m.vis.global_.offwidth = max(s.width, 1)
    m.vis.global_.offheight = max(s.height, 1)
    m.vis.quality.offsamples = s.multisamples
    return m


@dataclass
class CameraStats:
    frames: int = 0
    errors: int = 0
    render_s: list[float] = field(default_factory=list)  # the last 200 frames' render times
    last_error: str = ""

    def summary(self) -> dict[str, float | int | str]:
        r = np.asarray(self.render_s) if self.render_s else np.zeros(1)
        return {
            "frames": self.frames,
            "errors": self.errors,
            "render_ms_p50": round(float(np.median(r)) * 1e3, 2),
            "render_ms_p99": round(float(np.percentile(r, 99)) * 1e3, 2),
            "last_error": self.last_error,
        }


class CameraThread:
    """Renders the newest offered snapshot at most ``rate_hz`` times a second on its own thread.

    ``offer`` is all the control loop calls (it stores a reference; nothing is rendered on the caller's
    thread). ``on_frame(image, stamp_ns)`` runs on the camera thread with each new frame; a snapshot is
    rendered once (no new state, no new frame). ``nice`` lowers the thread's priority (Linux: per thread).
    """

    def __init__(
        self,
        settings: CameraSettings,
        rate_hz: float,
        on_frame: Callable[[np.ndarray, int], None],
        nice: int = 5,
        make_camera: Callable[[CameraSettings], HeadCamera] = HeadCamera,
    ) -> None:
        if not rate_hz > 0:
            raise ValueError(f"camera rate {rate_hz!r}: expected frames per second > 0")
        self.settings = settings.check()
        self.period = 1.0 / rate_hz
        self.stats = CameraStats()
        self._on_frame = on_frame
        self._nice = nice
        self._make = make_camera
        self._lock = threading.Lock()
        self._snap: Snapshot | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="head_camera", daemon=True)

    def start(self) -> CameraThread:
        self._thread.start()
        return self

    def wait_ready(self, timeout: float) -> bool:
        """True once the camera thread has built its renderer (or failed: see ``stats.last_error``)."""
        return self._ready.wait(timeout)

    def offer(self, snap: Snapshot) -> None:
        with self._lock:
            self._snap = snap

    def _take(self) -> Snapshot | None:
        with self._lock:
            snap, self._snap = self._snap, None
        return snap

    def _run(self) -> None:
        if self._nice:
            try:
                os.setpriority(
                    os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + self._nice
                )
            except (OSError, AttributeError):
                pass
        try:
            camera = self._make(self.settings)
        except Exception as exc:  # noqa: BLE001 - no GL: reported in stats, the loop goes on without a camera
            self.stats.errors += 1
            self.stats.last_error = f"cannot start the camera: {type(exc).__name__}: {exc}"
            self._ready.set()
            return
        self._ready.set()
        try:
            next_t = time.monotonic()
            while not self._stop.is_set():
                snap = self._take()
                if snap is not None:
                    t0 = time.perf_counter()
                    try:
                        image = camera.render(snap)
                        self.stats.render_s = [*self.stats.render_s[-199:], time.perf_counter() - t0]
                        self.stats.frames += 1
                        self._on_frame(image, snap.stamp_ns)
                    except Exception as exc:  # noqa: BLE001 - a frame (or its publish) failed: counted, the next one is tried
                        self.stats.errors += 1
                        self.stats.last_error = f"{type(exc).__name__}: {exc}"
                next_t = max(next_t + self.period, time.monotonic())
                self._stop.wait(max(0.0, next_t - time.monotonic()))
        finally:
            camera.close()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


def render_settings_grid() -> Sequence[tuple[str, CameraSettings]]:
    """The settings bench/camera.py compares, from MuJoCo's defaults to the camera's default."""
    return (
        (
            "meshes, shadows+reflections, 4x MSAA (MuJoCo's defaults)",
            CameraSettings(geom_groups=(0, 1, 2), shadows=True, reflections=True, multisamples=4),
        ),
        ("meshes, no shadows/reflections, no MSAA", CameraSettings(geom_groups=(0, 1, 2))),
        ("proxies (default)", CameraSettings()),
        ("proxies, 4x MSAA", CameraSettings(multisamples=4)),
        ("proxies, 320x240", CameraSettings(width=320, height=240)),
    )
