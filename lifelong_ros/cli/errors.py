"""The one error policy of every command-line program in the package (`lifelong-ros`, `ros2 run
lifelong_ros offline_learn`): an expected failure (a bad value, an unknown name, a missing or
invalid file, a refused store/bag/registry operation) prints one line "<prog>: error: ..." on
stderr and exits 2; ``debug`` shows the traceback instead; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

import yaml

EXIT_ERROR, EXIT_INTERRUPTED = 2, 130

# Failures an operator can cause and fix (SpecError, ConfigError, InvalidObservation are ValueErrors;
# FileNotFoundError is an OSError) besides the package's own error classes below; anything else is a
# bug and still gets one line, with its type.
BUILTIN_EXPECTED: tuple[type[BaseException], ...] = (ValueError, KeyError, OSError, yaml.YAMLError)
PACKAGE_ERRORS = (
    ("lifelong_ros.experience.store", "StoreError"),
    ("lifelong_ros.ros_io.bag", "BagImportError"),
    ("lifelong_ros.ros_io.bag", "BagExportError"),
    ("lifelong_ros.safety.registry", "RegistryError"),
    ("lifelong_ros.learning.jobs", "AdaptError"),
    ("lifelong_ros.serving.runtime", "ModelLoadError"),
)


def expected_errors() -> tuple[type[BaseException], ...]:
    """The exception classes that mean "the operator's input or environment", not "a bug".

    Resolved when a command failed, so an optional extra that is not installed (rosbags,
    onnxruntime) never stops the CLI from starting."""
    classes = list(BUILTIN_EXPECTED)
    for module, name in PACKAGE_ERRORS:
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException):
            classes.append(cls)
    return tuple(classes)


class Parser(argparse.ArgumentParser):
    """argparse with the same one-line error (and exit code 2) as the commands themselves."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog.split()[0]}: error: {message} (see {self.prog} --help)\n")


def error_message(exc: BaseException) -> str:
    """One line naming what failed: the exception's message without Python's decorations."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]  # str(KeyError("x")) would quote it
    elif isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror}"  # not "[Errno 2] No such file or directory: 'x'"
    else:
        text = str(exc)
    text = " ".join(text.split()) or type(exc).__name__
    if not isinstance(exc, expected_errors()):
        text = f"unexpected {type(exc).__name__}: {text} (rerun with --debug for the traceback)"
    return text


def run_command(
    prog: str, func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace, debug: bool = False
) -> int:
    """Run one command of ``prog`` under the error policy; returns its exit code."""
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place that turns failures into an exit code
        if debug:
            traceback.print_exc()
        else:
            print(f"{prog}: error: {error_message(exc)}", file=sys.stderr)
        return EXIT_ERROR


def int_at_least(least: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``least`` (argparse names the flag in its error line)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; expected an integer >= {least}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value}: expected an integer >= {least}")
        return value

    return parse
