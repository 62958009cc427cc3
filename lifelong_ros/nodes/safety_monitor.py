"""ROS 2 node `safety_monitor`: gates candidates, owns the active pointer, rolls back, watches online.

A thin shell over registry.py, gate.py and watchdog.py (onnxruntime only, never torch). It is the
one node that moves the active pointer; every move is announced on ~/active (reliable,
transient-local) so the policy server, and any node that starts later, switch to it.

Interfaces:
  action    ~/gate (Gate: feedback while queued/evaluating; cancel until the verdict is recorded)
  services  ~/gate (GateCandidate, the same synchronously), ~/rollback (Rollback), ~/list_versions (ListVersions),
            ~/get_status (GetStatus)
  publishes ~/active (ModelVersion, latched), ~/gate_report (GateReport, latched), /diagnostics
  subscribes policy_output (PolicyOutput) and episode_result (EpisodeResult) for the watchdog,
            experience (ExperienceRecord) for the optional shadow stage
"""

from __future__ import annotations

import threading
import time
from typing import Any

import rclpy
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from lifelong_ros import params as P
from lifelong_ros import paths
from lifelong_ros.action import Gate
from lifelong_ros.experience.sources import GROUND_TRUTH_SOURCES
from lifelong_ros.msg import EpisodeResult, ExperienceRecord, GateReport, ModelVersion, PolicyOutput
from lifelong_ros.orchestration import gate_version, promote
from lifelong_ros.safety.gate import GateCancelled, GateConfig, SafetyGate
from lifelong_ros.safety.registry import ModelRegistry, RegistryError, check_version_id
from lifelong_ros.safety.watchdog import Watchdog, WatchdogConfig, WatchdogEvent
from lifelong_ros.sim.pool import RolloutPool
from lifelong_ros.srv import GateCandidate, ListVersions, Rollback

from . import _common as c
from . import messages as m

NODE_NAME = "safety_monitor"


