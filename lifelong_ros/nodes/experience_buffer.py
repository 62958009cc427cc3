"""ROS 2 node `experience_buffer`: the one writer of the experience store.

Records ExperienceRecord messages (what the policy served, demonstrations) and, while raw-topic
recording is on, the spec's raw observation/action topics (a teleop stream, `ros2 bag play` of a
robot's bag), aligned exactly as bag import and the policy server align them. Callbacks only
decode and enqueue; a writer thread appends batches to the store (store.py), so disk I/O never
runs in a callback. Never imports torch.

Interfaces:
  subscribes experience_topics (ExperienceRecord); the spec's topics while raw recording is on
  services  ~/set_recording (SetRecording), ~/get_status (GetStatus)
  publishes /diagnostics
"""

from __future__ import annotations

import collections
import json
import queue
import threading
from functools import partial
from typing import Any

import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.subscription import Subscription
from std_msgs.msg import String

from lifelong_ros import params as P
from lifelong_ros import paths
from lifelong_ros.experience.sources import TEACHER_SOURCES
from lifelong_ros.experience.store import ExperienceStore, InvalidRecord, StoreError
from lifelong_ros.msg import ExperienceRecord
from lifelong_ros.ros_io.bag import INFO_TOPIC
from lifelong_ros.ros_io.spec import SpecError, StreamAligner, header_stamp_ns, load_spec, ros_classes
from lifelong_ros.srv import SetRecording

from . import _common as c
from . import messages as m

NODE_NAME = "experience_buffer"
RAW_SOURCES = TEACHER_SOURCES  # what raw-topic recording may be tagged as


