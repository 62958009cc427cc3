"""ROS 2 node `sim_bridge`: an embedded simulator (Meta-World's arm or the G1 humanoid) as a robot on the ROS graph.

So the whole loop runs without Gazebo or hardware: at a fixed rate it publishes the observation on
the spec's observation topics and applies the action received on the spec's action topics (one
step per action; the observation is republished if no action arrives). With controller:=expert
the robot's scripted expert acts instead and every step is published as a demonstration, which
the experience buffer records — how a new task is taught in the demo. With controller:=correction
the policy acts and every step is published with the expert's action for the state the policy
reached, source `correction` (DAgger, as lifelong_ros/corrections.py does offline; on a robot a
person with a teleoperation device is that expert); once the policy stalls (takeover_after steps
without a new best reward) the expert drives the rest of the episode. A thin shell over sim/.

robot:=g1 serves the G1 with the interfaces of a ros2_control robot (config/spec_g1.yaml):
JointState on /joint_states, the object pose and the task's target as PoseStamped, commands as
Float64MultiArray (radians) on /forward_position_controller/commands; Gazebo or the real robot serve
the same topics. With camera_rate_hz > 0 it also publishes the head camera (sensor_msgs/Image),
rendered on a thread of its own from a snapshot of each step (sim/humanoid/camera.py).

Interfaces:
  publishes the spec's observation topics, ~/episode_result (EpisodeResult), ~/demonstrations
            (ExperienceRecord: expert and correction only), ~/task (std_msgs/String, latched), /diagnostics,
            camera_topic (G1, camera_rate_hz > 0), the spec's action topics (expert with
            publish_expert_commands only)
  subscribes the spec's action topics, policy_output (PolicyOutput; the version that acted)
  services  ~/get_status (GetStatus)
  parameters task, controller, publish_expert_commands and paused can be changed at run time
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import String

from lifelong_ros import params as P
from lifelong_ros import paths
from lifelong_ros.msg import EpisodeResult, ExperienceRecord, PolicyOutput
from lifelong_ros.ros_io.codecs import IMAGE
from lifelong_ros.ros_io.spec import ImageStream, SpecError, load_spec, ros_classes
from lifelong_ros.sim.backends import Simulator, backend
from lifelong_ros.sim.episodes import StallWatch

from . import _common as c
from . import messages as m

NODE_NAME = "sim_bridge"
CONTROLLERS = ("policy", "expert", "correction")
SPECS = {"metaworld": "spec_metaworld.yaml", "g1": "spec_g1.yaml"}  # each robot's spec in config/


class SimBridge(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        p = c.declare(self, P.SIM_BRIDGE)
        self._p = p
        self.robot = backend(p["robot"])
        self.spec = load_spec(paths.resolve_config_file(p["spec"], p["config_dir"] or None))
        if (self.spec.obs_dim, self.spec.act_dim) != (self.robot.obs_dim, self.robot.act_dim):
            raise ValueError(
                f"spec {p['spec']!r} maps {self.spec.obs_dim} -> {self.spec.act_dim} values; the {self.robot.name} "
                f"simulator needs {self.robot.obs_dim} -> {self.robot.act_dim} (use config/{SPECS[self.robot.name]})"
            )
        self._check_task(p["task"])
        self._check_controller(p["controller"])
        self._task, self._controller, self._paused = p["task"], p["controller"], p["paused"]
        self._p_expert_commands = bool(p["publish_expert_commands"])
        self._classes = ros_classes()
        self._sim: Simulator | None = None
        self._expert: Callable[[np.ndarray], np.ndarray] | None = None
        self._obs: np.ndarray | None = None
        self._obs_stamp = 0
        self._last_publish = 0.0
        self._last_step = time.monotonic()
        self._action_parts: dict[str, np.ndarray] = {}
        self._pending: np.ndarray | None = None
        self._version = ""  # model version of the last applied policy action
        self._run_id = f"sim{time.time_ns() // 1_000_000}"
        self._k = -1  # episode counter
        self._steps, self._reward = 0, 0.0
        self._stall: StallWatch | None = None  # controller:=correction with takeover_after > 0
        self._taken_over = False
        self._counts = {"episodes": 0, "successes": 0, "steps": 0, "republished": 0, "bad_actions": 0, "takeovers": 0}
        self._last_result = ""
        self._cmd_pubs: dict[str, Any] = {}  # created on first use (publish_expert_commands)
        self._camera = self._start_camera(p)

        self._obs_pubs = {
            s.topic: self.create_publisher(self._classes(s.type), s.topic, c.SENSOR_QOS)
            for s in self.spec.observation.streams
        }
        for s in self.spec.action.streams:
            self.create_subscription(self._classes(s.type), s.topic, partial(self._on_action, s), c.SENSOR_QOS)
        self.create_subscription(PolicyOutput, "policy_output", self._on_policy_output, c.EVENT_QOS)
        self._result_pub = self.create_publisher(EpisodeResult, "~/episode_result", c.EVENT_QOS)
        self._demo_pub = self.create_publisher(ExperienceRecord, "~/demonstrations", c.EXPERIENCE_QOS)
        self._task_pub = self.create_publisher(String, "~/task", c.LATCHED_QOS)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(1.0 / p["rate_hz"], self._tick)
        self.health = c.Health(self, self._status, p["diagnostics_period_s"])
        self.get_logger().info(
            f"{self.robot.name} {self._task} at {p['rate_hz']:g} Hz, controller {self._controller}"
            + (f", camera {p['camera_rate_hz']:g} Hz on {p['camera_topic']}" if self._camera else "")
        )

    # ------------------------------------------------------------------ camera
    def _start_camera(self, p: dict) -> Any:
        if not p["camera_rate_hz"] > 0:
            return None
        if self.robot.name != "g1":
            raise ValueError(f"camera_rate_hz > 0: only the g1 robot has a camera, not {self.robot.name}")
        from lifelong_ros.sim.humanoid.camera import CameraSettings, CameraThread

        settings = CameraSettings(
            width=int(p["camera_width"]),
            height=int(p["camera_height"]),
            geom_groups=tuple(int(g) for g in p["camera_geom_groups"]),
            shadows=bool(p["camera_shadows"]),
            gl=p["camera_gl"] or None,
        ).check()
        stream = ImageStream(
            topic=p["camera_topic"], type=IMAGE, width=settings.width, height=settings.height, frame_id="head_camera"
        )
        pub = self.create_publisher(self._classes(IMAGE), stream.topic, c.SENSOR_QOS)

        def on_frame(image: np.ndarray, stamp_ns: int) -> None:  # on the camera's thread
            pub.publish(stream.encode(image.reshape(-1), self._classes, stamp_ns))

        return CameraThread(settings, p["camera_rate_hz"], on_frame).start()

    # ------------------------------------------------------------------ parameters
    def _check_task(self, task: str) -> None:
        tasks = self.robot.available_tasks()
        if task not in tasks:
            raise ValueError(f"unknown {self.robot.name} task {task!r}; expected one of {tasks}")

    @staticmethod
    def _check_controller(controller: str) -> None:
        if controller not in CONTROLLERS:
            raise ValueError(f"controller {controller!r}: expected one of {CONTROLLERS}")

    def _on_set_parameters(self, params: list) -> SetParametersResult:
        try:
            for prm in params:
                if prm.name == "task":
                    self._check_task(prm.value)
                elif prm.name == "controller":
                    self._check_controller(prm.value)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        for prm in params:
            if prm.name == "task":
                self._task = prm.value  # the next episode uses it (and announces it on ~/task)
            elif prm.name == "controller":
                self._controller = prm.value
            elif prm.name == "paused":
                self._paused = bool(prm.value)
            elif prm.name == "publish_expert_commands":
                self._p_expert_commands = bool(prm.value)
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ actions in
    def _on_action(self, stream: Any, msg: Any) -> None:
        try:
            self._action_parts[stream.topic] = stream.decode(msg)
        except SpecError as exc:
            self._counts["bad_actions"] += 1
            self.get_logger().warning(str(exc), throttle_duration_sec=5.0)
            return
        if len(self._action_parts) == len(self.spec.action.streams):
            self._pending = self.spec.action.assemble([self._action_parts[t] for t in self.spec.action.topics])
            self._action_parts = {}

    def _on_policy_output(self, msg: Any) -> None:
        self._version = msg.model_version

    # ------------------------------------------------------------------ the loop
    def _tick(self) -> None:
        if self._paused:
            return
        if self._obs is None:
            self._start_episode()
            return
        action: np.ndarray | None
        expert_drives = self._controller == "expert" or (self._controller == "correction" and self._taken_over)
        if expert_drives and self._expert is not None:
            action, self._pending = self._expert(self._obs), None
            if self._p_expert_commands:
                self._publish_commands(np.clip(np.asarray(action, np.float32), -1.0, 1.0))
        else:
            action, self._pending = self._pending, None
            if action is None:
                if time.monotonic() - self._last_publish > self._p["command_timeout_s"]:
                    self._counts["republished"] += 1
                    self._publish_obs()  # a best-effort message may have been dropped
                return
        self._step(np.clip(np.asarray(action, np.float32), -1.0, 1.0))

    def _start_episode(self) -> None:
        if self._sim is None or self._sim.env_name != self._task:
            if self._sim is not None:
                self._sim.close()
            self._sim = self.robot.make(self._task, self._p["steps_after_success"], self._p["max_steps"] or None)
            self._expert = self._sim.expert()
            self._task_pub.publish(String(data=self._task))
        self._k += 1
        self._obs = self._episode_sim().reset(self._seed())
        self._steps, self._reward, self._pending = 0, 0.0, None
        limit = int(self._p["takeover_after"])
        self._stall, self._taken_over = (StallWatch(limit) if limit > 0 else None), False
        self._publish_obs()

    def _seed(self) -> int:
        return int(self._p["seed"]) + self._k

    def _episode(self) -> str:
        return f"{self._run_id}-{self._k:05d}"

    def _episode_sim(self) -> Simulator:
        """The simulator of the running episode (``_start_episode`` creates it before any step)."""
        if self._sim is None:
            raise RuntimeError("sim_bridge: no episode is running")
        return self._sim

    def _current_obs(self) -> np.ndarray:
        if self._obs is None:
            raise RuntimeError("sim_bridge: no observation yet (no episode is running)")
        return self._obs

    def _step(self, action: np.ndarray) -> None:
        label, source = action, "demonstration"
        if self._controller == "correction" and self._expert is not None:  # the expert's action here
            source = "correction"
            if not self._taken_over:  # (once it took over, the expert's action is the one applied)
                label = np.clip(np.asarray(self._expert(self._current_obs()), np.float32), -1.0, 1.0)
        obs, reward, done, info = self._episode_sim().step(action)
        stall = self._stall if self._controller == "correction" and not self._taken_over else None
        if stall is not None and stall.stalled(reward, bool(info["success"])):
            self._taken_over = True  # the expert drives from the next step on
            self._counts["takeovers"] += 1
        if self._controller in ("expert", "correction"):
            self._demo_pub.publish(
                m.experience_msg(
                    c.KIT,
                    m.ExperienceStep(
                        stamp_ns=self._obs_stamp,
                        task=self._episode_sim().env_name,
                        episode=self._episode(),
                        step=self._steps,
                        source=source,
                        obs=self._current_obs(),
                        action=label,
                        reward=reward,
                        done=done,
                    ),
                )
            )
        self._steps += 1
        self._reward += reward
        self._counts["steps"] += 1
        self._last_step = time.monotonic()
        if done:
            self._finish_episode(bool(info["success"]))
            self._start_episode()
        else:
            self._obs = obs
            self._publish_obs()

    def _finish_episode(self, success: bool) -> None:
        self._counts["episodes"] += 1
        self._counts["successes"] += success
        self._result_pub.publish(
            m.episode_result_msg(
                c.KIT,
                stamp_ns=c.now_ns(self),
                task=self._episode_sim().env_name,
                episode=self._episode(),
                seed=self._seed(),
                success=success,
                steps=self._steps,
                total_reward=self._reward,
                controller=self._controller,
                model_version=self._version if self._controller != "expert" else "",
            )
        )
        self._last_result = f"{self._episode_sim().env_name} seed {self._seed()}: {'success' if success else 'failure'} in {self._steps} steps"

    def _publish_obs(self) -> None:
        self._obs_stamp = c.now_ns(self)
        for topic, msg in self.spec.observation.encode(self._current_obs(), self._classes, self._obs_stamp).items():
            self._obs_pubs[topic].publish(msg)
        self._last_publish = time.monotonic()
        if self._camera is not None:  # a copy of the state; the camera's thread renders it
            from lifelong_ros.sim.humanoid.camera import Snapshot

            self._camera.offer(Snapshot.of(self._sim.data, self._obs_stamp))  # type: ignore[union-attr]

    def _publish_commands(self, action: np.ndarray) -> None:
        """The expert's action on the spec's action topics, as a teleoperator's commands (stamped now)."""
        for s in self.spec.action.streams:
            if s.topic not in self._cmd_pubs:
                self._cmd_pubs[s.topic] = self.create_publisher(self._classes(s.type), s.topic, c.COMMAND_QOS)
        for topic, msg in self.spec.action.encode(action, self._classes, c.now_ns(self)).items():
            self._cmd_pubs[topic].publish(msg)

    # ------------------------------------------------------------------ health, shutdown
    def _status(self) -> m.Status:
        values = dict(
            self._counts,
            task=self._task,
            controller=self._controller,
            paused=self._paused,
            episode=self._episode() if self._k >= 0 else "",
            step=self._steps,
            last_episode=self._last_result,
        )
        if self._camera is not None:
            values.update({f"camera_{k}": v for k, v in self._camera.stats.summary().items()})
        if self._paused:
            return m.Status(m.OK, "paused", values, self._version)
        idle = time.monotonic() - self._last_step
        if self._controller == "policy" and idle > 5 * self._p["command_timeout_s"]:
            return m.Status(m.WARN, f"no action from the policy for {idle:.1f} s", values, self._version)
        return m.Status(m.OK, f"{self._task} ({self._controller}), episode {self._k}", values, self._version)

    def destroy_node(self) -> None:
        if self._camera is not None:
            self._camera.stop()
        if self._sim is not None:
            self._sim.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    c.sigterm_like_sigint()
    node = None
    try:
        node = c.construct(SimBridge, NODE_NAME)
        c.spin(node, SingleThreadedExecutor())
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        c.ignore_signals()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