class SafetyMonitor(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        p = c.declare(self, P.SAFETY_MONITOR)
        gate_cfg = GateConfig.from_dict(c.declare_section(self, "gate", GateConfig))
        wd_cfg = WatchdogConfig.from_dict(c.declare_section(self, "watchdog", WatchdogConfig))
        self._p = p
        data = paths.data_dir(p["data_dir"])
        self.registry = ModelRegistry(paths.registry_dir(data))  # the writer: recovers crashed writes on open
        self._store_path = paths.store_path(data)
        self.gate = SafetyGate(self.registry, gate_cfg)
        self.watchdog = (
            Watchdog(self.registry, None, wd_cfg, on_event=self._on_watchdog_event) if p["watchdog_enabled"] else None
        )

        # The closed-loop stage: paired episodes in niced worker processes (a simulator on this machine).
        self._episodes: RolloutPool | None = None
        if p["closed_loop_sim"] != "none":
            self._episodes = RolloutPool(p["closed_loop_workers"] or None, robot=p["closed_loop_sim"])
            self._episodes.warm()  # spawn the workers now, not in the first gate
        self._gate_lock = threading.Lock()  # one evaluation at a time; they are CPU-bound anyway
        self._shadow: dict[str, Any] | None = None  # {"version", "runner", "activate"} while a shadow runs
        self._announced: str | None = None
        self._counts = {"gated": 0, "approved": 0, "rejected": 0, "rollbacks": 0, "watchdog_events": 0}
        self._last_report = ""

        slow = ReentrantCallbackGroup()  # gate requests may take seconds; they must not block the rest
        fast = MutuallyExclusiveCallbackGroup()
        self._active_pub = self.create_publisher(ModelVersion, "~/active", c.LATCHED_QOS)
        self._report_pub = self.create_publisher(GateReport, "~/gate_report", c.LATCHED_QOS)
        self.create_service(GateCandidate, "~/gate", self._on_gate, callback_group=slow)
        self._gate_server = ActionServer(
            self,
            Gate,
            "~/gate",
            self._execute_gate,
            goal_callback=self._on_gate_goal,
            cancel_callback=self._on_gate_cancel,
            callback_group=slow,
        )
        self.create_service(Rollback, "~/rollback", self._on_rollback, callback_group=fast)
        self.create_service(ListVersions, "~/list_versions", self._on_list, callback_group=fast)
        self.create_subscription(
            PolicyOutput, "policy_output", self._on_policy_output, c.SENSOR_QOS, callback_group=fast
        )
        self.create_subscription(
            EpisodeResult, "episode_result", self._on_episode_result, c.EVENT_QOS, callback_group=fast
        )
        self.create_subscription(
            ExperienceRecord, "experience", self._on_experience, c.EXPERIENCE_QOS, callback_group=fast
        )
        self.create_timer(p["registry_poll_period_s"], self._poll_registry, callback_group=fast)
        self.health = c.Health(self, self._status, p["diagnostics_period_s"])
        self._announce_active("startup")
        self.get_logger().info(f"registry {self.registry.root}, active version: {self.registry.active() or '(none)'}")

    # ------------------------------------------------------------------ active pointer
    def _announce_active(self, why: str) -> None:
        active = self.registry.active()
        if active is None or active == self._announced:
            return
        info = self.registry.info(active)
        self._active_pub.publish(m.model_version_msg(c.KIT, info, c.now_ns(self)))
        self._announced = active
        if self.watchdog is not None and self.watchdog.version != active:
            self.watchdog.arm(active)
        self.get_logger().info(f"active version {active} announced ({why})")

    def _poll_registry(self) -> None:
        self._announce_active("registry changed")

    def _promote(self, version: str, reason: str) -> None:
        promote(self.registry, version, reason=reason)
        self._announce_active(reason)

    # ------------------------------------------------------------------ gate
    def _on_gate(self, request: Any, response: Any) -> Any:
        """The GateCandidate service: the same as a Gate goal, answered synchronously."""
        info, why = self._candidate(request.version)
        if info is None:
            return self._refuse(why)
        with self._gate_lock:
            out = self._decide(info, bool(request.activate))
        return m.gate_candidate_response(c.KIT, **out)

    def _candidate(self, version: str) -> tuple[Any, str]:
        """(VersionInfo, "") of a gateable candidate, or (None, why not)."""
        try:
            info = self.registry.info(check_version_id(version, "~/gate version"))
        except RegistryError as exc:
            return None, str(exc)
        if info.decision != "candidate":
            return None, f"{version} was already decided ({info.decision!r}); only candidates are gated"
        return info, ""

    def _decide(
        self, info: Any, activate_requested: bool, on_phase: Any = None, should_stop: Any = None
    ) -> dict[str, Any]:
        """Evaluate ``info`` (the caller holds the gate lock), publish the report, promote if approved and asked.

        ``should_stop``: polled during the evaluation; True stops it with nothing recorded ("cancelled")."""
        t0 = time.perf_counter()
        try:
            report = self._evaluate(info, should_stop)
        except GateCancelled as exc:
            message = f"cancelled after {time.perf_counter() - t0:.1f} s: {exc}; {info.id} stays a candidate"
            self.get_logger().info(message)
            return {"success": False, "cancelled": True, "message": message}
        except Exception as exc:  # noqa: BLE001 - answer the caller with the reason, keep serving
            message = f"gate could not evaluate {info.id}: {type(exc).__name__}: {exc}"
            self.get_logger().warning(message)
            return {"success": False, "message": message, "active_version": self.registry.active() or ""}
        msg = self._report_msg(report, time.perf_counter() - t0)
        self._report_pub.publish(msg)
        self._count(report.decision)
        activate = activate_requested and bool(self._p["auto_activate"])
        activated = False
        if report.decision == "pending_shadow":
            self._shadow = {"version": info.id, "runner": self.gate.shadow_runner(info.id), "activate": activate}
            message = (
                f"{info.id} passed the offline checks; shadow stage running for "
                f"{self.gate.config.shadow_steps} steps beside {report.active}"
            )
        elif report.decision == "approved" and activate:
            if on_phase is not None:
                on_phase("activating")
            try:
                self._promote(info.id, f"gate approved ({report.reason()})")
                activated, message = True, f"{info.id} approved and active"
            except (RegistryError, OSError) as exc:
                message = f"{info.id} approved but could not be activated: {exc}"
        else:
            message = f"{info.id} {report.decision}: {report.reason()}"
        self.get_logger().info(message)
        return {
            "success": True,
            "message": message,
            "report": msg,
            "activated": activated,
            "active_version": self.registry.active() or "",
        }

    # ------------------------------------------------------------------ gate action
    def _on_gate_goal(self, goal: Any) -> GoalResponse:
        info, why = self._candidate(goal.version)
        if info is None:  # refused up front: the client reads the reason in this node's log and gets REJECTED
            self.get_logger().warning(f"Gate goal rejected: {why}")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _on_gate_cancel(self, goal_handle: Any) -> CancelResponse:
        return CancelResponse.ACCEPT  # the evaluation stops at its next stop point; a recorded verdict stands

    def _execute_gate(self, goal_handle: Any) -> Any:
        goal, t0 = goal_handle.request, time.monotonic()
        phase = ["queued"]

        def feedback(now: str | None = None) -> None:
            if now:
                phase[0] = now
            goal_handle.publish_feedback(m.gate_feedback(c.KIT, phase=phase[0], elapsed_s=time.monotonic() - t0))

        def result(**fields: Any) -> Any:
            return m.gate_result(c.KIT, active_version=self.registry.active() or "", **fields)

        feedback()
        while not self._gate_lock.acquire(timeout=self._p["gate_feedback_period_s"]):
            if goal_handle.is_cancel_requested:
                why = f"cancelled while queued; {goal.version} was not evaluated"
                return c.end_goal(goal_handle.canceled, result(success=False, message=why))
            feedback()
        try:
            if goal_handle.is_cancel_requested:
                why = f"cancelled while queued; {goal.version} was not evaluated"
                return c.end_goal(goal_handle.canceled, result(success=False, message=why))
            info, why = self._candidate(goal.version)  # decided meanwhile by another request?
            if info is None:
                return c.end_goal(goal_handle.abort, result(success=False, message=why))
            stop = threading.Event()
            ticker = threading.Thread(target=self._tick, args=(stop, feedback), daemon=True)
            feedback("evaluating")
            ticker.start()
            try:
                out = self._decide(
                    info, bool(goal.activate), on_phase=feedback, should_stop=lambda: goal_handle.is_cancel_requested
                )
            finally:
                stop.set()
                ticker.join()
        finally:
            self._gate_lock.release()
        if out.pop("cancelled", False):
            return c.end_goal(goal_handle.canceled, result(success=False, message=out["message"]))
        return c.end_goal(goal_handle.succeed if out["success"] else goal_handle.abort, m.gate_result(c.KIT, **out))

    def _tick(self, stop: threading.Event, feedback: Any) -> None:
        while not stop.wait(self._p["gate_feedback_period_s"]):
            feedback()

    def _evaluate(self, info: Any, should_stop: Any = None) -> Any:
        """The gate on the store's held-out ground truth (read-only: the experience_buffer is the
        writer), closed loop too when a simulator is configured."""
        sources = self._p["suite_sources"] or GROUND_TRUTH_SOURCES
        return gate_version(
            self.registry,
            self.gate,
            self._store_path,
            info.id,
            sources=sources,
            episodes=self._episodes,
            should_stop=should_stop,
        )

    def _report_msg(self, report: Any, duration_s: float) -> Any:
        reports = self.registry.reports(report.candidate)
        path = str(self.registry.info(report.candidate).path / "reports" / reports[-1]["file"]) if reports else ""
        self._last_report = f"{report.candidate}: {report.decision} ({report.reason()})"
        return m.gate_report_msg(
            c.KIT,
            stamp_ns=c.now_ns(self),
            candidate_version=report.candidate,
            baseline_version=report.active,
            approved=report.decision == "approved",
            reason="" if report.passed else report.reason(),
            checks=m.gate_checks(report.checks),
            report_path=path,
            duration_s=duration_s,
        )

    def _count(self, decision: str) -> None:
        self._counts["gated"] += 1
        if decision in ("approved", "rejected"):
            self._counts[decision] += 1

    def _refuse(self, message: str) -> Any:
        self.get_logger().warning(message)
        return m.gate_candidate_response(
            c.KIT, success=False, message=message, active_version=self.registry.active() or ""
        )

    def _on_experience(self, msg: Any) -> None:
        """Feed the shadow stage with live observations the policy server served."""
        shadow = self._shadow
        if shadow is None or msg.source != "policy":
            return
        runner = shadow["runner"]
        runner.step(m.as_f32(msg.observation), msg.task)
        if runner.done:
            self._shadow = None
            report = self.gate.conclude_shadow(shadow["version"], runner)
            self._report_pub.publish(self._report_msg(report, report.duration_ms / 1e3))
            self._count(report.decision)
            if report.decision == "approved" and shadow["activate"]:
                self._promote(shadow["version"], f"gate approved after shadow ({report.reason()})")

    # ------------------------------------------------------------------ rollback, listing
    def _on_rollback(self, request: Any, response: Any) -> Any:
        previous = self.registry.active() or ""
        try:
            # '' = the previous version; anything else must be a registry id (no paths, no '../')
            to = check_version_id(request.version, "~/rollback version") if request.version else None
            tr = self.registry.rollback(to, reason="~/rollback service")
        except (RegistryError, OSError) as exc:
            self.get_logger().warning(f"rollback refused: {exc}")
            return m.rollback_response(
                c.KIT,
                success=False,
                message=f"rollback refused: {exc}",
                active_version=self.registry.active() or "",
                previous_version=previous,
            )
        self._counts["rollbacks"] += 1
        self._announce_active(f"rollback from {tr.from_version}")
        return m.rollback_response(
            c.KIT,
            success=True,
            message=f"rolled back {tr.from_version} -> {tr.to_version}",
            active_version=tr.to_version,
            previous_version=previous,
        )

    def _on_list(self, request: Any, response: Any) -> Any:
        try:
            infos = self.registry.list([request.state] if request.state else None)
        except ValueError as exc:
            self.get_logger().warning(str(exc))
            infos = []
        infos = infos[::-1][: request.limit or None]
        now = c.now_ns(self)
        versions = [m.model_version_msg(c.KIT, i, now) for i in infos]
        return m.list_versions_response(c.KIT, versions, self.registry.active() or "")

    # ------------------------------------------------------------------ watchdog
    def _on_policy_output(self, msg: Any) -> None:
        if self.watchdog is not None:
            self.watchdog.observe_action(m.as_f32(msg.action), msg.model_version)

    def _on_episode_result(self, msg: Any) -> None:
        if self.watchdog is not None and msg.controller == "policy":
            self.watchdog.observe_episode(msg.success, msg.model_version or None, msg.task)

    def _on_watchdog_event(self, ev: WatchdogEvent) -> None:
        self._counts["watchdog_events"] += 1
        self.get_logger().error(
            f"watchdog tripped on {ev.version}: {ev.signal}={ev.value:.3g} > {ev.threshold:.3g}; "
            f"rolled back to {ev.rolled_back_to or '(nothing: ' + str(ev.error) + ')'}"
        )
        self._announce_active("watchdog rollback")

    def destroy_node(self) -> None:
        if self._episodes is not None:
            self._episodes.close()  # an evaluation in progress was stopped by shutdown; its workers exit here
        super().destroy_node()

    # ------------------------------------------------------------------ health
    def _status(self) -> m.Status:
        active = self.registry.active() or ""
        values = dict(
            self._counts,
            registry=str(self.registry.root),
            last_gate=self._last_report,
            shadow=self._shadow["version"] if self._shadow else "",
        )
        if self.watchdog is not None:
            values.update({f"watchdog_{k}": v for k, v in self.watchdog.status().items()})
        if not active:
            return m.Status(m.WARN, "no active version yet", values, active)
        return m.Status(m.OK, f"active {active}", values, active)


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    c.sigterm_like_sigint()
    node = None
    try:
        node = c.construct(SafetyMonitor, NODE_NAME)
        c.spin(node, MultiThreadedExecutor(num_threads=3))  # a long gate goal holds one thread
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        c.ignore_signals()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
