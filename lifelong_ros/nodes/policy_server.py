"""ROS 2 node `policy_server`: observations in through the spec, actions out, tagged with the model version.

A thin shell over spec.py (messages <-> vectors, stream alignment with a max age) and runtime.py
(onnxruntime, atomic hot-swap). It serves only versions the registry says are approved, with a
matching sha256, and swaps when the safety monitor announces a new active version — on a separate
thread, so the observation callback never waits on loading, learning or disk. Never imports torch.

A managed (lifecycle) node: ``configure`` loads the spec and the registry, requests the active
version and creates the topics; ``activate`` starts publishing actions; ``deactivate`` stops
actuating at once (the node keeps observing and swapping); ``cleanup`` drops it all. The launch
files bring it to active; standalone, ``-p autostart:=true`` does, or `ros2 lifecycle set`.

Interfaces:
  subscribes the spec's observation topics (best effort), active_version (ModelVersion, latched;
            remap to safety_monitor/active), task (std_msgs/String, latched)
  publishes the spec's action topics (reliable), ~/output (PolicyOutput), ~/experience
            (ExperienceRecord, source "policy"), /diagnostics

Output guard (runtime.py OutputGuard, parameters action_low/action_high/action_bounds_slack/
safe_action): a NaN/Inf or out-of-bounds action is never published on the action topics; the safe
action is, the output is counted (status ``guarded``) and a throttled warning says why. ~/output
carries what the model computed, so the safety monitor's watchdog counts the bad action toward its
out-of-bounds rate and rolls the model back (PolicyOutput has no field to mark a guarded output).
  services  ~/get_status (GetStatus), the lifecycle services (~/change_state, ~/get_state, ...)
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.publisher import Publisher
from rclpy.subscription import Subscription
from std_msgs.msg import String

from lifelong_ros import params as P
from lifelong_ros import paths
from lifelong_ros.msg import ExperienceRecord, ModelVersion, PolicyOutput
from lifelong_ros.ros_io.spec import SpecError, StreamAligner, header_stamp_ns, load_spec, ros_classes
from lifelong_ros.safety.registry import InvalidVersionId, ModelRegistry, RegistryError, check_version_id
from lifelong_ros.serving.runtime import InvalidObservation, ModelLoadError, OutputGuard, PolicyRuntime

from . import _common as c
from . import messages as m

NODE_NAME = "policy_server"


class PolicyServer(LifecycleNode):
    """A managed node: unconfigured -> configure (spec, registry, the active model, topics) -> inactive
    (observing only) -> activate (actions published) -> deactivate (actuation stops at once)."""

    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        p = c.declare(self, P.POLICY_SERVER)
        self._p = p
        self.executor_kind = p["executor"]
        self.autostart = bool(p["autostart"])
        self._classes = ros_classes()
        self._task = p["task"]
        self._enabled = bool(p["enabled"])  # the operator's switch (parameter `enabled`)
        self._active = False  # the lifecycle's: actions are published only while active
        self._configured = False
        self.spec: Any = None
        self.registry: ModelRegistry | None = None
        self.runtime: PolicyRuntime | None = None
        self._model_tasks: dict[str, list[str]] = {}  # version -> ordered tasks (head i = task i)
        self._swapper: ThreadPoolExecutor | None = None
        self._swap_lock = threading.Lock()
        self._wanted = ""  # last version announced as active
        self._entities: list[Any] = []  # subscriptions, publishers, timer made by on_configure
        self._action_pubs: dict[str, Any] = {}
        self._output_pub: Any = None
        self._experience_pub: Any = None
        self._last_stamp: dict[str, int] = {}
        self._episode, self._step, self._last_act_ns = "", 0, 0
        self._run_id = f"ps{time.time_ns() // 1_000_000}"
        self._episodes = 0
        self._counts = {
            "actions": 0,
            "stale": 0,
            "no_model": 0,
            "unknown_task": 0,
            "bad_input": 0,
            "decode_errors": 0,
            "swaps": 0,
            "failed_swaps": 0,
            "guarded": 0,  # actions refused by the output guard; the safe action was published
        }
        self._problem = ""
        self._inference_us = 0.0
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.health = c.Health(self, self._status, p["diagnostics_period_s"])

    # ------------------------------------------------------------------ lifecycle
    @property
    def configured(self) -> bool:
        """True between a successful configure and cleanup/shutdown."""
        return self._configured

    def on_configure(self, state: Any) -> TransitionCallbackReturn:
        """Load the spec and the registry, request the active version, create the topics."""
        p = self._p
        try:
            self.spec = load_spec(paths.resolve_config_file(p["spec"], p["config_dir"] or None))
            self._guard = OutputGuard(
                low=list(p["action_low"]),
                high=list(p["action_high"]),
                slack=float(p["action_bounds_slack"]),
                safe_action=p["safe_action"],
            )
            self._guard.bounds(self.spec.act_dim)  # a bound list of the wrong length fails here
            self.registry = ModelRegistry(paths.registry_dir(p["data_dir"]), recover=False)  # read-only use
        except (SpecError, OSError, ValueError, RegistryError) as exc:
            self._problem = f"configure failed: {exc}"
            self.get_logger().error(self._problem)
            return TransitionCallbackReturn.FAILURE
        self._swapper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-swap")
        self._aligner = StreamAligner(self.spec.observation.topics, self.spec.observation.max_age_s)
        # One clock for all streams: header stamps when every stream has a header, else receive time.
        self._receive_time = not all(s.has_header for s in self.spec.observation.streams)
        self._last_stamp = {}

        # Observation callbacks, the timer and announcements share one mutually exclusive group:
        # the aligner and episode counters are then touched by one thread at a time.
        group = MutuallyExclusiveCallbackGroup()
        first = self.spec.observation.streams[0]
        made = self._entities
        for stream in self.spec.observation.streams:
            trigger = stream is first and p["control_rate_hz"] <= 0
            made.append(
                self.create_subscription(
                    self._classes(stream.type),
                    stream.topic,
                    partial(self._on_observation, stream, trigger),
                    c.SENSOR_QOS,
                    callback_group=group,
                )
            )
        self._action_pubs = {
            s.topic: self.create_publisher(self._classes(s.type), s.topic, c.COMMAND_QOS)
            for s in self.spec.action.streams
        }
        made.extend(self._action_pubs.values())
        self._output_pub = self.create_publisher(PolicyOutput, "~/output", c.EVENT_QOS)
        made.append(self._output_pub)
        if p["publish_experience"]:
            self._experience_pub = self.create_publisher(ExperienceRecord, "~/experience", c.EXPERIENCE_QOS)
            made.append(self._experience_pub)
        made.append(
            self.create_subscription(
                ModelVersion, "active_version", self._on_active, c.LATCHED_QOS, callback_group=group
            )
        )
        made.append(self.create_subscription(String, "task", self._on_task_msg, c.LATCHED_QOS, callback_group=group))
        if p["control_rate_hz"] > 0:
            made.append(self.create_timer(1.0 / p["control_rate_hz"], self._act, callback_group=group))
        self._configured = True
        active = self.registry.active()
        if active:
            self._request_swap(active, "")
        self.get_logger().info(
            f"configured: spec {self.spec.name or p['spec']}: obs {self.spec.obs_dim} from "
            f"{self.spec.observation.topics}, action {self.spec.act_dim} to {self.spec.action.topics}; "
            f"active version {active or '(none yet)'}"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: Any) -> TransitionCallbackReturn:
        self._active = True
        self.get_logger().info("active: publishing actions")
        return super().on_activate(state)

    def on_deactivate(self, state: Any) -> TransitionCallbackReturn:
        self._active = False  # checked before every action: the next observation is only observed
        self.get_logger().info("inactive: observing only, no actions")
        return super().on_deactivate(state)

    def on_cleanup(self, state: Any) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: Any) -> TransitionCallbackReturn:
        self._active = False
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _teardown(self) -> None:
        self._configured = False
        if self._swapper is not None:
            self._swapper.shutdown(wait=True, cancel_futures=True)
            self._swapper = None
        for entity in self._entities:
            if isinstance(entity, Subscription):
                self.destroy_subscription(entity)
            elif isinstance(entity, Publisher):
                self.destroy_publisher(entity)
            else:
                self.destroy_timer(entity)
        self._entities = []
        self._action_pubs, self._output_pub, self._experience_pub = {}, None, None
        self.runtime, self._wanted = None, ""

    # ------------------------------------------------------------------ observations -> action
    def _on_observation(self, stream: Any, trigger: bool, msg: Any) -> None:
        try:
            value = stream.decode(msg)
        except SpecError as exc:
            self._counts["decode_errors"] += 1
            self._problem = str(exc)
            self.get_logger().warning(str(exc), throttle_duration_sec=5.0)
            return
        now = c.now_ns(self)  # one clock read per message (rclpy's Clock.now() is not free)
        stamp = now if self._receive_time else header_stamp_ns(msg)
        self._aligner.push(stream.topic, stamp, value)
        self._last_stamp[stream.topic] = stamp
        if trigger:
            self._act(now)

    def _act(self, now: int | None = None) -> None:
        if not (self._active and self._enabled):
            return
        if now is None:  # the control-rate timer
            now = c.now_ns(self)
        parts = self._aligner.get(now)
        if parts is None:
            self._counts["stale"] += 1
            self._problem = f"observation incomplete: {self._aligner.stale(now)}"
            return
        runtime = self.runtime
        if runtime is None:
            self._counts["no_model"] += 1
            return
        head = self._head(runtime)
        if head is None:
            self._counts["unknown_task"] += 1
            self._problem = f"model {runtime.version} has no head for task {self._task!r}; not acting"
            self.get_logger().warning(self._problem, throttle_duration_sec=5.0)
            return
        obs = self.spec.observation.assemble(parts)
        t0 = time.perf_counter_ns()
        try:
            out = runtime.infer(obs, head)
        except InvalidObservation as exc:
            self._counts["bad_input"] += 1
            self._problem = f"observation refused: {exc}"
            self.get_logger().warning(self._problem, throttle_duration_sec=5.0)
            return
        self._inference_us = (time.perf_counter_ns() - t0) / 1e3
        if out.guarded:  # out.action is the safe action; the model's is out.model_action
            self._counts["guarded"] += 1
            self._problem = f"output guarded: {out.reason}"
            self.get_logger().warning(self._problem, throttle_duration_sec=5.0)
        for topic, msg in self.spec.action.encode(out.action, self._classes, now).items():
            self._action_pubs[topic].publish(msg)
        self._counts["actions"] += 1
        age_s = (now - min(self._last_stamp.values())) / 1e9
        self._output_pub.publish(
            m.policy_output_msg(
                c.KIT,
                stamp_ns=now,
                model_version=out.version,
                task=self._task,
                task_id=head,
                action=out.model_action,  # what the model computed: the watchdog judges the model
                inference_us=self._inference_us,
                observation_age_s=age_s,
            )
        )
        if self._experience_pub is not None:
            self._publish_experience(now, obs, out)

    def _publish_experience(self, now: int, obs: np.ndarray, out: Any) -> None:
        if self._experience_pub is None:  # publish_experience is off
            return
        if not self._episode or now - self._last_act_ns > self._p["episode_gap_s"] * 1e9:
            self._episodes += 1
            self._episode, self._step = f"{self._run_id}-{self._episodes:06d}", 0
        self._last_act_ns = now
        step = m.ExperienceStep(
            stamp_ns=now,
            task=self._task,
            episode=self._episode,
            step=self._step,
            source="policy",
            obs=obs,
            action=out.action,
            model_version=out.version,
        )
        self._experience_pub.publish(m.experience_msg(c.KIT, step))
        self._step += 1

    def _head(self, runtime: PolicyRuntime) -> int | None:
        """Head of the current task in the serving model; None when it has none (then we do not act)."""
        if runtime.metadata.get("multi_head") == "false":  # single-head (task-agnostic) model
            return 0
        tasks = self._model_tasks.get(runtime.version, [])
        return tasks.index(self._task) if self._task in tasks else None

    # ------------------------------------------------------------------ task
    def _set_task(self, task: str) -> None:
        if task != self._task:
            self.get_logger().info(f"task {self._task!r} -> {task!r}")
            self._task, self._episode = task, ""  # a new task starts a new experience episode

    def _on_task_msg(self, msg: Any) -> None:
        if msg.data:
            self._set_task(msg.data)

    def _on_set_parameters(self, params: list) -> SetParametersResult:
        for prm in params:
            if prm.name == "task":
                if not isinstance(prm.value, str) or not prm.value:
                    return SetParametersResult(
                        successful=False, reason=f"task must be a non-empty task name, got {prm.value!r}"
                    )
                self._set_task(prm.value)
            elif prm.name == "enabled":
                self._enabled = bool(prm.value)
                self.get_logger().info("acting" if self._enabled else "disabled: observing only, no actions")
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ model swaps (off the callback)
    def _on_active(self, msg: Any) -> None:
        if not msg.version or msg.version == self._wanted:
            return
        try:
            check_version_id(msg.version, "announced active version")
        except InvalidVersionId as exc:
            self._counts["failed_swaps"] += 1
            self._problem = f"{exc}; ignored"
            self.get_logger().error(
                self._problem + f"; still serving {self.runtime.version if self.runtime else 'nothing'}"
            )
            return
        self._request_swap(msg.version, msg.sha256)

    def _request_swap(self, version: str, announced_sha256: str) -> None:
        if self._swapper is None:  # not configured
            return
        self._wanted = version
        self._swapper.submit(self._swap, version, announced_sha256)

    def _swap(self, version: str, announced_sha256: str) -> None:
        """Runs on the swap thread: verify with the registry (approved, sha256), build, switch."""
        with self._swap_lock:
            if version != self._wanted or (self.runtime is not None and self.runtime.version == version):
                return
            if self.registry is None:
                return
            try:
                data, sha = self.registry.load_for_serving(version)  # refuses unapproved / altered models
                if announced_sha256 and announced_sha256 != sha:
                    raise ModelLoadError(
                        f"announced sha256 {announced_sha256[:12]}… differs from the registry's "
                        f"{sha[:12]}… for {version}"
                    )
                info = self.registry.info(version)
                self._model_tasks[version] = list(info.tasks)
                if self.runtime is None:
                    self.runtime = PolicyRuntime(
                        data,
                        version,
                        expected_sha256=sha,
                        intra_op_threads=self._p["intra_op_threads"],
                        output_guard=self._guard,
                    )
                    report = f"loaded {version}"
                else:
                    r = self.runtime.swap(data, version, expected_sha256=sha)
                    report = f"swapped {r.old_version} -> {r.new_version} in {r.total_ms:.1f} ms"
                self._check_dims()
                self._counts["swaps"] += 1
                self.get_logger().info(report)
            except (RegistryError, ModelLoadError, OSError, ValueError) as exc:
                self._counts["failed_swaps"] += 1
                self._problem = f"refused version {version}: {exc}"
                self.get_logger().error(
                    self._problem + f"; still serving {self.runtime.version if self.runtime else 'nothing'}"
                )

    def _check_dims(self) -> None:
        rt = self.runtime
        if rt is not None and (rt.obs_dim, rt.act_dim) != (self.spec.obs_dim, self.spec.act_dim):
            self._problem = (
                f"model {rt.version} maps {rt.obs_dim} -> {rt.act_dim} values but the spec gives "
                f"{self.spec.obs_dim} -> {self.spec.act_dim}"
            )
            self.get_logger().error(self._problem)

    # ------------------------------------------------------------------ health, shutdown
    def _status(self) -> m.Status:
        rt = self.runtime
        values = dict(
            self._counts, task=self._task, enabled=self._enabled, inference_us=self._inference_us, problem=self._problem
        )
        values["lifecycle"] = "active" if self._active else ("inactive" if self._configured else "unconfigured")
        if not self._configured:
            return m.Status(
                m.WARN, f"unconfigured: not serving ({self._problem or 'waiting for configure'})", values, ""
            )
        if rt is None:
            return m.Status(m.WARN, "no model loaded (waiting for an active version)", values, "")
        if not self._active:
            return m.Status(
                m.WARN, f"inactive: observing only (serving {rt.version} once activated)", values, rt.version
            )
        if not self._enabled:
            return m.Status(m.WARN, f"disabled by the operator (serving {rt.version} once enabled)", values, rt.version)
        values.update({f"runtime_{k}": v for k, v in rt.stats().items() if k not in ("sha256",)})
        if self._wanted and self._wanted != rt.version:
            return m.Status(
                m.WARN, f"serving {rt.version}, {self._wanted} not loaded: {self._problem}", values, rt.version
            )
        if self._problem and self._counts["actions"] == 0:
            return m.Status(m.WARN, self._problem, values, rt.version)
        return m.Status(m.OK, f"serving {rt.version} for {self._task}", values, rt.version)

    def destroy_node(self) -> None:
        self._active = False
        if self._swapper is not None:
            self._swapper.shutdown(wait=True, cancel_futures=True)
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    c.sigterm_like_sigint()
    node = None
    try:
        node = c.construct(PolicyServer, NODE_NAME)
        if node.autostart:  # standalone use; launch files drive the transitions instead
            node.trigger_configure()
            if node.configured:
                node.trigger_activate()
        c.spin(node, c.make_executor(node.executor_kind))
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        c.ignore_signals()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
