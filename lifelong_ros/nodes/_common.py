"""Plumbing every lifelong_ros node shares: declared parameters, QoS choices, /diagnostics, status.

Kept here so each node module is only its wiring: parameters -> core objects, callbacks that
translate messages and call the core.
"""

from __future__ import annotations

import inspect
import os
import signal
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import Executor, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from lifelong_ros import params as P
from lifelong_ros.config import ConfigError
from lifelong_ros.params import Param

from . import messages as m

KIT = m.RclpyKit()

# ---------------------------------------------------------------------------- QoS, chosen per stream
# Sensor streams: best effort, keep last — a late observation is worth nothing, and a best-effort
# subscription matches both reliable and best-effort publishers (robot drivers, `ros2 bag play`).
SENSOR_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=5,
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
)
# Raw streams recorded by the experience buffer (teleop, `ros2 bag play` at 10x): best effort like
# SENSOR_QOS (matches any publisher) but a deep history, so a burst waits instead of being dropped.
RAW_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1000,
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
)
# Commands and per-step outputs: reliable (a reliable publisher matches reliable *and* best-effort
# subscribers such as ros2_control's), shallow queue so nothing stale is delivered late.
COMMAND_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
# Experience records: reliable with a deep queue — the buffer should see every served step.
EXPERIENCE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1000,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
# Announcements (active version, candidates, gate reports): reliable + transient-local, so a node
# that starts later still receives the last ones ("latched").
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
EVENT_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=50,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
DIAGNOSTICS_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)


