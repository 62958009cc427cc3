"""The G1's head camera: real offscreen frames (OSMesa), what they show, and a control loop it never holds up.

Skipped, with the reason, where no offscreen OpenGL is available (Debian/Ubuntu: apt-get install libosmesa6).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from lifelong_ros.sim.humanoid.env import G1Sim


def _camera_or_skip():
    from lifelong_ros.sim.humanoid.camera import CameraSettings, HeadCamera

    try:
        return HeadCamera(CameraSettings(gl="osmesa"))
    except Exception as exc:  # noqa: BLE001 - no libOSMesa, or PyOpenGL cannot load it
        pytest.skip(f"no offscreen OpenGL (OSMesa) here: {type(exc).__name__}: {exc} (apt-get install libosmesa6)")


@pytest.fixture(scope="module")
def sim():
    return G1Sim("g1-lift")


def _colour_fraction(img: np.ndarray, rgb: tuple[float, float, float]) -> float:
    """Fraction of pixels whose hue matches ``rgb`` (scaled: shading changes brightness, not the ratio)."""
    px = img.reshape(-1, 3).astype(np.float64) + 1.0
    want = np.asarray(rgb) + 0.01
    ratio = (px / px.sum(1, keepdims=True)) - want / want.sum()
    return float((np.abs(ratio).max(1) < 0.06).mean())


def _seed_with(sim: G1Sim, kind: str) -> int:
    from lifelong_ros.sim.humanoid import tasks as T

    return next(s for s in range(100) if T.sample(sim.spec, s).kind == kind)


def test_frames_show_the_object_of_the_variation_and_the_moving_arm(sim):
    from lifelong_ros.sim.humanoid.camera import Snapshot
    from lifelong_ros.sim.humanoid.scene import OBJECT_TYPES

    cam = _camera_or_skip()
    try:
        red, blue = OBJECT_TYPES["cube"][3][:3], OBJECT_TYPES["cylinder"][3][:3]
        sim.reset(_seed_with(sim, "cube"))
        cube = cam.render(Snapshot.of(sim.data, 0))
        assert cube.shape == (96, 128, 3) and cube.dtype == np.uint8
        sim.reset(_seed_with(sim, "cylinder"))
        cylinder = cam.render(Snapshot.of(sim.data, 0))
        assert _colour_fraction(cube, red) > 0.001 > _colour_fraction(cylinder, red)
        assert _colour_fraction(cylinder, blue) > 0.001 > _colour_fraction(cube, blue)
        np.testing.assert_array_equal(cam.render(Snapshot.of(sim.data, 0)), cylinder)  # deterministic
        for _ in range(25):  # raise the arm: the picture changes
            sim.step(np.r_[np.zeros(3), -1.0, np.zeros(13)])
        moved = cam.render(Snapshot.of(sim.data, 0))
        assert np.abs(moved.astype(int) - cylinder.astype(int)).sum(-1).astype(bool).mean() > 0.01
    finally:
        cam.close()


def test_camera_thread_keeps_its_rate_and_never_holds_up_the_loop(sim):
    from lifelong_ros.sim.humanoid.camera import CameraSettings, CameraThread, Snapshot

    _camera_or_skip().close()
    frames: list[tuple[np.ndarray, int]] = []
    cam = CameraThread(CameraSettings(gl="osmesa"), 10.0, lambda img, t: frames.append((img, t))).start()
    try:
        assert cam.wait_ready(60) and not cam.stats.last_error
        sim.reset(3)
        offer_s, t0, k = [], time.monotonic(), 0
        while time.monotonic() - t0 < 2.0:  # a 50 Hz loop offering every step
            sim.step(np.zeros(17))
            t = time.perf_counter()
            cam.offer(Snapshot.of(sim.data, k))
            offer_s.append(time.perf_counter() - t)
            k += 1
            time.sleep(0.02)
    finally:
        cam.stop()
    assert not cam._thread.is_alive()
    assert 8 <= len(frames) <= 22, len(frames)  # 10 frames/s for 2 s, give or take start-up
    assert max(offer_s) < 0.005  # a copy under a lock, nothing rendered on the loop's thread
    stamps = [t for _, t in frames]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert threading.active_count() >= 1


def test_settings_are_checked():
    from lifelong_ros.sim.humanoid.camera import CameraSettings, CameraThread

    with pytest.raises(ValueError, match="geom groups"):
        CameraSettings(geom_groups=(9,)).check()
    with pytest.raises(ValueError, match="OpenGL backend"):
        CameraSettings(gl="vulkan").check()
    with pytest.raises(ValueError, match="camera rate"):
        CameraThread(CameraSettings(), 0.0, lambda i, t: None)


def test_camera_model_has_the_physics_models_state_layout():
    from lifelong_ros.sim.humanoid.camera import PROXY_GROUP, camera_model
    from lifelong_ros.sim.humanoid.scene import HEAD_CAMERA, g1_model

    full, cam = g1_model(), camera_model()
    assert (cam.nq, cam.nmocap, cam.nbody) == (full.nq, full.nmocap, full.nbody)
    assert (cam.geom_group == PROXY_GROUP).sum() > 20
    assert full.camera(HEAD_CAMERA).id >= 0
