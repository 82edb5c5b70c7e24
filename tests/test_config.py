"""Typed experiment configs: shipped files load, bad keys and values are named, overrides work."""

from __future__ import annotations

import glob
import os

import pytest
import yaml

from agents.config import ConfigError, TrainConfig, apply_overrides, config_from_dict, load_config, parse_overrides, parse_value

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
MINIMAL = {"env": {"id": "flowrl/PointMaze-UMaze-v0"}}


def test_configs_are_shipped():
    names = {os.path.basename(p) for p in CONFIGS}
    assert "demo.yaml" in names and len(names) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig) and cfg.total_timesteps > 0


def test_defaults_and_types():
    cfg = config_from_dict(MINIMAL)
    assert cfg.algo.name == "sac" and cfg.policy == "gaussian" and cfg.novelty is None
    assert cfg.run.out_dir == "runs" and cfg.device == "auto" and cfg.wandb is False


@pytest.mark.parametrize(
    "data, key",
    [
        ({**MINIMAL, "algo": {"nme": "sac"}}, "algo.nme: unknown key"),
        ({**MINIMAL, "algo": {"name": "td3"}}, "algo.name"),
        ({**MINIMAL, "total_timesteps": -5}, "total_timesteps"),
        ({**MINIMAL, "policy": "beta"}, "policy"),
        ({**MINIMAL, "device": "tpu"}, "device"),
        ({**MINIMAL, "flow": "no-such-flow"}, "flow"),
        ({**MINIMAL, "run": {"checkpoint_every": "often"}}, "run.checkpoint_every"),
        ({**MINIMAL, "seeds": 3}, "seeds: unknown key"),
        ({**MINIMAL, "novelty": {"weight": {"beta": "abc"}}}, "novelty.weight.beta: Input should be a valid number"),
        ({**MINIMAL, "novelty": {"beta": 0.5}}, "novelty: beta: moved to novelty.weight.beta"),
        ({**MINIMAL, "novelty": {"critics": {"backup_entropy": "maybe"}}}, "novelty.critics.backup_entropy"),
        ({**MINIMAL, "threads": 0}, "threads: Input should be greater than or equal to 1"),
        ({}, "env: required key is missing"),
        ({"env": {"kwargs": {}}}, "env.id: required key is missing"),
    ],
)
def test_bad_config_names_the_key(data, key):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    assert key in str(err.value)


def test_override_values_are_parsed():
    assert parse_value("1e-3") == pytest.approx(1e-3) and isinstance(parse_value("1e-3"), float)
    assert parse_value("3") == 3 and parse_value("true") is True and parse_value("null") is None
    assert parse_value("[64, 64]") == [64, 64] and parse_value("rooms") == "rooms"
    assert parse_overrides(["a.b=1", "seed=3"]) == {"a.b": 1, "seed": 3}
    for bad in ["seed", "=3", "a..b=1"]:
        with pytest.raises(ConfigError, match="key=value"):
            parse_overrides([bad])


def test_nested_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "algo": {"name": "sac", "kwargs": {"batch_size": 64}}}))
    cfg = load_config(str(path), ["env.kwargs.layout=rooms", "algo.kwargs.learning_rate=3e-4", "seed=7",
                                  "total_timesteps=123", "novelty.weight.beta=0.5", "run.out_dir=/tmp/x"])
    assert cfg.env.kwargs == {"layout": "rooms"} and cfg.algo.kwargs == {"batch_size": 64, "learning_rate": 3e-4}
    assert cfg.seed == 7 and cfg.total_timesteps == 123 and cfg.novelty is not None
    assert cfg.novelty.weight.beta == 0.5 and cfg.novelty.model.kind == "flow"
    assert cfg.novelty.weight.success_window == 20  # the other options of the section keep their defaults
    assert cfg.run.out_dir == "/tmp/x"
    with pytest.raises(ConfigError, match="algo.name"):
        load_config(str(path), ["algo.name=ddpg"])
    with pytest.raises(ConfigError, match="seed is not a mapping"):
        apply_overrides({"seed": 1}, {"seed.x": 2})


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "none.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(bad))


def test_a_bad_novelty_value_on_the_command_line_is_one_line_naming_the_key(tmp_path, capsys):
    from agents.cli import main

    demo = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "demo.yaml")
    assert main(["train", demo, "novelty.weight.beta=abc", f"run.out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "novelty.weight.beta" in err and "Traceback" not in err
    assert main(["train", demo, "novelty.beta=1", f"run.out_dir={tmp_path}"]) == 2  # the former flat key
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "beta: moved to novelty.weight.beta" in err and "Traceback" not in err
    assert not os.listdir(tmp_path)  # refused before any run directory is made


def test_learning_rate_end_decays_linearly_over_the_run_and_survives_save_and_load(tmp_path):
    from stable_baselines3 import SAC

    from agents.run import build_model, make_env

    cfg = TrainConfig(env=dict(id="flowrl/PointMaze-v0"), device="cpu",
                      algo=dict(name="sac", kwargs={"learning_rate": 1e-3}, learning_rate_end=1e-4))
    model, _ = build_model(cfg, make_env(cfg))
    assert [model.lr_schedule(p) for p in (1.0, 0.5, 0.0)] == pytest.approx([1e-3, 5.5e-4, 1e-4], rel=1e-12)
    model.save(tmp_path / "m")
    assert SAC.load(tmp_path / "m", device="cpu").lr_schedule(0.0) == pytest.approx(1e-4, rel=1e-12)
    default = TrainConfig(env=dict(id="flowrl/PointMaze-v0"), device="cpu", algo=dict(name="sac", learning_rate_end=1e-5))
    assert build_model(default, make_env(default))[0].lr_schedule(1.0) == pytest.approx(3e-4)  # SAC's default start
    bad = TrainConfig(env=dict(id="flowrl/PointMaze-v0"), device="cpu",
                      algo=dict(name="sac", kwargs={"learning_rate": "fast"}, learning_rate_end=1e-4))
    with pytest.raises(ConfigError, match="learning_rate"):
        build_model(bad, make_env(bad))
    with pytest.raises(ConfigError, match="learning_rate_end"):
        config_from_dict({"env": {"id": "flowrl/PointMaze-v0"}, "algo": {"learning_rate_end": -1.0}})
