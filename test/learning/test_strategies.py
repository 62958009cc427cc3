"""The strategy registry and the recipes' typed options: every strategy builds, bad options fail early."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from lifelong_ros.learning.jobs import RECIPES, AdaptRequest, RecipeOptions, parse_recipe_options
from lifelong_ros.learning.plugins import EWC, MemoryBuffer, OnlineEWC, Plugin, Replay
from lifelong_ros.learning.strategies import (
    STRATEGIES,
    EWCReplayOptions,
    ReplayOptions,
    build_plugins,
    strategy_options,
)

PLUGINS = {  # what each strategy builds with a replay source that is not a plugin
    "naive": [],
    "joint": [],
    "l2": ["l2"],
    "ewc": ["ewc"],
    "online_ewc": ["online_ewc"],
    "si": ["si"],
    "replay": ["replay"],
    "ewc_replay": ["online_ewc", "replay"],
}


def _source(n: int):
    return torch.zeros(n, 3), torch.zeros(n, dtype=torch.int64), torch.zeros(n, 2)


def test_every_registered_strategy_builds_its_plugins():
    assert set(STRATEGIES) == set(PLUGINS)
    for name, spec in STRATEGIES.items():
        plugins = build_plugins(name, strategy_options(name, {}), _source)
        assert [p.name for p in plugins] == PLUGINS[name], name
        assert all(isinstance(p, Plugin) for p in plugins)
        assert spec.uses_replay == ("replay" in PLUGINS[name])
        assert [p.name for p in build_plugins(name, None, None)] == [n for n in PLUGINS[name] if n != "replay"]
    assert [n for n, s in STRATEGIES.items() if s.trains_on_all_tasks] == ["joint"]


def test_options_reach_the_plugins_and_defaults_are_the_recipe_defaults():
    assert strategy_options("ewc_replay", {}) == EWCReplayOptions(100.0, 1.0, 1024, 0.5)
    ewc, replay = build_plugins(
        "ewc_replay", {"ewc_lambda": 3, "ewc_decay": 0.5, "fisher_samples": 16, "replay_ratio": "balanced"}, _source
    )
    assert isinstance(ewc, OnlineEWC) and (ewc.lam, ewc.decay, ewc.fisher_samples) == (3.0, 0.5, 16)
    assert isinstance(replay, Replay) and replay.ratio == "balanced"
    (plain,) = build_plugins("ewc", {"ewc_lambda": 7.5}, None)
    assert isinstance(plain, EWC) and (plain.lam, plain.fisher_samples) == (7.5, 1024)


def test_a_memory_buffer_source_is_added_after_replay_so_it_records_experiences():
    memory = MemoryBuffer(8)
    assert [p.name for p in build_plugins("replay", None, memory)] == ["replay", "memory"]
    assert build_plugins("ewc_replay", None, memory)[-1] is memory
    assert build_plugins("ewc", None, memory)[0].name == "ewc" and len(build_plugins("ewc", None, memory)) == 1


def test_a_misspelled_option_names_the_key_and_suggests_the_right_one():
    with pytest.raises(ValueError, match=r"'ewc_lamda'.*did you mean 'ewc_lambda'.*ewc_lambda, fisher_samples"):
        strategy_options("ewc", {"ewc_lamda": 1.0})
    with pytest.raises(ValueError, match=r"'ewc_lambda' for strategy 'naive' \(an option of ewc, online_ewc, "):
        strategy_options("naive", {"ewc_lambda": 1.0})
    with pytest.raises(ValueError, match=r"unknown strategy 'ewc_replays'.*did you mean 'ewc_replay'"):
        strategy_options("ewc_replays", {})


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("ewc", {"ewc_lambda": "big"}, r"ewc_lambda='big' is a str, expected float"),
        ("ewc", {"ewc_lambda": True}, r"ewc_lambda=True is a bool, expected float"),
        ("ewc", {"fisher_samples": 512.0}, r"fisher_samples=512.0 is a float, expected int"),
        ("replay", {"replay_ratio": "balance"}, r"replay_ratio='balance' is a str, expected float or 'balanced'"),
        ("replay", {"replay_ratio": 1.0}, r"replay_ratio=1.0 is not a number in \[0, 1\)"),
        ("online_ewc", {"ewc_decay": 1.5}, r"ewc_decay=1.5 is not a number in \[0, 1\]"),
        ("si", {"si_lambda": -1}, r"si_lambda=-1.0 is not a number in \[0, inf\)"),
    ],
)
def test_a_wrong_type_or_value_names_key_value_and_what_was_expected(name, options, message):
    with pytest.raises(ValueError, match=message):
        strategy_options(name, options)


def test_ints_are_accepted_for_floats_and_options_are_frozen():
    options = strategy_options("l2", {"l2_lambda": 2})
    assert options.l2_lambda == 2.0 and isinstance(options.l2_lambda, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.l2_lambda = 3.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        RecipeOptions().lr = 1.0
    with pytest.raises(ValueError, match="takes EWCReplayOptions, got ReplayOptions"):
        build_plugins("ewc_replay", ReplayOptions(), None)


def test_recipe_options_split_between_training_and_strategy():
    recipe, strategy = parse_recipe_options(
        "meta_ewc_replay", {"lr": 1, "hidden": [32, 32], "ewc_lambda": 5, "meta_shots": 16}
    )
    assert recipe == RecipeOptions(lr=1.0, hidden=(32, 32), meta_shots=16)
    assert strategy == EWCReplayOptions(ewc_lambda=5.0)
    assert set(RECIPES) == set(STRATEGIES) | {"meta_ewc_replay", "nearest_ewc_replay"}
    with pytest.raises(
        ValueError,
        match=r"'ewc_lamda'.*did you mean 'ewc_lambda'.*strategy ewc_replay: ewc_lambda.*"
        r"training: lr, batch_size",
    ):
        parse_recipe_options("ewc_replay", {"ewc_lamda": 1})
    with pytest.raises(ValueError, match=r"\['meta_shots'\] apply only to .*meta_ewc_replay.*not to 'ewc_replay'"):
        parse_recipe_options("ewc_replay", {"meta_shots": 16})
    with pytest.raises(ValueError, match=r"hidden=\[32, 'x'\] is a list, expected a list of int"):
        parse_recipe_options("naive", {"hidden": [32, "x"]})


def test_a_bad_request_fails_when_it_is_built():
    with pytest.raises(ValueError, match=r"unknown adaptation method 'bogus'.*ewc_replay, meta_ewc_replay"):
        AdaptRequest(task="t", store_path="s", method="bogus")
    with pytest.raises(ValueError, match=r"'ewc_lamda'.*did you mean 'ewc_lambda'"):
        AdaptRequest(task="t", store_path="s", options={"ewc_lamda": 1})
    with pytest.raises(ValueError, match=r"batch_size=0 is not a number in \[1, inf\)"):
        AdaptRequest(task="t", store_path="s", options={"batch_size": 0})
    assert AdaptRequest(task="t", store_path="s", method="si", options={"si_lambda": 2, "lr": 1e-2}).method == "si"


def test_the_registry_and_the_job_types_import_without_torch():
    code = (
        "import sys; import lifelong_ros.learning.strategies, lifelong_ros.learning.jobs; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