# ---------------------------------------------------------------------------- signals
def sigterm_like_sigint() -> None:
    """Handle SIGTERM exactly like Ctrl-C (KeyboardInterrupt in the main thread, caught by main()).

    Called right after ``rclpy.init``: rclpy's own SIGTERM handler shuts the context down under a
    spinning MultiThreadedExecutor, whose wait then fails with RCLError ("rcl_shutdown() was called")
    instead of returning, a traceback and exit code 1 where SIGINT exits cleanly."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def ignore_signals() -> None:
    """Ignore further SIGINT/SIGTERM while main() cleans up: a second Ctrl-C, or launch's SIGTERM
    after its grace period, must not interrupt destroy_node() halfway (a traceback, a lost worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# ---------------------------------------------------------------------------- spinning
def spin(node: Node, executor: Executor) -> None:
    """``rclpy.spin`` that takes the context shut down under the executor for the shutdown it is.

    rclpy's own SIGINT handler shuts the context down from the signal; an executor that is just
    building its next wait set then fails with RCLError ("the given context is not valid") instead
    of ExternalShutdownException — a traceback and exit code 1 on a plain Ctrl-C (seen in
    sim_bridge under launch's SIGINT). Any other RCLError is re-raised."""
    from rclpy._rclpy_pybind11 import RCLError

    try:
        rclpy.spin(node, executor=executor)
    except RCLError:
        if node.context.ok():
            raise


# ---------------------------------------------------------------------------- executors
EXECUTORS = P.EXECUTORS


def make_executor(kind: str, threads: int = 2) -> Executor:
    """The executor a node spins in: ``events`` (rclpy.experimental.EventsExecutor: the waits and
    dispatch in C++, the lowest per-message overhead of rclpy), ``single`` (SingleThreadedExecutor)
    or ``multi`` (MultiThreadedExecutor with ``threads`` threads)."""
    if kind == "events":
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError:  # rclpy before Jazzy's EventsExecutor (7.1.3 has none): the next fastest
            rclpy.logging.get_logger("lifelong_ros").warning(
                "executor 'events': this rclpy has no rclpy.experimental.EventsExecutor; spinning in 'single'"
            )
            return SingleThreadedExecutor()
        return EventsExecutor()
    if kind == "single":
        return SingleThreadedExecutor()
    if kind == "multi":
        return MultiThreadedExecutor(num_threads=threads)
    raise ValueError(f"executor {kind!r}: expected one of {', '.join(EXECUTORS)}")


# ---------------------------------------------------------------------------- actions
def end_goal(terminal: Callable[..., Any], result: Any) -> Any:
    """End an action goal with ``terminal`` (its handle's ``succeed``, ``abort`` or ``canceled``) and
    return ``result`` for the execute callback to return. A newer Jazzy rclpy takes the result with
    the terminal state and answers a client already waiting for it with exactly that (a bare call
    sends it an empty result); rclpy 7.1.3 takes no argument and answers with the callback's
    return value. Both get the result."""
    if inspect.signature(terminal).parameters:
        terminal(result)
    else:
        terminal()
    return result


# ---------------------------------------------------------------------------- parameters
# Parameters rclpy itself declares on every node (Jazzy); its qos_overrides.* names are skipped too.
RCLPY_PARAMS = {"use_sim_time", "start_type_description_service"}


def declare(node: Node, params: Sequence[Param]) -> dict[str, Any]:
    """Declare ``params`` (a node's list in lifelong_ros/params.py) with descriptors, in order, and
    return their values. First refuses what the node was given (--params-file, -p) that its schema
    does not declare: rclpy would ignore a misspelled parameter silently."""
    schema = next((n for n, ps in P.NODES.items() if ps is params), None)
    if schema is not None:
        given = getattr(node, "_parameter_overrides", {})  # rclpy keeps --params-file / -p values here
        P.check_overrides(schema, [k for k in given if k not in RCLPY_PARAMS and not k.startswith("qos_overrides.")])
    values: dict[str, Any] = {}
    for p in params:
        desc = ParameterDescriptor(description=p.description, read_only=p.read_only)
        default = Parameter.Type.STRING_ARRAY if p.default is None else p.default
        if p.min is not None or p.max is not None:
            if isinstance(p.default, float):
                desc.floating_point_range = [
                    FloatingPointRange(
                        from_value=float(p.min if p.min is not None else -1e300),
                        to_value=float(p.max if p.max is not None else 1e300),
                        step=0.0,
                    )
                ]
            elif isinstance(p.default, int) and not isinstance(p.default, bool):
                desc.integer_range = [
                    IntegerRange(
                        from_value=int(p.min if p.min is not None else -(2**62)),
                        to_value=int(p.max if p.max is not None else 2**62),
                        step=1,
                    )
                ]
        try:
            value = node.declare_parameter(p.name, default, desc).value
        except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
            raise ConfigError(f"{node.get_name()}: {exc}") from None
        if p.default is None and value is None:
            value = []
        values[p.name] = p.check(value, node.get_name())
    return values


def declare_section(node: Node, section: str, config_cls: type) -> dict[str, Any]:
    """Declare ``section.<field>`` for every field of a core config dataclass (GateConfig, ...), with
    the dataclass defaults, and return {field: value} for ``config_cls.from_dict``, which validates.

    Dynamically typed, because some fields take a number or a list (e.g. gate.action_low).
    """
    import dataclasses

    values: dict[str, Any] = {}
    for f in dataclasses.fields(config_cls):
        if f.default is dataclasses.MISSING:
            continue
        desc = ParameterDescriptor(
            description=f"{config_cls.__name__}.{f.name} (see lifelong_ros docs)", read_only=True, dynamic_typing=True
        )
        values[f.name] = node.declare_parameter(f"{section}.{f.name}", f.default, desc).value
    return values


NodeT = TypeVar("NodeT", bound=Node)


def construct(make: Callable[[], NodeT], name: str) -> NodeT:
    """Build a node; bad parameters or files (ConfigError, SpecError, a bad task name: the ValueErrors
    of the node's own checks) end it with one fatal log line and exit code 2, no traceback."""
    try:
        return make()
    except ValueError as exc:
        rclpy.logging.get_logger(name).fatal(f"cannot start: {exc}")
        rclpy.try_shutdown()
        raise SystemExit(2) from None


# ---------------------------------------------------------------------------- health
_LEVELS = {
    m.OK: DiagnosticStatus.OK,
    m.WARN: DiagnosticStatus.WARN,
    m.ERROR: DiagnosticStatus.ERROR,
    m.STALE: DiagnosticStatus.STALE,
}


class Health:
    """Publishes the node's ``status()`` on /diagnostics periodically and serves ~/get_status.

    ``status`` must be cheap and non-blocking: it reads counters the node keeps.
    """

    def __init__(self, node: Node, status: Callable[[], m.Status], period_s: float, hardware_id: str = ""):
        from lifelong_ros.srv import GetStatus

        self._node = node
        self._status = status
        self._hardware_id = hardware_id or os.uname().nodename
        self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        self._timer = node.create_timer(period_s, self.publish)
        self._srv = node.create_service(GetStatus, "~/get_status", self._on_get_status)

    def _safe_status(self) -> m.Status:
        try:
            return self._status()
        except Exception as exc:  # noqa: BLE001 - health reporting must never take the node down
            return m.Status(m.ERROR, f"status failed: {type(exc).__name__}: {exc}", {})

    def publish(self) -> None:
        st = self._safe_status()
        status = DiagnosticStatus(
            level=_LEVELS[st.level],
            name=f"lifelong_ros: {self._node.get_fully_qualified_name()}",
            message=st.message,
            hardware_id=self._hardware_id,
            values=m.key_values(KIT, {**st.values, "active_version": st.active_version}),
        )
        self._pub.publish(DiagnosticArray(header=_header(self._node), status=[status]))

    def _on_get_status(self, request: Any, response: Any) -> Any:
        return m.status_response(KIT, self._node.get_fully_qualified_name(), self._safe_status())


def _header(node: Node) -> Any:
    from std_msgs.msg import Header

    return Header(stamp=node.get_clock().now().to_msg(), frame_id="")


def now_ns(node: Node) -> int:
    """The node's clock (ROS time: follows /clock under use_sim_time) in nanoseconds."""
    return int(node.get_clock().now().nanoseconds)
