"""The G1 head camera's render time and frame rate per setting, offscreen (OSMesa/llvmpipe by default).

Renders ``--frames`` frames of a G1 episode in motion (the g1-lift expert, one frame per control step)
with each setting, from MuJoCo's defaults (the robot's visual meshes, shadows, reflections, 4x
multisampling) to the camera's default (table and objects plus low-poly proxies of the arms and
hands, no shadows, reflections or multisampling), and prints ONE JSON object: per setting the median
and p99 render time (state upload, scene update, draw, read-back) and the frames/s that allows.
Then the control loop with the camera on its thread (``CameraThread``, as sim_bridge runs it): the
G1 expert stepping at 50 Hz for ``--loop-s`` seconds with no camera, with the default camera at
``--rate`` frames/s and with the real meshes at that rate: steps/s reached, per-step time
(expert + physics + the snapshot offered to the camera) median/p99, and frames delivered.

    MUJOCO_GL=osmesa python bench/camera.py                # every setting, 60 frames each
    python bench/camera.py --frames 200 --gl egl           # another backend
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict

import numpy as np

from lifelong_ros.sim.humanoid.camera import (
    CameraSettings,
    CameraThread,
    HeadCamera,
    Snapshot,
    gl_backend,
    render_settings_grid,
)
from lifelong_ros.sim.humanoid.env import G1Sim


def states(frames: int) -> list[Snapshot]:
    sim = G1Sim("g1-lift", steps_after_success=0)
    expert = sim.expert()
    obs, out = sim.reset(10_000), []
    while len(out) < frames:
        obs, _, done, _ = sim.step(expert(obs))
        out.append(Snapshot.of(sim.data, len(out)))
        if done:
            obs = sim.reset(10_000 + len(out))
    return out


def control_loop(seconds: float, settings: CameraSettings | None, rate: float, hz: float = 50.0) -> dict:
    """The G1 expert at ``hz`` for ``seconds`` with (or without) the camera thread."""
    sim = G1Sim("g1-lift", steps_after_success=0)
    expert = sim.expert()
    frames = [0]
    cam = None
    if settings is not None:
        cam = CameraThread(settings, rate, lambda img, t: frames.__setitem__(0, frames[0] + 1)).start()
        cam.wait_ready(120)
    obs, seed = sim.reset(20_000), 20_000
    step_s, period = [], 1.0 / hz
    t0 = next_t = time.monotonic()
    while time.monotonic() - t0 < seconds:
        t = time.perf_counter()
        obs, _, done, _ = sim.step(expert(obs))
        if cam is not None:
            cam.offer(Snapshot.of(sim.data, len(step_s)))
        if done:
            seed += 1
            obs = sim.reset(seed)
        step_s.append(time.perf_counter() - t)
        next_t += period
        time.sleep(max(0.0, next_t - time.monotonic()))
    elapsed = time.monotonic() - t0
    if cam is not None:
        cam.stop()
    r = np.asarray(step_s)
    return {
        "camera": "off" if settings is None else f"{list(settings.geom_groups)} at {rate:g} Hz",
        "steps_per_s": round(len(step_s) / elapsed, 1),
        "step_ms_median": round(float(np.median(r)) * 1e3, 2),
        "step_ms_p99": round(float(np.percentile(r, 99)) * 1e3, 2),
        "frames_per_s": round(frames[0] / elapsed, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--gl", default=None, help="osmesa | egl | glfw (default: $MUJOCO_GL, else osmesa)")
    ap.add_argument("--loop-s", type=float, default=20.0, help="seconds of control loop per camera setting")
    ap.add_argument("--rate", type=float, default=10.0, help="camera frames/s in the control-loop runs")
    args = ap.parse_args()
    snaps = states(args.frames)
    results = []
    for label, settings in render_settings_grid():
        settings = type(settings)(**{**asdict(settings), "gl": args.gl})
        t0 = time.perf_counter()
        cam = HeadCamera(settings)
        start_s = time.perf_counter() - t0
        cam.render(snaps[0])  # warm-up
        times = []
        for s in snaps:
            t = time.perf_counter()
            cam.render(s)
            times.append(time.perf_counter() - t)
        cam.close()
        r = np.asarray(times)
        results.append(
            {
                "setting": label,
                "width": settings.width,
                "height": settings.height,
                "geom_groups": list(settings.geom_groups),
                "shadows": settings.shadows,
                "reflections": settings.reflections,
                "multisamples": settings.multisamples,
                "render_ms_median": round(float(np.median(r)) * 1e3, 2),
                "render_ms_p99": round(float(np.percentile(r, 99)) * 1e3, 2),
                "fps": round(1.0 / float(np.median(r)), 1),
                "start_s": round(start_s, 2),
            }
        )
    loop = [
        control_loop(args.loop_s, None, args.rate),
        control_loop(args.loop_s, CameraSettings(gl=args.gl), args.rate),
        control_loop(args.loop_s, CameraSettings(geom_groups=(0, 1, 2), gl=args.gl), args.rate),
    ]
    print(
        json.dumps(
            {
                "benchmark": "g1_head_camera",
                "gl": gl_backend(args.gl),
                "lp_num_threads": os.environ.get("LP_NUM_THREADS", ""),
                "frames": args.frames,
                "cpus": os.cpu_count(),
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "python": platform.python_version(),
                "results": results,
                "control_loop_50hz": loop,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
