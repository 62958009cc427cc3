"""ROS 2 node `learner`: the Adapt action server over the core learner's worker process.

Training runs in the learner's own worker process (learner.py: bounded threads, lower priority),
never in this node's executor threads. A goal goes: accepted -> progress feedback (phase, step,
loss) -> candidate registered and announced on ~/candidate -> safety_monitor ~/gate -> result
with the gate's verdict. Cancel stops the worker job; nothing partial is registered.

Interfaces:
  action    ~/adapt (Adapt)
  publishes ~/candidate (ModelVersion, latched), /diagnostics
  sends     Gate action goals to the `gate_action` parameter's action (safety_monitor/gate)
  services  ~/get_status (GetStatus)
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import rclpy
from rclpy.action import ActionClient, ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from lifelong_ros import params as P
from lifelong_ros import paths
from lifelong_ros.action import Adapt, Gate
from lifelong_ros.learning.jobs import AdaptCancelled, AdaptError
from lifelong_ros.learning.worker import AdaptJob, Learner
from lifelong_ros.msg import ModelVersion
from lifelong_ros.orchestration import RetryPolicy, new_request, register_candidate, robot_prior
from lifelong_ros.safety.registry import ModelRegistry
from lifelong_ros.sim.backends import backend

from . import _common as c
from . import messages as m

NODE_NAME = "learner"
STATUS_CANCELED = 5  # action_msgs/msg/GoalStatus.STATUS_CANCELED


class LearnerNode(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        p = c.declare(self, P.LEARNER)
        self._p = p
        data = paths.data_dir(p["data_dir"])
        self._store_path = paths.store_path(data)
        self._work_dir = paths.learner_dir(data)
        self.registry = ModelRegistry(paths.registry_dir(data), recover=False)  # the safety monitor recovers
        self.learner = Learner(threads=p["threads"], nice=p["nice"])  # spawns the torch worker now

        self._busy_lock = threading.Lock()
        self._busy: str = ""  # task of the goal being executed
        self._job: AdaptJob | None = None
        self._counts = {"goals": 0, "succeeded": 0, "failed": 0, "cancelled": 0, "approved": 0}
        self._last = ""

        goals = ReentrantCallbackGroup()
        self._client_group = MutuallyExclusiveCallbackGroup()
        self._candidate_pub = self.create_publisher(ModelVersion, "~/candidate", c.LATCHED_QOS)
        self._gate_client = ActionClient(self, Gate, self._p["gate_action"], callback_group=self._client_group)
        self._server = ActionServer(
            self,
            Adapt,
            "~/adapt",
            self._execute,
            goal_callback=self._on_goal,
            cancel_callback=self._on_cancel,
            callback_group=goals,
        )
        self.health = c.Health(self, self._status, p["diagnostics_period_s"])
        self.get_logger().info(f"learner worker pid {self.learner.pid}; store {self._store_path}")

    # ------------------------------------------------------------------ goal lifecycle
    def _on_goal(self, goal: Any) -> GoalResponse:
        if not goal.task:
            self.get_logger().warning("Adapt goal rejected: empty task (expected a task name, e.g. 'reach-v3')")
            return GoalResponse.REJECT
        if not (goal.max_seconds >= 0 and math.isfinite(goal.max_seconds)):
            self.get_logger().warning(f"Adapt goal rejected: max_seconds={goal.max_seconds} (expected >= 0)")
            return GoalResponse.REJECT
        with self._busy_lock:
            if self._busy:
                self.get_logger().warning(f"Adapt goal for {goal.task!r} rejected: still adapting {self._busy!r}")
                return GoalResponse.REJECT
            self._busy = goal.task
        return GoalResponse.ACCEPT

    def _on_cancel(self, goal_handle: Any) -> CancelResponse:
        return CancelResponse.ACCEPT

    def _execute(self, goal_handle: Any) -> Any:
        goal = goal_handle.request
        self._counts["goals"] += 1
        t0 = time.monotonic()
        try:
            result = self._run(goal_handle, goal, t0)
        except Exception as exc:  # noqa: BLE001 - a failed goal is reported, the node keeps serving
            self.get_logger().error(f"Adapt {goal.task!r} failed: {type(exc).__name__}: {exc}")
            result = m.adapt_result(
                c.KIT,
                success=False,
                message=f"{type(exc).__name__}: {exc}",
                active_version=self.registry.active() or "",
            )
        finally:
            self._job = None
            with self._busy_lock:
                self._busy = ""
        self._last = f"{goal.task}: {result.message}"
        # the result goes with the terminal state (c.end_goal)
        if goal_handle.is_cancel_requested:
            self._counts["cancelled"] += 1
            return c.end_goal(goal_handle.canceled, result)
        if result.success:
            self._counts["succeeded"] += 1
            return c.end_goal(goal_handle.succeed, result)
        self._counts["failed"] += 1
        return c.end_goal(goal_handle.abort, result)

    def _run(self, goal_handle: Any, goal: Any, t0: float) -> Any:
        """Adapt, register, gate; a candidate the gate rejects is retried with a stronger recipe
        (orchestration.RetryPolicy), at most ``retries`` times. Every attempt is in the result."""
        feedback = _Feedback(goal_handle, t0, self._p["feedback_period_s"])
        retry = RetryPolicy(retries=self._p["retries"])
        method = goal.method or self._p["default_method"]
        attempts: list[str] = []
        result: Any = None
        for k in range(retry.retries + 1):
            active = self.registry.active()
            steps, options, seed = retry.attempt(
                k,
                method,
                int(goal.max_steps or self._p["default_steps"]),
                None,
                int(self._p["seed"]),
                len(self.registry.info(active).tasks) if active else 0,
            )
            result, rejected = self._attempt(goal_handle, goal, t0, feedback, method, steps, options, seed, k)
            recipe = f"{steps} steps" + (f", {options}" if options else "")
            attempts.append(f"attempt {k + 1} ({recipe}): {result.candidate_version or '-'} {result.message}")
            if not rejected or goal_handle.is_cancel_requested or time.monotonic() - t0 > self._budget(goal):
                break
            self.get_logger().info(f"Adapt {goal.task!r}: {attempts[-1]}; retrying with a stronger recipe")
        if len(attempts) > 1:
            result.message = f"{result.message} (after {len(attempts)} attempts)"
        result.attempts = attempts
        return result

    @staticmethod
    def _budget(goal: Any) -> float:
        return float(goal.max_seconds) if goal.max_seconds > 0 else math.inf

    def _attempt(
        self,
        goal_handle: Any,
        goal: Any,
        t0: float,
        feedback: Any,
        method: str,
        steps: int,
        options: dict[str, Any],
        seed: int,
        k: int,
    ) -> tuple[Any, bool]:
        """One adapt -> register -> gate pass: (Adapt result, True when the gate rejected the candidate)."""
        feedback("loading", 0, 0, math.nan, force=True)
        active = self.registry.active()
        robot = backend(self._p["robot"]) if self._p["robot"] != "none" and active is None else None
        request = new_request(
            self.registry,
            goal.task,
            store_path=self._store_path,
            work_dir=self._work_dir,
            method=method,
            steps=steps,
            shots=int(goal.shots),
            seed=seed,
            options=options,
            prior=robot_prior(robot),  # a first model only (new_request)
        )
        self._job = job = self.learner.submit(request, on_progress=lambda ph, st, loss: feedback(ph, st, steps, loss))
        deadline = t0 + self._budget(goal)
        while True:
            if goal_handle.is_cancel_requested or time.monotonic() > deadline:
                job.cancel()
            try:
                candidate = job.result(timeout=0.2)
                break
            except TimeoutError:
                continue
            except AdaptCancelled:
                why = (
                    "cancelled"
                    if goal_handle.is_cancel_requested
                    else f"time budget of {goal.max_seconds:g} s exceeded"
                )
                return self._failed(f"adaptation {why}; nothing was registered"), False
            except AdaptError as exc:
                lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                self.get_logger().error(str(exc))  # the worker's full traceback
                return self._failed(f"adaptation failed: {lines[-1][:500]}"), False

        feedback("registering", steps, steps, math.nan, force=True)
        version = register_candidate(self.registry, candidate, parent=active)
        info = self.registry.info(version)
        self._candidate_pub.publish(m.model_version_msg(c.KIT, info, c.now_ns(self)))
        metrics = dict(info.metrics, goal_seconds=time.monotonic() - t0, attempt=k + 1)

        feedback("gating", 0, 0, math.nan, force=True)
        response, why = self._call_gate(goal_handle, version, activate=not goal.dry_run)
        if response is None:
            return self._failed(f"candidate {version} registered, but {why}", version, metrics), False
        approved = bool(response.report.approved)
        self._counts["approved"] += approved
        result = m.adapt_result(
            c.KIT,
            success=bool(response.success),
            message=response.message,
            candidate_version=version,
            approved=approved,
            gate_report=response.report,
            active_version=response.active_version,
            metrics=metrics,
        )
        # a verdict with a reason: rejected (an approval, or a shadow stage still pending, has none)
        rejected = bool(response.success) and not approved and bool(response.report.reason)
        return result, rejected

    def _failed(self, message: str, version: str = "", metrics: dict[str, Any] | None = None) -> Any:
        return m.adapt_result(
            c.KIT,
            success=False,
            message=message,
            candidate_version=version,
            active_version=self.registry.active() or "",
            metrics=metrics,
        )

    def _call_gate(self, goal_handle: Any, version: str, activate: bool) -> tuple[Any, str]:
        """Send the safety monitor a Gate goal and wait for its verdict; (result, "") or (None, why).

        A cancel of the Adapt goal is passed on: the gate drops a goal still queued and refuses once
        its evaluation runs (then the verdict is recorded, and reported here as not waited for)."""
        if not self._gate_client.wait_for_server(timeout_sec=10.0):
            return None, f"no safety monitor serves the Gate action on {self._gate_client._action_name}"
        sent = _wait(self._gate_client.send_goal_async(Gate.Goal(version=version, activate=activate)), 10.0)
        if sent is None or not sent.accepted:
            return None, f"the safety monitor refused to gate {version} (see its log)"
        result_future = sent.get_result_async()
        deadline = time.monotonic() + self._p["gate_timeout_s"]
        cancel_sent = False
        while _wait(result_future, 0.2) is None:
            if goal_handle.is_cancel_requested and not cancel_sent:
                sent.cancel_goal_async()
                cancel_sent = True
            if time.monotonic() > deadline:
                sent.cancel_goal_async()
                return None, f"no gate verdict within {self._p['gate_timeout_s']:g} s"
        wrapped = result_future.result()
        if wrapped.status == STATUS_CANCELED:
            return None, f"the gate goal was cancelled before {version} was evaluated; it stays a candidate"
        if goal_handle.is_cancel_requested:
            return None, "the goal was cancelled while the gate was running (the gate decided anyway)"
        return wrapped.result, ""

    # ------------------------------------------------------------------ health, shutdown
    def _status(self) -> m.Status:
        values = dict(
            self._counts,
            worker_pid=self.learner.pid,
            worker_alive=self.learner.alive(),
            busy=self._busy,
            last=self._last,
        )
        active = self.registry.active() or ""
        if not self.learner.alive():
            return m.Status(m.ERROR, "learner worker process is not running", values, active)
        if self._busy:
            return m.Status(m.OK, f"adapting {self._busy}", values, active)
        return m.Status(m.OK, "idle", values, active)

    def destroy_node(self) -> None:
        job = self._job
        if job is not None:
            job.cancel()
        # Within launch's SIGINT -> SIGTERM grace period (5 s): a worker still busy after 3 s is killed.
        self.learner.close(timeout=3.0)
        super().destroy_node()


def _wait(future: Any, timeout: float) -> Any:
    """``future``'s result once done within ``timeout`` seconds, else None (the executor completes it)."""
    done = threading.Event()
    future.add_done_callback(lambda _f: done.set())
    return future.result() if done.wait(timeout) else None


class _Feedback:
    """Publishes Adapt feedback from any thread, at most once per ``period_s`` unless forced."""

    def __init__(self, goal_handle: Any, t0: float, period_s: float):
        self._gh, self._t0, self._period = goal_handle, t0, period_s
        self._last = -math.inf
        self._lock = threading.Lock()

    def __call__(self, phase: str, step: int, total: int, loss: float, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last < self._period:
                return
            self._last = now
        self._gh.publish_feedback(
            m.adapt_feedback(c.KIT, phase=phase, step=step, total_steps=total, loss=loss, elapsed_s=now - self._t0)
        )


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    c.sigterm_like_sigint()
    node = None
    try:
        node = c.construct(LearnerNode, NODE_NAME)
        c.spin(node, MultiThreadedExecutor(num_threads=3))
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        c.ignore_signals()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
