"""The vocabulary of experience sources: where a record came from, and what each kind is good for.

Every component agrees on it through this module: the store keeps the source of every record, the
learner trains a new task on the teacher's sources, and the safety gate builds its regression
suites from the held-out episodes of the sources that count as ground truth.
"""

from __future__ import annotations

POLICY = "policy"  # steps the served policy took: experience, not a label
DEMONSTRATION = "demonstration"  # a teacher drove (scripted expert, teleoperation)
CORRECTION = "correction"  # a teacher labelled states the policy visited (DAgger-style)
BAG = "bag"  # imported from a rosbag2 bag recorded under a teacher

SOURCES: tuple[str, ...] = (POLICY, DEMONSTRATION, CORRECTION, BAG)  # order = the store's source codes
TEACHER_SOURCES: tuple[str, ...] = (DEMONSTRATION, CORRECTION, BAG)  # labels someone vouches for
TRAIN_SOURCES = TEACHER_SOURCES  # what a new task is learned from
GROUND_TRUTH_SOURCES = TEACHER_SOURCES  # held-out episodes of these are the gate's regression suites


def check_sources(sources: object, allowed: tuple[str, ...] = SOURCES, what: str = "source") -> tuple[str, ...]:
    """``sources`` as a tuple of known names; ValueError naming the unknown ones otherwise."""
    if isinstance(sources, str):
        sources = (sources,)
    if not isinstance(sources, (list, tuple)) or not all(isinstance(s, str) for s in sources):
        raise ValueError(f"{what}s must be a list of names, got {sources!r}; expected some of {allowed}")
    unknown = [s for s in sources if s not in allowed]
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; expected some of {allowed}")
    return tuple(sources)
