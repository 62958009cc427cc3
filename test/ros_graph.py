"""A test node on a real ROS 2 graph, shared by the ROS tests in test/nodes/.

Import it only after the test module's ``pytest.importorskip("rclpy", ...)``: it needs rclpy and the
built lifelong_ros interfaces.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import rclpy
from rclpy.executors import SingleThreadedExecutor

from lifelong_ros.srv import GetStatus


def wait(future: Any, timeout: float, what: str) -> Any:
    """The future's result, or an AssertionError naming ``what`` after ``timeout`` seconds."""
    done = threading.Event()
    future.add_done_callback(lambda _f: done.set())
    assert done.wait(timeout), f"{what}: no answer within {timeout} s"
    return future.result()


def running(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


class Probe:
    """A node of its own context, spinning in a thread: asks the graph's nodes from a test."""

    def __init__(self, name: str = "lifelong_ros_probe") -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)

    def start(self) -> Probe:
        self.thread.start()
        return self

    def wait(self, future: Any, timeout: float, what: str) -> Any:
        return wait(future, timeout, what)

    def status(self, node: str, timeout: float = 90.0) -> Any:
        """``/<node>/get_status``, waiting up to ``timeout`` s for the service to appear."""
        client = self.node.create_client(GetStatus, f"/{node}/get_status")
        try:
            assert client.wait_for_service(timeout_sec=timeout), f"/{node}/get_status not available"
            return wait(client.call_async(GetStatus.Request()), 30.0, f"/{node}/get_status")
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
