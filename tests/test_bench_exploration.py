"""``scripts/bench_exploration.py``: the config's maze settings reach the task, and a logged run is not run twice."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import bench_exploration  # noqa: E402


def _start(env, seed: int) -> np.ndarray:
    env.reset(seed=seed)
    return env.unwrapped.position.copy()


def test_maze_tasks_take_the_configs_env_kwargs():
    fixed = bench_exploration.make_env("umaze")
    noisy = bench_exploration.make_env("umaze", {"start_noise": 0.3, "max_episode_steps": 50})
    assert np.allclose(_start(fixed, 1), _start(fixed, 2))
    assert not np.allclose(_start(noisy, 1), _start(noisy, 2))
    assert noisy.spec.max_episode_steps == 50 and fixed.spec.max_episode_steps == 200


def test_a_logged_run_is_reused_and_a_changed_setting_runs_again(tmp_path, monkeypatch, capsys):
    out = str(tmp_path)
    common = ["--tasks", "umaze", "--methods", "none/gaussian", "--seeds", "0", "--steps", "300",
              "--budgets", "300", "--jobs", "1", "--out", out]
    bench_exploration.main(common)
    rows = bench_exploration.read_runs(os.path.join(out, "runs.jsonl"))
    assert len(rows) == 1 and set(rows[0]["evals"]) == {"300"} and 0 <= rows[0]["evals"]["300"] <= 1
    assert rows[0]["settings"] == {"config": os.path.join("configs", "demo.yaml"), "set": []}
    assert os.path.exists(os.path.join(out, "success_curves-umaze_none-gaussian.png"))
    with open(os.path.join(out, "table-umaze_none-gaussian.md")) as f:
        assert "| umaze | none | gaussian | 0/1 |" in f.read()
    capsys.readouterr()

    with monkeypatch.context() as m:  # the same grid again: nothing may be trained
        m.setattr(bench_exploration.cf, "ProcessPoolExecutor", lambda n: _NoJobs())
        bench_exploration.main(common)
    text = capsys.readouterr().out
    assert "0 runs" in text and "| umaze | none | gaussian | 0/1 |" in text

    bench_exploration.main([*common, "--set", "algo.kwargs.learning_starts=100"])
    rows = bench_exploration.read_runs(os.path.join(out, "runs.jsonl"))
    assert [r["settings"]["set"] for r in rows] == [[], ["algo.kwargs.learning_starts=100"]]
    with open(os.path.join(out, "runs.jsonl")) as f:
        assert all(json.loads(line)["task"] == "umaze" for line in f)


class _NoJobs:
    """A process pool that fails if it is given any job."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, *args, **kwargs):
        raise AssertionError("a logged run was run again")


def test_a_variant_gets_its_own_table_name():
    demo = os.path.join("configs", "demo.yaml")
    everything = bench_exploration.DEFAULT_METHODS
    assert bench_exploration.output_name(["umaze"], demo, [], everything) == "umaze"
    assert bench_exploration.output_name(["open", "rooms"], demo, [], everything[::-1]) == "open-rooms"
    names = {
        bench_exploration.output_name(["umaze"], demo, ["novelty.weight.beta=1"], everything),
        bench_exploration.output_name(["umaze"], demo, [], ["flow/flow"]),
        bench_exploration.output_name(["umaze"], os.path.join("configs", "other.yaml"), [], everything),
        bench_exploration.output_name(["umaze"], demo, ["novelty.weight.beta=1"], ["flow/flow"]),
    }
    assert names == {"umaze_novelty.weight.beta=1", "umaze_flow-flow", "umaze_other",
                     "umaze_novelty.weight.beta=1_flow-flow"}
    assert "/" not in bench_exploration.output_name(["umaze"], demo, ["env.kwargs={a: 1/2}"], everything)
    assert bench_exploration.output_name(["umaze"], demo, [], ["flow/flow"], tag="60k") == "umaze_flow-flow_60k"


def test_a_bad_method_is_named():
    with pytest.raises(SystemExit):
        bench_exploration.main(["--methods", "flow/beta"])


def test_rnd_runs_take_the_bonus_options_of_a_flow_config(tmp_path):
    import yaml

    from agents.config import load_config

    # the demo with flow-only options in its model section (cells, ema): RND replaces the section
    config = tmp_path / "flow.yaml"
    config.write_text(yaml.safe_dump({"base": os.path.join(ROOT, "configs", "demo.yaml"),
                                      "novelty": {"model": {"kind": "flow", "cells": 400, "ema": 0.9}}}))
    rnd = load_config(str(config), bench_exploration.method_overrides("rnd", "gaussian")).novelty
    assert rnd is not None and rnd.model.kind == "rnd" and rnd.critics is not None  # the weight and critics stay
    row = bench_exploration.run_one("umaze", "rnd", "gaussian", 0, 200, [200], str(config), ["novelty.weight.beta=2"])
    assert set(row["evals"]) == {"200"} and row["episodes"] >= 0
    assert row["saturation"] is not None  # the bonus ran: every step reported its novelty