class ExperienceBuffer(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        p = c.declare(self, P.EXPERIENCE_BUFFER)
        self._p = p
        self.executor_kind = p["executor"]
        self.spec = load_spec(paths.resolve_config_file(p["spec"], p["config_dir"] or None))
        path = paths.store_path(p["data_dir"])
        # The single writer; a second writer gets StoreLockedError naming the holder's pid.
        self.store = ExperienceStore(path, self.spec.obs_dim, self.spec.act_dim, durability=p["durability"])
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._counts = {"received": 0, "written": 0, "rejected": 0, "decode_errors": 0, "write_errors": 0}
        self._last_error = ""
        self._recording = bool(p["recording"])
        self._raw_task, self._raw_source = p["raw_task"], p["raw_source"]
        self._raw_subs: list = []
        self._raw_episode, self._raw_step, self._raw_last_ns, self._raw_episodes = "", 0, 0, 0
        # Bags written by `lifelong-ros export-bag` carry each step's task, episode, step, reward, done
        # and label on INFO_TOPIC: raw steps are paired with those (arrival order, within a window)
        # instead of cutting episodes at time gaps, which shrink under accelerated playback.
        self._pending_steps: collections.deque = collections.deque()  # (stamp, obs, action)
        self._pending_infos: collections.deque = collections.deque()  # (stamp, info dict)
        self._info_checked_ns, self._info_present = 0, False
        self._last_info: tuple[str, int] = ("", -1)  # (episode, step) of the last paired info
        self._raw_counts = {"raw_paired": 0, "raw_actions_without_info": 0, "raw_infos_without_action": 0}
        self._raw_missed = 0  # steps the bag's info says exist but never arrived
        self._run_id = f"raw{self.get_clock().now().nanoseconds // 1_000_000}"
        self._receive_time = not all(s.has_header for s in (*self.spec.observation.streams, *self.spec.action.streams))
        self._classes = ros_classes()

        self._group = MutuallyExclusiveCallbackGroup()  # all recording callbacks: one at a time, in order
        for topic in p["experience_topics"]:
            self.create_subscription(
                ExperienceRecord, topic, self._on_experience, c.EXPERIENCE_QOS, callback_group=self._group
            )
        self.create_service(SetRecording, "~/set_recording", self._on_set_recording, callback_group=self._group)
        if p["raw_topics"]:
            self._start_raw()
        self.health = c.Health(self, self._status, p["diagnostics_period_s"])
        self._writer = threading.Thread(target=self._write_loop, name="experience-writer", daemon=True)
        self._writer.start()
        self.get_logger().info(
            f"store {path} ({len(self.store)} records); recording {p['experience_topics']}"
            + (f" and raw topics {self._raw_topics()}" if self._raw_subs else "")
        )

    # ------------------------------------------------------------------ experience messages
    def _on_experience(self, msg: Any) -> None:
        if not self._recording:
            return
        try:
            step = m.experience_from_msg(msg, self.spec.obs_dim, self.spec.act_dim)
        except ValueError as exc:
            self._decode_error(str(exc))
            return
        self._enqueue(step)

    def _enqueue(self, step: m.ExperienceStep) -> None:
        self._counts["received"] += 1
        self._queue.put(step)

    def _decode_error(self, why: str) -> None:
        self._counts["decode_errors"] += 1
        self._last_error = why
        self.get_logger().warning(why, throttle_duration_sec=5.0)

    # ------------------------------------------------------------------ raw topics (teleop, bag play)
    def _raw_topics(self) -> list[str]:
        return self.spec.observation.topics + self.spec.action.topics

    def _start_raw(self) -> None:
        if self._raw_subs:
            return
        self._obs_aligner = StreamAligner(self.spec.observation.topics, self.spec.observation.max_age_s)
        self._act_aligner = StreamAligner(self.spec.action.topics, self.spec.action.max_age_s)
        trigger = self.spec.action.streams[0]
        for stream in self.spec.observation.streams:
            self._raw_subs.append(
                self.create_subscription(
                    self._classes(stream.type),
                    stream.topic,
                    partial(self._on_raw, stream, self._obs_aligner, False),
                    c.RAW_QOS,
                    callback_group=self._group,
                )
            )
        for stream in self.spec.action.streams:
            self._raw_subs.append(
                self.create_subscription(
                    self._classes(stream.type),
                    stream.topic,
                    partial(self._on_raw, stream, self._act_aligner, stream is trigger),
                    c.RAW_QOS,
                    callback_group=self._group,
                )
            )
        self._raw_subs.append(
            self.create_subscription(String, INFO_TOPIC, self._on_raw_info, c.RAW_QOS, callback_group=self._group)
        )
        self._raw_subs.append(self.create_timer(0.1, self._flush_unpaired, callback_group=self._group))

    def _stop_raw(self) -> None:
        self._flush_unpaired(everything=True)
        for entity in self._raw_subs:
            if isinstance(entity, Subscription):
                self.destroy_subscription(entity)
            else:
                self.destroy_timer(entity)
        self._raw_subs = []
        self._raw_episode = ""

    def _on_raw(self, stream: Any, aligner: StreamAligner, trigger: bool, msg: Any) -> None:
        """Raw stream sample -> aligner; each action (first action stream) makes one record."""
        if not self._recording:
            return
        try:
            value = stream.decode(msg)
        except SpecError as exc:
            self._decode_error(str(exc))
            return
        stamp = c.now_ns(self) if self._receive_time else header_stamp_ns(msg)
        aligner.push(stream.topic, stamp, value)
        if not trigger:
            return
        obs_parts, act_parts = self._obs_aligner.get(stamp), self._act_aligner.get(stamp)
        if obs_parts is None or act_parts is None:
            self._counts["decode_errors"] += 1
            self._last_error = (
                f"raw action at t={stamp} dropped: {self._obs_aligner.stale(stamp) or self._act_aligner.stale(stamp)}"
            )
            return
        obs = self.spec.observation.assemble(obs_parts)
        action = self.spec.action.assemble(act_parts)
        if self._info_expected(stamp):
            self._pending_steps.append((stamp, obs, action))
            self._pair()
        else:
            self._record_by_gap(stamp, obs, action)

    def _record_by_gap(self, stamp: int, obs: Any, action: Any) -> None:
        """A raw step without the bag's info: a pause longer than episode_gap_s starts a new episode."""
        if (
            not self._raw_episode
            or stamp - self._raw_last_ns > self._p["episode_gap_s"] * 1e9
            or stamp < self._raw_last_ns
        ):
            self._raw_episodes += 1
            self._raw_episode, self._raw_step = f"{self._run_id}-{self._raw_episodes:05d}", 0
        self._raw_last_ns = stamp
        self._enqueue(
            m.ExperienceStep(
                stamp_ns=stamp,
                task=self._raw_task,
                episode=self._raw_episode,
                step=self._raw_step,
                source=self._raw_source,
                obs=obs,
                action=action,
            )
        )
        self._raw_step += 1

    # ------------------------------------------------------------------ the bag's step info
    def _info_expected(self, stamp: int) -> bool:
        """True while someone publishes INFO_TOPIC (a `ros2 bag play` of an exported bag announces it
        before its first message), checked at most once a second, or infos are arriving."""
        if self._pending_infos:
            return True
        now = c.now_ns(self)
        if now - self._info_checked_ns > 1_000_000_000:
            self._info_checked_ns = now
            self._info_present = self.count_publishers(INFO_TOPIC) > 0
        return self._info_present

    def _on_raw_info(self, msg: Any) -> None:
        if not self._recording:
            return
        try:
            info = json.loads(msg.data)
            info["episode"], info["step"] = str(info["episode"]), int(info["step"])
        except (ValueError, KeyError, TypeError) as exc:
            self._decode_error(f"{INFO_TOPIC}: malformed step info {msg.data[:200]!r}: {exc}; expected export-bag JSON")
            return
        self._pending_infos.append((c.now_ns(self), info))
        self._pair()

    def _pair(self) -> None:
        """Pair raw steps with infos in arrival order; a partner further away than the window is missing."""
        window = self._p["raw_pair_window_s"] * 1e9
        steps, infos = self._pending_steps, self._pending_infos
        while steps and infos:
            (ts, obs, action), (ti, info) = steps[0], infos[0]
            # Only receive times are comparable (the info message has no header).
            if self._receive_time and abs(ts - ti) > window:
                if ts < ti:
                    steps.popleft()
                    self._raw_counts["raw_actions_without_info"] += 1
                    self._record_by_gap(ts, obs, action)
                else:
                    infos.popleft()
                    self._raw_counts["raw_infos_without_action"] += 1
                    self._missed(info, 1)
                continue
            steps.popleft()
            infos.popleft()
            self._record_with_info(ts, obs, action, info)

    def _record_with_info(self, stamp: int, obs: Any, action: Any, info: dict[str, Any]) -> None:
        episode, step = info["episode"], info["step"]
        last_episode, last_step = self._last_info
        expected = last_step + 1 if episode == last_episode else 0
        if step > expected:
            self._missed(info, step - expected)
        self._last_info = (episode, step)
        self._raw_counts["raw_paired"] += 1
        source = info.get("source")
        self._enqueue(
            m.ExperienceStep(
                stamp_ns=stamp,
                task=str(info.get("task") or self._raw_task),
                episode=episode,
                step=step,
                source=source if source in RAW_SOURCES else self._raw_source,
                obs=obs,
                action=action,
                reward=float(info.get("reward", 0.0)),
                done=bool(info.get("done", False)),
                label=info.get("label"),
            )
        )

    def _missed(self, info: dict[str, Any], n: int) -> None:
        self._raw_missed += n
        self._last_error = (
            f"raw recording could not keep up: {self._raw_missed} step(s) of the bag never arrived "
            f"(latest gap before step {info['step']} of episode {info['episode']!r}); play the bag slower"
        )
        self.get_logger().warning(self._last_error, throttle_duration_sec=5.0)

    def _flush_unpaired(self, everything: bool = False) -> None:
        """Steps and infos whose partner did not arrive within the window (or at all, ``everything``)."""
        limit = c.now_ns(self) - self._p["raw_pair_window_s"] * 1e9
        while self._pending_steps and (everything or self._pending_steps[0][0] < limit):
            ts, obs, action = self._pending_steps.popleft()
            self._raw_counts["raw_actions_without_info"] += 1
            self._record_by_gap(ts, obs, action)
        while self._pending_infos and (everything or self._pending_infos[0][0] < limit):
            _, info = self._pending_infos.popleft()
            self._raw_counts["raw_infos_without_action"] += 1
            self._missed(info, 1)

    # ------------------------------------------------------------------ service
    def _on_set_recording(self, request: Any, response: Any) -> Any:
        if request.source and request.source not in RAW_SOURCES:
            return self._recording_response(False, f"source {request.source!r}: expected one of {RAW_SOURCES} or ''")
        if request.enable and request.raw_topics and not (request.task or self._raw_task):
            return self._recording_response(False, "raw-topic recording needs a task name")
        self._raw_task = request.task or self._raw_task
        self._raw_source = request.source or self._raw_source
        self._recording = bool(request.enable)
        if self._recording and request.raw_topics:
            self._start_raw()
        else:
            self._stop_raw()
        what = "recording" if self._recording else "not recording"
        if self._raw_subs:
            what += f" (raw topics {self._raw_topics()} as task={self._raw_task!r} source={self._raw_source!r})"
        self.get_logger().info(what)
        return self._recording_response(True, what)

    def _recording_response(self, ok: bool, message: str) -> Any:
        return m.set_recording_response(
            c.KIT,
            success=ok,
            message=message,
            recording=self._recording,
            raw_topics=bool(self._raw_subs),
            records_total=len(self.store),
        )

    # ------------------------------------------------------------------ writer thread
    def _drain(self, first: m.ExperienceStep) -> list:
        batch = [first]
        while len(batch) < self._p["batch_size"]:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _write_loop(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self._p["flush_period_s"])
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            self._write(self._drain(first))

    def _write(self, batch: list) -> None:
        try:
            self._append(batch)
        except InvalidRecord:
            for step in batch:  # one bad record rejects a whole batch: salvage the good ones
                try:
                    self._append([step])
                except InvalidRecord as exc:
                    self._counts["rejected"] += 1
                    self._last_error = str(exc)
                    self.get_logger().warning(str(exc), throttle_duration_sec=5.0)
        except (StoreError, OSError, ValueError) as exc:
            self._counts["write_errors"] += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(
                f"could not write {len(batch)} records: {self._last_error}", throttle_duration_sec=5.0
            )

    def _append(self, batch: list) -> None:
        cols = m.stack_steps(batch)
        versions = [s.model_version for s in batch]
        meta = [{"model_version": v} if v else None for v in versions] if any(versions) else None
        labels = [s.label for s in batch]
        self.store.append(
            cols["task"],
            cols["episode"],
            cols["step"],
            cols["obs"],
            cols["action"],
            reward=cols["reward"],
            done=cols["done"],
            stamp_ns=cols["stamp_ns"],
            source=cols["source"],
            meta=meta,
            label=labels if any(lb is not None for lb in labels) else None,
        )
        self._counts["written"] += len(batch)

    # ------------------------------------------------------------------ health, shutdown
    def _status(self) -> m.Status:
        values = dict(
            self._counts,
            **self._raw_counts,
            raw_missed_steps=self._raw_missed,
            queued=self._queue.qsize(),
            recording=self._recording,
            raw_topics=bool(self._raw_subs),
            raw_task=self._raw_task,
            raw_source=self._raw_source,
            last_error=self._last_error,
            store_records=len(self.store),
        )
        values.update({f"store_{k}": v for k, v in self.store.stats()["by_source"].items()})
        if self._counts["write_errors"]:
            return m.Status(m.ERROR, f"store writes failing: {self._last_error}", values)
        if not self._writer.is_alive():
            return m.Status(m.ERROR, "writer thread stopped", values)
        lost = self._raw_missed + self._raw_counts["raw_actions_without_info"]
        if lost:
            return m.Status(m.WARN, self._last_error or f"raw recording lost {lost} step(s)", values)
        return m.Status(m.OK, "recording" if self._recording else "paused", values)

    def destroy_node(self) -> None:
        self._stop.set()
        self._writer.join(timeout=10.0)  # flushes what is queued
        self.store.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    c.sigterm_like_sigint()
    node = None
    try:
        node = c.construct(ExperienceBuffer, NODE_NAME)
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
